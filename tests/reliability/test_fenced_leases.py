"""Leases are fences: a worker that stalls past its lease, or threads of one worker process,
never create a contact twice or overwrite a newer edit (real worker processes, a real emulator
with an injected slow reply, SIGSTOP/SIGCONT for a worker that hangs)."""

from __future__ import annotations

import os
import signal
import uuid
from datetime import UTC, datetime

import pytest

from tests.support.pipeline import Pipeline, wait_until

pytestmark = pytest.mark.slow


@pytest.fixture
def pipeline(tmp_path, redis_server):
    p = Pipeline(tmp_path, "sqlite", worker_concurrency=1, broker_url=redis_server.url(redis_server.new_database()))
    try:
        yield p
    finally:
        for proc in p.procs.values():          # never leave a stopped process behind
            try:
                os.killpg(proc.pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
        p.close()


def _contacts_with(pipeline, email: str) -> list:
    return [c for c in pipeline.contacts() if any(e.email == email for e in (c.email_addresses or []))]


def _insert(pipeline, email: str) -> str:
    account_no = f"F-{uuid.uuid4().hex[:8]}"
    pipeline.crm.execute("INSERT INTO accounts (account_no, company_name, first_name, last_name, email, is_active) "
                         "VALUES (:no, 'Fence Ltd', 'Fen', 'Ce', :e, true)", no=account_no, e=email)
    return account_no


def _lease_expired(pipeline, key: str) -> bool:
    rows = pipeline.state("SELECT lease_until FROM links WHERE crm_key = :k", k=key)
    if not rows or rows[0]["lease_until"] is None:
        return False
    until = rows[0]["lease_until"]
    until = datetime.fromisoformat(until) if isinstance(until, str) else until
    until = until if until.tzinfo else until.replace(tzinfo=UTC)
    return until < datetime.now(UTC)


def test_a_worker_that_hangs_past_its_lease_does_not_create_a_second_contact(pipeline):
    stalled = pipeline.start_worker("stalled", None, "--pool", "solo")
    pipeline.start_producer()
    pipeline.outlook()
    pipeline.settle()
    pipeline.emulator.reset_stats()
    pipeline.emulator.inject_fault("FindItem", "delay", count=1, delay_ms=2500)   # the stamp lookup is slow
    email = f"stall.{uuid.uuid4().hex[:6]}@example.org"
    key = f"account:{_insert(pipeline, email)}"
    wait_until(lambda: pipeline.emulator.stats().get("FindItem", 0) >= 1, 60, what="the worker in its lookup")
    os.killpg(stalled.pid, signal.SIGSTOP)                 # the worker hangs mid-call ...
    wait_until(lambda: _lease_expired(pipeline, key), 60, what="its lease to expire")
    pipeline.start_worker("successor", None, "--pool", "solo")   # ... the re-drive hands the event on
    wait_until(lambda: _contacts_with(pipeline, email), 90, what="the successor's contact")
    wait_until(lambda: pipeline.state("SELECT item_id FROM links WHERE crm_key = :k", k=key)[0]["item_id"], 30,
               what="the successor's link commit")
    os.killpg(stalled.pid, signal.SIGCONT)                 # ... and wakes up with an answer for an old lease
    pipeline.settle(timeout=90)
    assert len(_contacts_with(pipeline, email)) == 1
    assert pipeline.dead_events() == []
    assert "lease" in pipeline.log("stalled").lower()


def test_threads_of_one_worker_process_do_not_share_a_lease(pipeline):
    pipeline.start_worker("threads", None, "--pool", "threads", "--concurrency", "4")
    pipeline.start_producer()
    pipeline.outlook()
    pipeline.settle()
    pipeline.emulator.reset_stats()
    pipeline.emulator.inject_fault("FindItem", "delay", count=2, delay_ms=2000)
    email = f"threads.{uuid.uuid4().hex[:6]}@example.org"
    account_no = _insert(pipeline, email)
    wait_until(lambda: pipeline.emulator.stats().get("FindItem", 0) >= 1, 60, what="the first thread in its lookup")
    pipeline.crm.execute("UPDATE accounts SET job_title = 'Second Event' WHERE account_no = :n", n=account_no)
    wait_until(lambda: _contacts_with(pipeline, email), 90, what="the contact")
    pipeline.settle(timeout=90)
    found = _contacts_with(pipeline, email)
    assert len(found) == 1 and found[0].job_title == "Second Event"
    assert pipeline.dead_events() == []
