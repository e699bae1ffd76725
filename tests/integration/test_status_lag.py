"""The current lag per mailbox and side (age of the oldest event not yet applied) in
``crmsync status`` and as the ``crmsync_current_lag_seconds`` gauge of ``crmsync
metrics-server``. Real SQLite databases made by crmsync's own migrations, a private
redis-server as the broker, the real CLI processes."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import urllib.request
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from schemas.state_tables import events
from tests.support.deployment import sqlite_deployment
from tests.support.emulator_proc import free_port
from tests.support.pipeline import wait_until

ALICE, BOB = "alice@example.com", "bob@example.com"


@pytest.fixture
def deployment(tmp_path: Path, redis_server):
    with sqlite_deployment(tmp_path, redis_server.url(redis_server.new_database()), (ALICE, BOB)) as made:
        yield made


def add_event(state, mailbox: str, source: str, status: str, age_s: float) -> None:
    with state.begin() as conn:
        conn.execute(events.insert().values(
            source=source, mailbox=mailbox, op="upsert", crm_key=f"account:{uuid.uuid4().hex[:6]}",
            item_id=None if source == "crm" else f"item-{uuid.uuid4().hex[:6]}",
            dedup_key=uuid.uuid4().hex, status=status, attempts=0,
            created_at=datetime.now(UTC) - timedelta(seconds=age_s)))


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in ("CRMSYNC_CONFIG", "PROMETHEUS_MULTIPROC_DIR")}


def status_row(config: Path, mailbox: str) -> list[str]:
    done = subprocess.run([sys.executable, "-m", "crmsync", "--config", str(config), "status"],
                          env={**_env(), "COLUMNS": "250"}, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "lag CRM→Exchange" in done.stdout and "lag Exchange→CRM" in done.stdout, done.stdout
    row = next(line for line in done.stdout.splitlines() if mailbox in line)
    return [cell.strip() for cell in row.split("│") if cell.strip()]


def _seconds(cell: str) -> float:
    number, unit = cell.split()
    return float(number) * (60 if unit == "min" else 1)


def _waiting_events(state) -> None:
    """alice: a CRM change waiting 40 s (and an older one already applied, and an older dead
    one), an Exchange change waiting 300 s; bob: everything applied."""
    add_event(state, ALICE, "crm", "applied", age_s=3000)
    add_event(state, ALICE, "crm", "dead", age_s=2000)
    add_event(state, ALICE, "crm", "published", age_s=40)
    add_event(state, ALICE, "crm", "pending", age_s=5)
    add_event(state, ALICE, "exchange", "failed", age_s=300)
    add_event(state, BOB, "exchange", "applied", age_s=100)


def test_status_shows_the_lag_of_each_mailbox_and_side(deployment):
    config, state = deployment
    _waiting_events(state)
    alice = status_row(config, ALICE)
    # mailbox, links, last sync, lag CRM→Exchange, lag Exchange→CRM, ...
    assert 40 <= _seconds(alice[3]) < 100, alice
    assert alice[4] == "5 min", alice
    bob = status_row(config, BOB)
    assert bob[3] == "0 s" and bob[4] == "0 s", bob


def test_the_lag_is_a_prometheus_gauge(deployment, tmp_path):
    config, state = deployment
    _waiting_events(state)
    port = free_port()
    log = open(tmp_path / "metrics.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen([sys.executable, "-m", "crmsync", "--config", str(config), "metrics-server",
                             "--port", str(port), "--address", "127.0.0.1"],
                            env=_env(), stdout=log, stderr=log, start_new_session=True)
    try:
        def scrape() -> str | None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
                    return resp.read().decode()
            except OSError:
                assert proc.poll() is None, (tmp_path / "metrics.log").read_text()
                return None
        text = wait_until(scrape, 60, what="crmsync metrics-server answering /metrics")
        samples = {(m[0], m[1]): float(m[2]) for m in re.findall(
            r'^crmsync_current_lag_seconds\{mailbox="([^"]+)",side="([^"]+)"\} (\S+)$', text, re.M)}
        assert 40 <= samples[(ALICE, "crm->exchange")] < 100, samples
        assert 300 <= samples[(ALICE, "exchange->crm")] < 360, samples
        assert samples[(BOB, "crm->exchange")] == 0 and samples[(BOB, "exchange->crm")] == 0, samples
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()
