"""The producer dies twice during a long first sync while people edit the CRM with plain SQL;
after quiescence every edit is in Exchange and no contact exists twice (issue 7, problem 4).

The first sync reads every record's current state, so changelog rows committed before that read
are absorbed (marked processed without events). A restarted producer must not take a new "first
sync" position: rows written after the first read, for records whose first-sync event has
already been applied, would be absorbed too and their edits lost.

The first two deaths are hard exits at the ``during_initial_sync`` crash point (after a batch of
the first sync is committed and published), so the edits land at a known moment: after the worker
has applied the batches written so far, before the restart. The third is a SIGKILL of a running
producer held inside its first sync (the test holds the state database's write lock, so the first
sync cannot finish), with edits made while it runs.
"""

from __future__ import annotations

import signal
import sqlite3
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
import pytest
import sqlalchemy as sa

from tests.support.pipeline import Pipeline, wait_until

pytestmark = pytest.mark.slow

ACCOUNTS = 2000


@pytest.fixture(params=["sqlite", "postgresql"])
def pipeline(request, tmp_path):
    p = Pipeline(tmp_path / "p", request.param, worker_concurrency=2)
    try:
        yield p
    finally:
        p.close()


def _seed(pipeline: Pipeline, n: int) -> None:
    """``n`` accounts in one plain-SQL transaction; the triggers log one changelog row each."""
    rows = [{"no": f"FS-{i:05d}", "email": f"fs{i}@example.org", "first": f"First{i}"}
            for i in range(n)]
    with pipeline.crm.engine.begin() as conn:
        conn.execute(sa.text(
            "INSERT INTO accounts (account_no, company_name, first_name, last_name, email, "
            "job_title, is_active) VALUES (:no, 'First Sync Ltd', :first, 'Seed', :email, "
            "'seeded', true)"), rows)


def _edit(pipeline: Pipeline, account_no: str, job_title: str) -> None:
    pipeline.crm.execute("UPDATE accounts SET job_title = :t WHERE account_no = :no",
                         t=job_title, no=account_no)


def _insert(pipeline: Pipeline, account_no: str, email: str, job_title: str) -> None:
    pipeline.crm.execute(
        "INSERT INTO accounts (account_no, company_name, first_name, last_name, email, job_title, "
        "is_active) VALUES (:no, 'First Sync Ltd', 'Late', 'Comer', :e, :t, true)",
        no=account_no, e=email, t=job_title)


def _applied_account_nos(pipeline: Pipeline) -> list[str]:
    """Accounts whose first-sync event the worker has applied, in account order."""
    rows = pipeline.state("SELECT crm_key FROM events WHERE status = 'applied' AND source = 'crm' "
                          "AND crm_key LIKE 'account:FS-%' ORDER BY crm_key")
    return sorted({r["crm_key"].removeprefix("account:") for r in rows})


def _crash_in_first_sync(pipeline: Pipeline, once_file: Path) -> None:
    """Start the producer, let it die inside the first sync, and wait until the worker has
    applied every event written so far."""
    proc = pipeline.start_producer(env={"CRMSYNC_CRASH_AT": "during_initial_sync",
                                        "CRMSYNC_CRASH_ONCE_FILE": str(once_file)})
    wait_until(lambda: once_file.exists() and proc.poll() is not None, 120,
               what="the producer to die during the first sync")
    pipeline.stop("producer", signal.SIGKILL)          # its whole process group, to be sure
    assert proc.returncode == 137, pipeline.log("producer")
    assert pipeline.state("SELECT value FROM cursors WHERE name LIKE 'crm-initial:%'") == [], \
        "the crash was meant to happen before the first sync was done"
    wait_until(lambda: pipeline.state("SELECT count(*) AS n FROM events")[0]["n"] > 0
               and pipeline.unfinished_events() == 0, 120,
               what="the worker to apply the batches written before the crash")


@contextmanager
def _state_writes_blocked(pipeline: Pipeline) -> Iterator[None]:
    """Hold the state database's write lock (SQLite) or an exclusive lock on the event log
    (PostgreSQL): a producer can read but cannot write an event until the block ends."""
    url = pipeline.crm.state_url
    if pipeline.crm.kind == "sqlite":
        db = sqlite3.connect(url.removeprefix("sqlite:///"), timeout=30, isolation_level=None)
        db.execute("BEGIN IMMEDIATE")
        try:
            yield
        finally:
            db.rollback()
            db.close()
    else:
        with psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://")) as conn:
            conn.execute("LOCK TABLE events IN EXCLUSIVE MODE")
            try:
                yield
            finally:
                conn.rollback()


