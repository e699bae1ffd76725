"""`crmsync demo`, the README's first command, on a machine where the broker does not answer."""

from __future__ import annotations

import os
import re
import sqlite3
import subprocess
import sys
import threading
import time

import pytest

pytestmark = pytest.mark.slow


def test_the_demo_syncs_on_the_embedded_broker_and_shows_a_change_as_it_happens(tmp_path):
    demo_dir = tmp_path / "demo"
    demo_dir.mkdir()
    (demo_dir / "notes.txt").write_text("the user's own file")   # --dir may hold other files
    (demo_dir / "crm.db").write_text("an earlier demo's CRM")      # replaced by a fresh one
    env = {**os.environ, "CRMSYNC_BROKER_URL": "redis://127.0.0.1:1/0", "COLUMNS": "200"}
    env.pop("CRMSYNC_CONFIG", None)
    proc = subprocess.Popen([sys.executable, "-m", "crmsync", "demo", "--dir", str(demo_dir),
                             "--duration", "60"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
    reader.start()
    deadline = time.monotonic() + 120
    while not any("initial sync complete" in ln for ln in lines) and time.monotonic() < deadline:
        time.sleep(0.5)
    with sqlite3.connect(demo_dir / "crm.db") as crm:
        crm.execute("UPDATE accounts SET phone_business = '+1 212 555 0199' WHERE account_no = 'ACC-1001'")
    assert proc.wait(timeout=180) == 0, "".join(lines)
    reader.join(10)
    out = "".join(lines)

    assert "does not answer; using the embedded broker" in out
    linked = re.search(r"initial sync complete: (\d+) linked contacts", out)
    assert linked, out
    with sqlite3.connect(demo_dir / "crm.db") as crm:
        accounts = crm.execute("SELECT count(*) FROM accounts").fetchone()[0]
        contacts = crm.execute("SELECT count(*) FROM contacts").fetchone()[0]
        private = crm.execute("SELECT count(*) FROM accounts WHERE first_name IS NULL").fetchone()[0]
    # 30 seeded accounts + 9 made from Outlook contacts (the private one stays out of the CRM)
    assert accounts == 30 + 9 and private == 0
    assert int(linked.group(1)) == accounts + contacts
    assert re.search(r"CRM → Exchange\s+upsert\s+account:ACC-1001\s+applied", out), out
    assert re.search(r"demo stopped: \d+ events applied, 0 dead letters", out), out
    assert (demo_dir / "notes.txt").read_text() == "the user's own file"   # only its own files go
