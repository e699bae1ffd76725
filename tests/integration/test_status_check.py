"""``crmsync status --check`` exits 1 exactly when something needs a person (dead events,
failing events, a stale sync), and ``--watch`` refreshes until Ctrl-C. Real SQLite databases
set up by crmsync's own migrations, a private redis-server as the broker, the real CLI."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from schemas.state_tables import events
from tests.support.deployment import sqlite_deployment
from tests.support.pipeline import wait_until

MAILBOX = "alice@example.com"


@pytest.fixture
def deployment(tmp_path: Path, redis_server):
    with sqlite_deployment(tmp_path, redis_server.url(redis_server.new_database()), (MAILBOX,)) as made:
        yield made


def add_event(state, status: str, attempts: int = 0, age_s: float = 1.0, error: str | None = None) -> None:
    with state.begin() as conn:
        conn.execute(events.insert().values(
            source="crm", mailbox=MAILBOX, op="upsert", crm_key=f"account:{uuid.uuid4().hex[:6]}",
            dedup_key=uuid.uuid4().hex, status=status, attempts=attempts, last_error=error,
            created_at=datetime.now(UTC) - timedelta(seconds=age_s)))


def status(config: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "CRMSYNC_CONFIG"}
    done = subprocess.run([sys.executable, "-m", "crmsync", "--config", str(config), "status", *args],
                          env={**env, "COLUMNS": "200"}, capture_output=True, text=True, timeout=60)
    done.stdout = " ".join(done.stdout.split())
    return done


def test_check_passes_when_everything_is_applied(deployment):
    config, state = deployment
    add_event(state, "applied", attempts=1)
    done = status(config, "--check")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "all good" in done.stdout


def test_check_fails_on_a_dead_event(deployment):
    config, state = deployment
    add_event(state, "applied")
    add_event(state, "dead", attempts=8, error="BadRecord: email is not an email address")
    done = status(config, "--check")
    assert done.returncode == 1
    assert f"NEEDS ATTENTION: {MAILBOX}: 1 dead event(s)" in done.stdout


def test_check_fails_on_events_being_retried(deployment):
    config, state = deployment
    add_event(state, "published", attempts=2, error="Transient: server busy")
    done = status(config, "--check")
    assert done.returncode == 1
    assert "1 event(s) failing and being retried" in done.stdout


def test_check_fails_on_a_stale_sync_and_the_threshold_is_an_option(deployment):
    config, state = deployment
    add_event(state, "pending", age_s=7200)
    done = status(config, "--check")
    assert done.returncode == 1
    assert "sync is stale" in done.stdout
    assert status(config, "--check", "--stale-after", "86400").returncode == 0


def last_dead_column(out: Path) -> str | None:
    """The ``dead`` cell of the mailbox's row in the latest refresh of the table."""
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", out.read_text(errors="replace"))
    latest = text.split("crmsync status")[-1]
    row = next((line for line in latest.splitlines() if MAILBOX in line), None)
    return [cell.strip() for cell in row.split("│") if cell.strip()][-1] if row else None


def test_watch_refreshes_until_interrupted(deployment, tmp_path):
    config, state = deployment
    add_event(state, "applied")
    out = tmp_path / "watch.out"
    env = {k: v for k, v in os.environ.items() if k != "CRMSYNC_CONFIG"}
    with open(out, "wb") as sink:
        proc = subprocess.Popen([sys.executable, "-m", "crmsync", "--config", str(config), "status", "--watch",
                                 "--interval", "0.2"], env={**env, "TTY_COMPATIBLE": "1", "COLUMNS": "200"}, stdout=sink,
                                stderr=subprocess.STDOUT, start_new_session=True)
        try:
            wait_until(lambda: out.read_text(errors="replace").count("crmsync status") >= 3, 30,
                       what="three refreshes of the status table")
            add_event(state, "dead", attempts=8)
            wait_until(lambda: last_dead_column(out) == "1", 30, what="the new dead event in a refreshed table")
        finally:
            os.killpg(proc.pid, signal.SIGINT)
            try:
                code = proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)     # never leave it running after the test
                proc.wait(20)
                raise
    assert code == 0