def _producer_waits_on_a_lock(pipeline: Pipeline) -> bool:
    if pipeline.crm.kind == "sqlite":
        return True       # no view of waiters; "started" and the held lock have to do
    return bool(pipeline.state("SELECT count(*) AS n FROM pg_stat_activity WHERE "
                               "datname = current_database() AND wait_event_type = 'Lock'")[0]["n"])


def _job_titles(pipeline: Pipeline) -> tuple[Counter, dict[str, str | None]]:
    """Exchange as the mailbox owner sees it: contacts per e-mail, and each one's job title."""
    counts: Counter = Counter()
    titles: dict[str, str | None] = {}
    for contact in pipeline.contacts():
        for address in contact.email_addresses or []:
            if address.label == "EmailAddress1":
                counts[address.email] += 1
                titles[address.email] = contact.job_title
    return counts, titles


def test_edits_made_during_a_first_sync_survive_three_producer_deaths(pipeline, tmp_path):
    _seed(pipeline, ACCOUNTS)
    pipeline.start_worker()
    expected: dict[str, str] = {}                 # e-mail -> job title it must end with

    # 1st run: dies after its first batch; the worker applies that batch.
    _crash_in_first_sync(pipeline, tmp_path / "crash-1")
    synced = _applied_account_nos(pipeline)
    assert 0 < len(synced) < ACCOUNTS
    not_yet = sorted({f"FS-{i:05d}" for i in range(ACCOUNTS)} - set(synced))
    # Edits after the first sync's read: to records already in Exchange and to records not yet.
    for no in synced[:5] + not_yet[-5:]:
        _edit(pipeline, no, f"edit-1 {no}")
        expected[f"fs{int(no[3:])}@example.org"] = f"edit-1 {no}"
    _insert(pipeline, "LATE-1", "late1@example.org", "inserted during the first sync")
    expected["late1@example.org"] = "inserted during the first sync"

    # 2nd run: resumes the first sync, dies after its next batch; more edits.
    _crash_in_first_sync(pipeline, tmp_path / "crash-2")
    synced_now = _applied_account_nos(pipeline)
    assert len(synced) < len(synced_now) < ACCOUNTS, "the second run was meant to resume"
    newly = sorted(set(synced_now) - set(synced))
    for no in [synced[0], synced[7]] + newly[:5]:
        _edit(pipeline, no, f"edit-2 {no}")
        expected[f"fs{int(no[3:])}@example.org"] = f"edit-2 {no}"

    # 3rd run: held inside the first sync, edited under it, SIGKILLed.
    with _state_writes_blocked(pipeline):
        starts = pipeline.log("producer").count("producer.started")
        pipeline.start_producer()
        wait_until(lambda: pipeline.log("producer").count("producer.started") > starts, 60,
                   what="the third producer to start its first sync")
        wait_until(lambda: _producer_waits_on_a_lock(pipeline), 60,
                   what="the third producer to wait for the state database")
        for no in [synced[1], newly[6]]:
            _edit(pipeline, no, f"edit-3 {no}")
            expected[f"fs{int(no[3:])}@example.org"] = f"edit-3 {no}"
        pipeline.kill("producer")
    assert pipeline.state("SELECT value FROM cursors WHERE name LIKE 'crm-initial:%'") == []

    # 4th run: finishes the first sync and then the ordinary feed.
    pipeline.start_producer()
    wait_until(lambda: len(pipeline.contacts()) >= ACCOUNTS + 1, 300,
               what="every account in Exchange")
    pipeline.settle(timeout=300)

    assert pipeline.dead_events() == []
    counts, titles = _job_titles(pipeline)
    duplicated = {email: n for email, n in counts.items() if n > 1}
    assert duplicated == {}, f"duplicate contacts: {duplicated}"
    assert len(counts) == ACCOUNTS + 1
    lost = {email: (titles.get(email), want) for email, want in expected.items()
            if titles.get(email) != want}
    assert lost == {}, f"edits made during the first sync that never reached Exchange: {lost}"
    untouched = [email for email in counts if email not in expected]
    assert {titles[email] for email in untouched} == {"seeded"}
    assert pipeline.crm.query("SELECT count(*) AS n FROM crm_changelog WHERE processed = false"
                              )[0]["n"] == 0
