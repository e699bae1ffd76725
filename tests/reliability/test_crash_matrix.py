"""Real processes die at every side-effect boundary; after a restart nothing is duplicated or lost.

The invariant checked after quiescence (Jepsen-style): each record exists once on each side,
the links are one-to-one, and both sides hold the last change made.
"""

from __future__ import annotations

import signal
import time
import uuid
from collections import Counter

import pytest
from exchangelib import Contact
from exchangelib.indexed_properties import EmailAddress

from tests.support.pipeline import Pipeline, wait_until

pytestmark = pytest.mark.slow


def _emails(pipeline) -> Counter:
    return Counter(e.email for c in pipeline.contacts() for e in (c.email_addresses or [])
                   if e.label == "EmailAddress1")


def _assert_invariant(pipeline) -> None:
    pipeline.settle(timeout=90)
    assert pipeline.dead_events() == []
    emails = _emails(pipeline)
    assert all(n == 1 for n in emails.values()), f"duplicate contacts: {emails}"
    accounts = pipeline.crm.query("SELECT email, count(*) AS n FROM accounts GROUP BY email")
    assert all(r["n"] == 1 for r in accounts), f"duplicate accounts: {accounts}"
    links = pipeline.state("SELECT crm_key, item_id FROM links WHERE deleted = false")
    assert len({r["crm_key"] for r in links}) == len(links) == len({r["item_id"] for r in links})
    live = {r["email"] for r in pipeline.crm.query("SELECT email FROM accounts WHERE is_active = true")}
    assert live == set(emails), f"CRM {sorted(live)} vs Exchange {sorted(emails)}"


def _insert(pipeline, email: str, phone: str = "+1 555 0100") -> str:
    account_no = f"R-{uuid.uuid4().hex[:8]}"
    pipeline.crm.execute("INSERT INTO accounts (account_no, company_name, first_name, last_name, email, "
                         "phone_business, is_active) VALUES (:no, 'Crash Test', 'Cra', 'Sh', :e, :p, true)",
                         no=account_no, e=email, p=phone)
    return account_no


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def stack(request, tmp_path_factory, redis_server):
    """One running stack per backend for the whole matrix: the invariant is global (every record
    once on each side, links one-to-one), so each case adds its own records and checks it again.
    Short Exchange timeouts and lease keep a crashed worker's lease from holding a case for long."""
    p = Pipeline(tmp_path_factory.mktemp(f"crash-{request.param}"), request.param, worker_concurrency=1,
                 broker_url=redis_server.url(redis_server.new_database()),
                 exchange_timeout_s=2, exchange_max_wait_s=1, lease_ttl_s=10)
    try:
        yield p
    finally:
        p.close()


#: Processes the cases share: the producer and crmsync beat (the re-drive); workers are per case.
_SHARED = ("producer", "beat")


@pytest.fixture
def pipeline(stack):
    """The shared stack, with no worker running; every worker a case starts is gone after it."""
    assert not [n for n in stack.procs if n not in _SHARED], "a previous case left a worker running"
    try:
        yield stack
    finally:
        for name in [n for n in stack.procs if n not in _SHARED]:
            stack.stop(name, signal.SIGKILL)


def _ensure_producer(pipeline, env: dict[str, str] | None = None) -> None:
    proc = pipeline.procs.get("producer")
    if proc is None or proc.poll() is not None:
        pipeline.procs.pop("producer", None)
        pipeline.start_producer(env=env)


@pytest.mark.parametrize("point", ["after_exchange_write", "before_link_commit"])
def test_worker_crash_on_a_crm_change_leaves_no_duplicate_and_loses_nothing(pipeline, point, tmp_path):
    crash_env = {"CRMSYNC_CRASH_AT": point, "CRMSYNC_CRASH_ONCE_FILE": str(tmp_path / "crashed")}
    worker = pipeline.start_worker("crashy", env=crash_env)
    _ensure_producer(pipeline)
    pipeline.outlook()
    email = f"crash.{uuid.uuid4().hex[:6]}@example.org"
    _insert(pipeline, email)
    wait_until(lambda: (tmp_path / "crashed").exists(), 60, what=f"the worker to crash at {point}")
    wait_until(lambda: worker.poll() is not None or _emails(pipeline), 30, what="the crash to take effect")
    pipeline.stop("crashy", signal.SIGKILL)   # the pool's parent too: the whole worker is gone
    pipeline.start_worker("after-crash")
    wait_until(lambda: _emails(pipeline).get(email) == 1, 90, what="the contact after the restart")
    _assert_invariant(pipeline)


