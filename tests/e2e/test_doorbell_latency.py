"""The doorbells alone carry every edit: with a 60 s poll, each single-field edit must arrive
on the other side within 3 s, one edit after another (issue 14).

A doorbell that misses one edit in ten shows up here as a 60 s wait on that edit.
"""

from __future__ import annotations

import sqlite3
import time
import uuid

import pytest

from tests.support.pipeline import Pipeline, wait_until

EDITS = 30
PER_EDIT_S = 3.0


@pytest.fixture(scope="module", params=[("sqlite", "streaming"), ("postgresql", "streaming"),
                                        ("sqlite", "pull")], ids=lambda p: "-".join(p))
def slow_poll(request, tmp_path_factory, redis_server):
    """A pipeline whose poll is 60 s: anything faster than that came through a doorbell (the
    CRM's: a file watch on SQLite, LISTEN on PostgreSQL; Exchange's: the streaming or the pull
    subscription, as ``[sync] notifications`` says)."""
    crm_kind, notifications = request.param
    p = Pipeline(tmp_path_factory.mktemp(f"doorbell-{crm_kind}-{notifications}"), crm_kind,
                 poll_interval_s=60, notifications=notifications,
                 broker_url=redis_server.url(redis_server.new_database()))
    p.notifications = notifications
    p.start_worker()
    p.start_producer()
    try:
        p.outlook()
        p.settle()
        yield p
    finally:
        p.close()


def _linked_account(pipeline) -> tuple[str, object]:
    """A new CRM account and its Exchange contact (arrived through the CRM doorbell)."""
    email = f"bell.{uuid.uuid4().hex[:6]}@example.org"
    account_no = f"T-{uuid.uuid4().hex[:8]}"
    pipeline.crm.execute("INSERT INTO accounts (account_no, company_name, first_name, last_name, "
                         "email, is_active) VALUES (:n, 'Bell Ltd', 'Bea', 'Bell', :e, true)",
                         n=account_no, e=email)

    def contact():
        return next((c for c in pipeline.contacts()
                     if any(e.email == email for e in (c.email_addresses or []))), None)

    wait_until(contact, 20, what="the new account's contact in Exchange")
    pipeline.settle(timeout=20)
    return account_no, contact


def _crm_job_title(pipeline, account_no: str) -> str | None:
    return pipeline.crm.query("SELECT job_title FROM accounts WHERE account_no = :n",
                              n=account_no)[0]["job_title"]


def _outlook_edits(pipeline, account_no, contact, count: int, tag: str) -> list[float]:
    """``count`` successive job-title edits in Outlook; each must reach the CRM in PER_EDIT_S."""
    item = contact()
    took = []
    for i in range(count):
        title = f"{tag} {i}"
        item.job_title = title
        started = time.monotonic()
        item.save(update_fields=["job_title"])
        wait_until(lambda t=title: _crm_job_title(pipeline, account_no) == t, PER_EDIT_S,
                   interval=0.05, what=f"Outlook edit {i + 1}/{count} ({title!r}) in the CRM")
        took.append(time.monotonic() - started)
        item.refresh()   # the worker's apply may have changed the ChangeKey
    return took


def test_every_outlook_edit_reaches_the_crm_within_seconds(slow_poll):
    account_no, contact = _linked_account(slow_poll)
    took = _outlook_edits(slow_poll, account_no, contact, EDITS, "Outlook title")
    print("Exchange -> CRM latencies:", sorted(round(t, 2) for t in took))
    assert max(took) < PER_EDIT_S


def test_every_crm_edit_reaches_exchange_within_seconds(slow_poll):
    account_no, contact = _linked_account(slow_poll)
    for i in range(EDITS):
        title = f"CRM title {i}"
        slow_poll.crm.execute("UPDATE accounts SET job_title = :t WHERE account_no = :n",
                              t=title, n=account_no)
        wait_until(lambda t=title: contact().job_title == t, PER_EDIT_S, interval=0.05,
                   what=f"CRM edit {i + 1}/{EDITS} ({title!r}) in Exchange")


def _subscriptions(db_path, kind: str) -> set[str]:
    with sqlite3.connect(db_path, timeout=30) as db:
        return {row[0] for row in db.execute("SELECT id FROM ews_subscriptions WHERE kind = ?", (kind,))}


def test_a_subscription_dropped_by_the_server_is_made_again(slow_poll):
    """Exchange drops subscriptions (expiry, a server move): the doorbell notices and
    subscribes again, and the edits keep arriving without waiting for the poll."""
    account_no, contact = _linked_account(slow_poll)
    kind = slow_poll.notifications
    db_path = slow_poll.emulator.data_dir / "store" / "mailboxes.sqlite3"   # the emulator's store
    dropped = _subscriptions(db_path, kind)
    assert dropped, f"the producer's doorbell had no {kind} subscription to drop"
    with sqlite3.connect(db_path, timeout=30) as db:
        db.executemany("DELETE FROM ews_subscriptions WHERE id = ?", [(i,) for i in dropped])
    took = _outlook_edits(slow_poll, account_no, contact, 5, "After the drop")
    print(f"Exchange -> CRM latencies after the {kind} subscription was dropped:",
          [round(t, 2) for t in took])
    assert max(took) < PER_EDIT_S
    assert _subscriptions(db_path, kind) - dropped, f"no new {kind} subscription was made"


def _listen_backends(pipeline) -> set[int]:
    """The pids of the PostgreSQL backends LISTENing on the CRM database (the producer's doorbell)."""
    rows = pipeline.crm.query("SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
                              "AND query ILIKE 'LISTEN%' AND pid <> pg_backend_pid()")
    return {row["pid"] for row in rows}


def test_a_killed_listen_connection_reconnects_and_misses_nothing(slow_poll):
    """The CRM doorbell's LISTEN connection is killed (``pg_terminate_backend``: a failover, an
    administrator, an idle-connection reaper): it connects again, and the edits made while it was
    gone and after arrive in Exchange within seconds, not at the 60 s poll."""
    if slow_poll.crm.kind != "postgresql":
        pytest.skip("LISTEN is the PostgreSQL CRM's doorbell")
    account_no, contact = _linked_account(slow_poll)
    killed = wait_until(lambda: _listen_backends(slow_poll), 20, what="the producer's LISTEN connection")
    for pid in killed:
        slow_poll.crm.query("SELECT pg_terminate_backend(:pid) AS gone", pid=pid)
    for i in range(5):   # the first ones while it is still reconnecting
        title = f"After the kill {i}"
        started = time.monotonic()
        slow_poll.crm.execute("UPDATE accounts SET job_title = :t WHERE account_no = :n",
                              t=title, n=account_no)
        wait_until(lambda t=title: contact().job_title == t, PER_EDIT_S, interval=0.05,
                   what=f"CRM edit {i + 1}/5 after the LISTEN connection was killed ({title!r}) in Exchange")
        print(f"CRM -> Exchange after the kill: {time.monotonic() - started:.2f} s")
    again = wait_until(lambda: _listen_backends(slow_poll) - killed, 20,
                       what="a new LISTEN connection of the producer")
    assert again and not (again & killed)
