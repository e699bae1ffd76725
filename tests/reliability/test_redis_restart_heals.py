"""A Redis restart without persistence loses the queued messages; the re-drive (crmsync beat's,
run by a worker) notices the new server and re-sends them at once, so both sides converge in seconds, not at the re-drive
age (300 s here, the default) (issue 14)."""

from __future__ import annotations

import time
import uuid

import pytest

from tests.support.pipeline import Pipeline, wait_until

pytestmark = pytest.mark.slow

CONVERGED_WITHIN_S = 30
RECORDS = 4


@pytest.fixture
def pipeline(tmp_path):
    # Its own redis-server (restartable), a 60 s poll (doorbells carry the edits) and the default
    # 300 s re-drive age: only noticing the restart can heal within the deadline.
    p = Pipeline(tmp_path, "sqlite", poll_interval_s=60, redrive_after_s=300)
    try:
        yield p
    finally:
        p.close()


def _contact_by_email(pipeline, email: str):
    return next((c for c in pipeline.contacts()
                 if any(e.email == email for e in (c.email_addresses or []))), None)


def test_edits_on_both_sides_survive_a_redis_restart_without_persistence(pipeline):
    pipeline.start_worker()
    pipeline.start_producer()
    pipeline.outlook()
    records = []
    for i in range(RECORDS):
        email = f"redis.{i}.{uuid.uuid4().hex[:6]}@example.org"
        account_no = f"RR-{uuid.uuid4().hex[:8]}"
        pipeline.crm.execute("INSERT INTO accounts (account_no, company_name, first_name, last_name, "
                             "email, is_active) VALUES (:n, 'Redis Ltd', 'Red', 'Is', :e, 1)",
                             n=account_no, e=email)
        records.append((account_no, email))
    for _, email in records:
        wait_until(lambda e=email: _contact_by_email(pipeline, e), 30, what=f"{email} in Exchange")
    pipeline.settle(timeout=30)
    wait_until(lambda: pipeline.state("SELECT value FROM cursors WHERE name = 'broker:run-id'"), 60,
               what="a first re-drive round (beat's) to know the broker")

    # No worker: the producer's messages wait in Redis.
    pipeline.stop("worker")
    expected_crm: dict[str, str] = {}        # account_no -> job title the CRM must end with
    expected_exchange: dict[str, str] = {}   # email -> job title the contact must end with
    crm_side, outlook_side = records[: RECORDS // 2], records[RECORDS // 2:]
    for account_no, email in crm_side:
        title = f"CRM before restart {uuid.uuid4().hex[:4]}"
        pipeline.crm.execute("UPDATE accounts SET job_title = :t WHERE account_no = :n",
                             t=title, n=account_no)
        expected_exchange[email] = title
    for account_no, email in outlook_side:
        contact = _contact_by_email(pipeline, email)
        contact.job_title = f"Outlook before restart {uuid.uuid4().hex[:4]}"
        contact.save(update_fields=["job_title"])
        expected_crm[account_no] = contact.job_title
    wait_until(lambda: pipeline.state(
        "SELECT count(*) AS n FROM events WHERE status = 'published'")[0]["n"] >= RECORDS,
        30, what="the edits' events published to Redis")

    # Redis goes away with every message; an edit lands while it is down.
    assert pipeline.own_redis is not None
    pipeline.own_redis.stop()
    account_no, email = crm_side[0]
    title = f"CRM while Redis is down {uuid.uuid4().hex[:4]}"
    pipeline.crm.execute("UPDATE accounts SET job_title = :t WHERE account_no = :n",
                         t=title, n=account_no)
    expected_exchange[email] = title
    wait_until(lambda: pipeline.state(
        "SELECT count(*) AS n FROM events WHERE status = 'pending'")[0]["n"] >= 1,
        30, what="the event of the edit made while Redis is down")
    pipeline.own_redis.start()                # same port, empty: nothing was saved
    pipeline.start_worker()
    last_fault = time.monotonic()

    def converged() -> bool:
        crm_ok = all(pipeline.crm.query("SELECT job_title FROM accounts WHERE account_no = :n",
                                        n=n)[0]["job_title"] == t for n, t in expected_crm.items())
        exchange_ok = all(_contact_by_email(pipeline, e).job_title == t
                          for e, t in expected_exchange.items())
        return crm_ok and exchange_ok

    wait_until(converged, CONVERGED_WITHIN_S, interval=0.5,
               what="both sides to hold every edit after the Redis restart")
    took = time.monotonic() - last_fault
    print(f"converged {took:.1f} s after the Redis restart")
    assert took < CONVERGED_WITHIN_S
    assert "redrive.broker_restarted" in pipeline.log("worker")    # the re-drive beat scheduled
    pipeline.settle(timeout=30)
    assert pipeline.dead_events() == []