@pytest.mark.parametrize("point", ["after_exchange_write", "after_crm_write", "before_link_commit"])
def test_worker_crash_on_an_outlook_contact_creates_one_account(pipeline, point, tmp_path):
    crash_env = {"CRMSYNC_CRASH_AT": point, "CRMSYNC_CRASH_ONCE_FILE": str(tmp_path / "crashed")}
    pipeline.start_worker("crashy", env=crash_env)
    _ensure_producer(pipeline)
    account, folder = pipeline.outlook()
    email = f"olga.{uuid.uuid4().hex[:6]}@example.org"
    Contact(folder=folder, account=account, given_name="Olga", surname="Crash", display_name="Olga Crash",
            email_addresses=[EmailAddress(email=email, label="EmailAddress1")]).save()
    wait_until(lambda: (tmp_path / "crashed").exists(), 60, what=f"the worker to crash at {point}")
    pipeline.stop("crashy", signal.SIGKILL)
    pipeline.start_worker("after-crash")
    wait_until(lambda: pipeline.crm.query("SELECT * FROM accounts WHERE email = :e", e=email), 90,
               what="the CRM account after the restart")
    _assert_invariant(pipeline)
    assert len(pipeline.crm.query("SELECT * FROM accounts WHERE email = :e", e=email)) == 1


def test_producer_crash_after_publish_loses_nothing(pipeline, tmp_path):
    pipeline.start_worker()
    crash_env = {"CRMSYNC_CRASH_AT": "after_publish", "CRMSYNC_CRASH_ONCE_FILE": str(tmp_path / "crashed")}
    pipeline.stop("producer")             # the shared one; this case's producer is armed to crash
    pipeline.start_producer(env=crash_env)
    pipeline.outlook()
    email = f"pub.{uuid.uuid4().hex[:6]}@example.org"
    _insert(pipeline, email)
    wait_until(lambda: (tmp_path / "crashed").exists(), 60, what="the producer to crash after publishing")
    pipeline.stop("producer", signal.SIGKILL)
    _ensure_producer(pipeline)
    wait_until(lambda: _emails(pipeline).get(email) == 1, 90, what="the contact")
    _assert_invariant(pipeline)


def test_worker_sigkilled_mid_task_applies_the_change_after_restart(pipeline):
    _ensure_producer(pipeline)
    pipeline.start_worker("victim")
    pipeline.outlook()
    pipeline.settle()
    # Every CreateItem now takes 4 s: the worker is inside the task when it is killed.
    pipeline.emulator.inject_fault("CreateItem", "delay", count=1, delay_ms=4000)
    pipeline.emulator.reset_stats()
    email = f"kill.{uuid.uuid4().hex[:6]}@example.org"
    _insert(pipeline, email)
    wait_until(lambda: pipeline.emulator.stats().get("CreateItem", 0) >= 1, 60,
               what="the worker to be mid-task")
    pipeline.kill("victim")
    pipeline.start_worker("successor")
    wait_until(lambda: _emails(pipeline).get(email) == 1, 120, what="the change after the restart")
    _assert_invariant(pipeline)


def _synced(pipeline, email: str):
    """An account already in both places, the worker restarted with a crash armed next."""
    pipeline.start_worker("first")
    _ensure_producer(pipeline)
    pipeline.outlook()
    account_no = _insert(pipeline, email)
    wait_until(lambda: _emails(pipeline).get(email) == 1, 60, what="the first sync")
    pipeline.settle()
    pipeline.stop("first")
    return account_no


