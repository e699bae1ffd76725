"""`crmsync demo`, the README's first command, on a machine where the broker does not answer."""

from __future__ import annotations

import os
import re
import signal
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


STAMP_ID = "String {00020329-0000-0000-C000-000000000046} Name crmsync-crm-key"


def test_the_demo_over_graph_syncs_an_edit_both_ways_and_prints_no_secret(tmp_path):
    """``crmsync demo --api graph``: crmsync signs in with msal and reaches the mailbox through the
    emulator's Graph front door over HTTPS (a CA made in the demo's directory); a CRM edit arrives
    in the Graph contact and an edit made over Graph arrives in the CRM."""
    import ssl
    from urllib.parse import quote

    import httpx

    from tests.support.pipeline import wait_until

    demo_dir = tmp_path / "demo"
    env = {**os.environ, "CRMSYNC_BROKER_URL": "redis://127.0.0.1:1/0", "COLUMNS": "250"}
    for name in ("CRMSYNC_CONFIG", "SSL_CERT_FILE", "CRMSYNC_DEMO_GRAPH_SECRET"):
        env.pop(name, None)
    # Started with SIGINT ignored, as a shell's background job or some CI runners start it: the
    # demo must still stop on Ctrl-C (it once ran on until its --duration).
    proc = subprocess.Popen([sys.executable, "-m", "crmsync", "demo", "--api", "graph", "--dir", str(demo_dir),
                             "--duration", "150"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
    reader.start()
    try:
        wait_until(lambda: any("initial sync complete" in ln for ln in lines) or proc.poll() is not None, 120,
                   what="the demo's initial sync")
        assert proc.poll() is None, "".join(lines)
        worker = re.search(r"worker: pid (\d+)", "".join(lines))
        assert worker, "".join(lines)
        with open(f"/proc/{worker.group(1)}/environ", "rb") as f:   # the secret the demo made for its app
            secret = dict(v.split(b"=", 1) for v in f.read().split(b"\0") if b"=" in v)[
                b"CRMSYNC_DEMO_GRAPH_SECRET"].decode()
        base = re.search(r"Microsoft Graph front door: (https://127\.0\.0\.1:\d+)/v1\.0", "".join(lines))
        assert base, "".join(lines)
        verify = ssl.create_default_context(cafile=demo_dir / "tls" / "ca.pem")   # the demo's own CA
        http = httpx.Client(base_url=f"{base.group(1)}/v1.0/users/demo@example.com/", verify=verify, timeout=30)
        folders = http.get("contactFolders", params={"$top": "100"}).json()["value"]
        folder = quote(next(f["id"] for f in folders if f["displayName"] == "CRM Accounts"), safe="")

        def contact(crm_key: str) -> dict:
            every = http.get(f"contactFolders/{folder}/contacts", params={
                "$top": "1000", "$expand": f"singleValueExtendedProperties($filter=id eq '{STAMP_ID}')"}).json()
            return next(c for c in every["value"]
                        if any(p["value"] == crm_key for p in c.get("singleValueExtendedProperties") or []))

        # CRM -> Exchange (read over Graph)
        with sqlite3.connect(demo_dir / "crm.db") as crm:
            crm.execute("UPDATE accounts SET phone_business = '+1 212 555 0199' WHERE account_no = 'ACC-1001'")
        wait_until(lambda: contact("account:ACC-1001")["businessPhones"] == ["+1 212 555 0199"], 90,
                   what="the CRM edit in the Graph contact")
        # Exchange (written over Graph) -> CRM
        other = contact("account:ACC-1002")
        r = http.patch(f"contacts/{quote(other['id'], safe='')}", json={"jobTitle": "Edited over Graph"})
        assert r.status_code == 200, r.text

        def crm_job_title() -> str:
            with sqlite3.connect(demo_dir / "crm.db") as crm:
                return crm.execute("SELECT job_title FROM accounts WHERE account_no = 'ACC-1002'").fetchone()[0]
        wait_until(lambda: crm_job_title() == "Edited over Graph", 90, what="the Graph edit in the CRM")
        # The CRM row changes before the event is marked applied: wait for the demo to show it.
        for shown in (r"CRM → Exchange\s+upsert\s+account:ACC-1001\s+applied",
                      r"Exchange → CRM\s+upsert\s+account:ACC-1002\s+applied"):
            wait_until(lambda shown=shown: re.search(shown, "".join(lines)), 30, what=f"the demo to show {shown}")
        stats = http.get(f"{base.group(1)}/_emulator/stats").json()["requests"]
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
        reader.join(10)
    out = "".join(lines)

    assert re.search(r"initial sync complete: \d+ linked contacts", out), out
    assert re.search(r"CRM → Exchange\s+upsert\s+account:ACC-1001\s+applied", out), out
    assert re.search(r"Exchange → CRM\s+upsert\s+account:ACC-1002\s+applied", out), out
    assert re.search(r"demo stopped: \d+ events applied, 0 dead letters", out), out
    assert stats.get("graph:token", 0) >= 1 and stats.get("graph:delta", 0) >= 1, stats
    assert not [op for op in stats if not op.startswith("graph:")], stats      # no EWS request at all
    assert len(secret) >= 20
    for text in (out, (demo_dir / "worker.log").read_text(errors="replace"), (demo_dir / "crmsync.toml").read_text()):
        assert secret not in text
    with sqlite3.connect(demo_dir / "crm.db") as crm:
        assert crm.execute("SELECT count(*) FROM accounts WHERE first_name IS NULL").fetchone()[0] == 0
        assert crm.execute("SELECT count(*) FROM accounts").fetchone()[0] == 30 + 9   # the private one stays out
