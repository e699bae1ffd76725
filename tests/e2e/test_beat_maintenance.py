"""crmsync beat's scheduled maintenance, end to end: a private redis-server, Celery worker
processes, the beat process, the producer, the EWS emulator (changed through exchangelib as the
mailbox owner) and a SQLite CRM.

- Messages deleted from Redis by hand are re-driven (the re-drive is beat's, not the producer's).
- Drift made behind crmsync's back (a linked contact edited while the producer is stopped, its
  sync state moved past the edit so the producer never sees it) is found by the periodic drift
  check and synced; without drift the check raises nothing.
"""

from __future__ import annotations

import json
import uuid

import pytest
import redis

from crmsync.bootstrap import Container
from crmsync.config import load_settings
from producers.exchange_feed import sync_cursor_name
from tests.support.pipeline import MAILBOX, Pipeline, wait_until

pytestmark = pytest.mark.slow


@pytest.fixture
def pipeline(tmp_path):
    p = Pipeline(tmp_path, "sqlite")       # its own redis-server; re-drive age 10 s
    try:
        yield p
    finally:
        p.close()


def _insert(pipeline: Pipeline, email: str) -> str:
    account_no = f"MT-{uuid.uuid4().hex[:8]}"
    pipeline.crm.execute("INSERT INTO accounts (account_no, company_name, first_name, last_name, email, is_active) "
                         "VALUES (:n, 'Beat Ltd', 'Bea', 'Tee', :e, 1)", n=account_no, e=email)
    return account_no


def _contact(pipeline: Pipeline, email: str):
    return next((c for c in pipeline.contacts() if any(e.email == email for e in (c.email_addresses or []))), None)


def _log_lines(pipeline: Pipeline, name: str, event: str) -> list[dict]:
    out = []
    for line in pipeline.log(name).splitlines():
        if line.startswith("{") and f'"{event}"' in line:
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
    return out


def test_messages_deleted_from_redis_are_re_driven_by_beat(pipeline):
    pipeline.start_worker()
    pipeline.start_producer()              # and crmsync beat
    pipeline.outlook()
    pipeline.settle()

    pipeline.stop("worker")                # nobody takes the message: it waits in Redis ...
    email = f"lost.{uuid.uuid4().hex[:6]}@example.org"
    _insert(pipeline, email)
    client = redis.Redis.from_url(pipeline.broker_url)
    queue = f"{pipeline.queue}.to_exchange"   # a CRM change goes to the queue of the Exchange side
    wait_until(lambda: client.llen(queue) >= 1, 60, what="the CRM change's message in Redis")
    assert client.delete(queue) == 1       # ... and is deleted by hand
    assert client.llen(queue) == 0
    [event] = pipeline.state("SELECT id, status FROM events WHERE source = 'crm' AND status = 'published' "
                             "ORDER BY id DESC LIMIT 1")

    pipeline.start_worker("after-loss")
    wait_until(lambda: _contact(pipeline, email), 120, what="the lost change in Exchange (re-driven)")
    assert pipeline.state("SELECT status FROM events WHERE id = :i", i=event["id"])[0]["status"] == "applied"
    resent = [line for line in _log_lines(pipeline, "after-loss", "maintenance.redrive") if line.get("resent")]
    assert resent, "the re-drive reports what it re-sent"
    batches = _log_lines(pipeline, "after-loss", "maintenance.redrive_batch")
    assert any(line["sent"] >= 1 for line in batches), "the worker's re-drive logs each batch it sent"
    assert "maintenance.redrive" not in pipeline.log("producer")   # exactly one component re-drives: beat's worker
    assert pipeline.dead_events() == []


def _advance_sync_state(pipeline: Pipeline) -> None:
    """Move the producer's SyncFolderItems state past everything in the folder now: what changed
    since is never reported to it (a lost change, as far as the producer can tell)."""
    settings = load_settings(str(pipeline.config_path), env=pipeline.env)
    container = Container(settings)
    try:
        name = sync_cursor_name(MAILBOX)
        state = container.store.get_cursor(name)
        feed = container.exchange_feed(MAILBOX)
        more = True
        while more:
            _, state, more = feed.changes(state, 500)
        container.store.add_events([], cursor=(name, state))
    finally:
        container.dispose()


def test_drift_behind_crmsyncs_back_is_found_by_the_periodic_check(pipeline):
    pipeline.start_worker()
    pipeline.start_beat(env={"CRMSYNC_SYNC_DRIFT_CHECK_S": "3"})
    pipeline.start_producer()
    pipeline.outlook()
    email = f"drift.{uuid.uuid4().hex[:6]}@example.org"
    account_no = _insert(pipeline, email)
    wait_until(lambda: _contact(pipeline, email), 60, what="the account's contact in Exchange")
    pipeline.settle()

    # In step: the check runs and raises nothing.
    last_id = pipeline.state("SELECT coalesce(max(id), 0) AS n FROM events")[0]["n"]
    checks = len(_log_lines(pipeline, "worker", "maintenance.drift_check"))
    wait_until(lambda: len(_log_lines(pipeline, "worker", "maintenance.drift_check")) >= checks + 2, 60,
               what="two drift checks")
    assert pipeline.state("SELECT count(*) AS n FROM events WHERE id > :i", i=last_id)[0]["n"] == 0
    in_step = _log_lines(pipeline, "worker", "maintenance.drift_check")[-1]
    assert in_step["checked"] >= 1 and in_step["exchange_drift"] == 0 and in_step["crm_drift"] == 0

    # Behind crmsync's back: the producer is stopped, the contact edited, the sync state moved on.
    pipeline.stop("producer")
    contact = _contact(pipeline, email)
    contact.job_title = f"Edited behind its back {uuid.uuid4().hex[:4]}"
    contact.save(update_fields=["job_title"])
    _advance_sync_state(pipeline)

    def in_crm() -> bool:
        rows = pipeline.crm.query("SELECT job_title FROM accounts WHERE account_no = :n", n=account_no)
        return rows[0]["job_title"] == contact.job_title

    wait_until(in_crm, 90, what="the drifted edit in the CRM")
    raised = pipeline.state("SELECT source, status, dedup_key FROM events WHERE id > :i", i=last_id)
    assert [(r["source"], r["status"]) for r in raised] == [("exchange", "applied")]
    assert raised[0]["dedup_key"].startswith(f"drift:ex:{MAILBOX}:")
    found = [line for line in _log_lines(pipeline, "worker", "maintenance.drift_check") if line["exchange_drift"]]
    assert found and found[0]["mailbox"] == MAILBOX and found[0]["events"] == 1
    assert f"account:{account_no}" in found[0]["records"]

    # The producer, back, never sees the edit: the drift check was the only way it could sync.
    # (It does read the CRM changelog row of the worker's own write: an echo, nothing to write.)
    pipeline.start_producer()
    pipeline.settle()
    after = pipeline.state("SELECT source, outcome FROM events WHERE id > :i AND dedup_key NOT LIKE 'drift:%'", i=last_id)
    assert [r["source"] for r in after] in ([], ["crm"]), after
    assert in_crm() and pipeline.dead_events() == []