@pytest.mark.parametrize("point", ["after_exchange_write", "before_link_commit"])
def test_worker_crash_on_a_crm_update_applies_it_once(pipeline, point, tmp_path):
    email = f"upd.{uuid.uuid4().hex[:6]}@example.org"
    account_no = _synced(pipeline, email)
    crash_env = {"CRMSYNC_CRASH_AT": point, "CRMSYNC_CRASH_ONCE_FILE": str(tmp_path / "crashed")}
    pipeline.start_worker("crashy", env=crash_env)
    pipeline.crm.execute("UPDATE accounts SET phone_business = '+1 555 0199' WHERE account_no = :n", n=account_no)
    wait_until(lambda: (tmp_path / "crashed").exists(), 60, what=f"the worker to crash at {point}")
    pipeline.stop("crashy", signal.SIGKILL)
    pipeline.start_worker("after-crash")
    wait_until(lambda: [c for c in pipeline.contacts() if any(e.email == email for e in (c.email_addresses or []))
                        and any(p.phone_number == "+1 555 0199" for p in (c.phone_numbers or []))],
               90, what="the update after the restart")
    _assert_invariant(pipeline)


@pytest.mark.parametrize("point", ["after_exchange_write", "before_link_commit"])
def test_worker_crash_on_a_crm_deactivation_moves_the_contact_once(pipeline, point, tmp_path):
    email = f"del.{uuid.uuid4().hex[:6]}@example.org"
    account_no = _synced(pipeline, email)
    crash_env = {"CRMSYNC_CRASH_AT": point, "CRMSYNC_CRASH_ONCE_FILE": str(tmp_path / "crashed")}
    pipeline.start_worker("crashy", env=crash_env)
    pipeline.crm.execute("UPDATE accounts SET is_active = false WHERE account_no = :n", n=account_no)
    wait_until(lambda: (tmp_path / "crashed").exists(), 60, what=f"the worker to crash at {point}")
    pipeline.stop("crashy", signal.SIGKILL)
    pipeline.start_worker("after-crash")
    wait_until(lambda: email not in _emails(pipeline), 90, what="the contact to leave the folder")
    _assert_invariant(pipeline)
    account, _ = pipeline.outlook()
    trashed = [c for c in account.trash.all() if any(e.email == email for e in (getattr(c, "email_addresses", None) or []))]
    assert len(trashed) == 1


@pytest.mark.parametrize("point", ["after_crm_write", "before_link_commit"])
def test_worker_crash_on_an_outlook_update_applies_it_once(pipeline, point, tmp_path):
    email = f"oupd.{uuid.uuid4().hex[:6]}@example.org"
    account_no = _synced(pipeline, email)
    crash_env = {"CRMSYNC_CRASH_AT": point, "CRMSYNC_CRASH_ONCE_FILE": str(tmp_path / "crashed")}
    pipeline.start_worker("crashy", env=crash_env)
    contact = next(c for c in pipeline.contacts() if any(e.email == email for e in (c.email_addresses or [])))
    contact.job_title = "Edited in Outlook"
    contact.save(update_fields=["job_title"])
    wait_until(lambda: (tmp_path / "crashed").exists(), 60, what=f"the worker to crash at {point}")
    pipeline.stop("crashy", signal.SIGKILL)
    pipeline.start_worker("after-crash")
    wait_until(lambda: pipeline.crm.query("SELECT job_title FROM accounts WHERE account_no = :n",
                                          n=account_no)[0]["job_title"] == "Edited in Outlook",
               90, what="the Outlook edit in the CRM")
    _assert_invariant(pipeline)


def test_redis_stopped_and_started_while_changes_are_made_loses_nothing(tmp_path, private_redis):
    broker = private_redis                # the test's own server: stopping it disturbs no one
    p = Pipeline(tmp_path / "p", "sqlite", broker_url=broker.url(0))
    try:
        p.start_worker()
        p.start_producer()
        p.outlook()
        p.settle()
        broker.stop()                     # SHUTDOWN NOSAVE: Redis loses everything it held
        emails = [f"outage{i}.{uuid.uuid4().hex[:6]}@example.org" for i in range(5)]
        for email in emails:
            _insert(p, email)
        time.sleep(3)
        assert not any(e in _emails(p) for e in emails), "nothing can travel while Redis is down"
        broker.start()                    # the same port, empty
        wait_until(lambda: all(_emails(p).get(e) == 1 for e in emails), 120,
                   what="every change made during the outage (re-driven from the event log)")
        _assert_invariant(p)
    finally:
        p.close()
