"""`crmsync config check`: validates without connecting, shows each mailbox's effective policy,
and names the key (and mailbox) of a bad value. Runs the real command line in a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from crmsync.config import MailboxSettings

EXAMPLE = Path(__file__).resolve().parents[2] / "deploy" / "crmsync.example.toml"

# Nothing behind these: a connection attempt would fail (no such directory) or hang (TEST-NET).
UNREACHABLE = """
[crm]
url = "postgresql+psycopg://crm@203.0.113.7:5432/crm"
[state]
url = "sqlite:////no/such/dir/state.db"
[broker]
url = "redis://203.0.113.7:6379/0"
[exchange]
endpoint = "https://203.0.113.7/EWS/Exchange.asmx"
username = "svc@example.com"
password_env = "CRMSYNC_TEST_UNSET_PASSWORD"
"""


def crmsync(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRMSYNC_")}
    env["COLUMNS"] = "200"
    return subprocess.run([sys.executable, "-m", "crmsync", *args], capture_output=True, text=True, env=env,
                          timeout=120)


def test_the_example_config_is_valid_and_every_mailbox_key_is_shown() -> None:
    done = crmsync("config", "check", "--config", str(EXAMPLE), "--format", "json")
    assert done.returncode == 0, done.stderr
    shown = json.loads(done.stdout)
    assert list(shown) == ["alice@example.com", "bob@example.com"]
    keys = [info.alias or name for name, info in MailboxSettings.model_fields.items() if name != "address"]
    assert list(shown["bob@example.com"]) == keys


def test_effective_values_and_their_sources_without_connecting_to_anything(tmp_path: Path) -> None:
    path = tmp_path / "crmsync.toml"
    path.write_text(UNREACHABLE + """
[sync]
conflict_policy = "manual"
max_delete_count = 7
on_new_record = "review"

[[mailbox]]
address = "alice@example.com"
direction = "crm-to-exchange"
push_filter = [{column = "country", in = ["NO", "SE"]}]
fields = {notes = "ignore"}

[[mailbox]]
address = "bob@example.com"
folder = "Shared/CRM"
conflict_policy = "crm-wins"
enabled = false
on_new_record = "create"
""")
    done = crmsync("--config", str(path), "config", "check")
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "configuration valid" in out and "2 mailbox(es)" in out
    alice, bob = out.split("mailbox bob@example.com")
    rows = {name: [line.split("│")[1:4] for line in part.splitlines() if line.startswith("│")]
            for name, part in (("alice", alice), ("bob", bob))}
    table = {name: {cells[0].strip(): (cells[1].strip(), cells[2].strip()) for cells in r} for name, r in rows.items()}
    assert table["alice"]["direction"] == ("crm-to-exchange", "mailbox")
    assert table["alice"]["conflict_policy"] == ("manual", "[sync]")
    assert table["alice"]["max_delete_count"] == ("7", "[sync]")
    assert table["alice"]["push_filter"] == ("country in NO, SE", "mailbox")
    assert table["alice"]["fields"] == ("notes = ignore", "mailbox")
    assert table["alice"]["on_exchange_delete"] == ("deactivate", "default")
    assert table["bob"]["conflict_policy"] == ("crm-wins", "mailbox")
    assert table["bob"]["enabled"] == ("false", "mailbox")
    assert table["bob"]["folder"] == ("Shared/CRM", "mailbox")
    assert table["bob"]["direction"] == ("two-way", "default")
    assert table["alice"]["on_new_record"] == ("review", "[sync]")
    assert table["bob"]["on_new_record"] == ("create", "mailbox")
    assert table["alice"]["first_sync"] == ("approve", "default")


def test_a_bad_value_exits_non_zero_naming_the_key_and_the_mailbox(tmp_path: Path) -> None:
    path = tmp_path / "crmsync.toml"
    path.write_text('[[mailbox]]\naddress = "alice@example.com"\n'
                    '[[mailbox]]\naddress = "bob@example.com"\ndirection = "sideways"\n'
                    '[sync]\nmax_delete_percent = 150\non_new_record = "sometimes"\n')
    done = crmsync("config", "check", "--config", str(path))
    assert done.returncode == 2
    err = " ".join(done.stderr.split())  # the error console wraps long lines
    assert ("config key mailbox[1].direction: must be one of two-way, crm-to-exchange, exchange-to-crm "
            "(got 'sideways') (mailbox bob@example.com)") in err
    assert "config key sync.max_delete_percent: must be <= 100" in err
    assert "config key sync.on_new_record: must be one of match-then-create, create, review (got 'sometimes')" in err
    assert "configuration valid" not in done.stdout


def test_a_config_without_mailboxes_is_refused() -> None:
    done = crmsync("config", "check")
    assert done.returncode == 2
    assert "config key mailbox: no mailbox is configured" in " ".join(done.stderr.split())
