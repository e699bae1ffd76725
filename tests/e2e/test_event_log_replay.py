"""The event log end to end: a poison event the CRM database rejects becomes a readable dead
letter, is listed, and is applied by `events replay` once the database accepts it; a second
replay writes nothing on either side.

Real parts: a private redis-server, a Celery worker process, the producer, the EWS emulator
(changed through exchangelib as the mailbox owner) and the CRM database (SQLite, PostgreSQL).
"""

from __future__ import annotations

import json
import uuid

import pytest

from tests.support.pipeline import Pipeline, wait_until

TITLE = "Senior Vice President of Everything"      # 35 characters: more than the CRM accepts


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def pipeline(request, tmp_path_factory, redis_server):
    """One pipeline per backend for this module; 3 attempts, so the poison dies quickly."""
    p = Pipeline(tmp_path_factory.mktemp(f"events-{request.param}"), request.param, max_attempts=3,
                 broker_url=redis_server.url(redis_server.new_database()))
    p.start_worker()
    p.start_producer()
    try:
        p.outlook()
        p.settle()
        yield p
    finally:
        p.close()


def _reject_long_job_titles(pipeline) -> None:
    """A rule of the CRM database (as a site's DBA might add) that crmsync's write breaks."""
    if pipeline.crm.kind == "sqlite":
        pipeline.crm.execute("CREATE TRIGGER job_title_len BEFORE UPDATE OF job_title ON accounts "
                             "WHEN length(NEW.job_title) > 20 "
                             "BEGIN SELECT RAISE(ABORT, 'CHECK constraint failed: job_title_len'); END")
    else:
        pipeline.crm.execute("ALTER TABLE accounts ADD CONSTRAINT job_title_len "
                             "CHECK (length(job_title) <= 20) NOT VALID")


def _accept_long_job_titles(pipeline) -> None:
    if pipeline.crm.kind == "sqlite":
        pipeline.crm.execute("DROP TRIGGER job_title_len")
    else:
        pipeline.crm.execute("ALTER TABLE accounts DROP CONSTRAINT job_title_len")


def _event(pipeline, event_id: int) -> dict:
    return pipeline.state("SELECT * FROM events WHERE id = :i", i=event_id)[0]


def _replay_and_wait(pipeline, event_id: int) -> dict:
    before = _event(pipeline, event_id)
    out = pipeline.cli("events", "replay", str(event_id)).stdout
    assert "replayed 1 of 1 event(s)" in out
    return wait_until(lambda: (e := _event(pipeline, event_id))["status"] == "applied"
                      and e["applied_at"] != before["applied_at"] and e, 60,
                      what=f"event {event_id} applied after the replay")


def test_a_poison_event_dies_readably_and_a_replay_applies_it_once(pipeline):
    account_no = f"P-{uuid.uuid4().hex[:8]}"
    email = f"poison.{uuid.uuid4().hex[:6]}@example.org"
    pipeline.crm.execute("INSERT INTO accounts (account_no, company_name, first_name, last_name, email, "
                         "job_title, is_active) VALUES (:n, 'Poison Pill Ltd', 'Paula', 'Pill', :e, 'CEO', :a)",
                         n=account_no, e=email, a=True)
    key = f"account:{account_no}"

    def contact():
        return next((c for c in pipeline.contacts()
                     if any(a.email == email for a in (c.email_addresses or []))), None)

    wait_until(contact, 60, what="the account's contact in Exchange")
    pipeline.settle()
    _reject_long_job_titles(pipeline)

    # In Outlook the job title grows longer than the CRM database accepts.
    edited = contact()
    edited.job_title = TITLE
    edited.save(update_fields=["job_title"])
    dead = wait_until(lambda: [e for e in pipeline.dead_events() if e["source"] == "exchange"], 120,
                      what="the Exchange event to become a dead letter")
    assert len(dead) == 1
    poison = dead[0]
    assert poison["attempts"] == 3                         # retried, then dead
    # the driver's class: sqlite3's IntegrityError, psycopg's CheckViolation
    assert poison["error_class"] == ("IntegrityError" if pipeline.crm.kind == "sqlite" else "CheckViolation")
    assert (poison["error_record"], poison["error_field"]) == (key, "job_title")
    assert "job_title_len" in poison["last_error"] and f"job_title of {key} to the crm" in poison["last_error"]
    assert "UPDATE" not in poison["last_error"] and TITLE not in poison["last_error"]   # no SQL, no values
    listed = json.loads(pipeline.cli("events", "list", "--status", "dead", "--format", "json").stdout)
    assert [(e["id"], e["crm_key"], e["error_field"]) for e in listed] == [(poison["id"], key, "job_title")]
    table = pipeline.cli("events", "list", "--status", "dead", env={"COLUMNS": "300"}).stdout
    assert str(poison["id"]) in table and key in table and "job_title_len" in table
    assert pipeline.crm.query("SELECT job_title FROM accounts WHERE account_no = :n", n=account_no) == [
        {"job_title": "CEO"}]

    # The DBA widens the rule; the administrator replays the dead letter.
    _accept_long_job_titles(pipeline)
    applied = _replay_and_wait(pipeline, poison["id"])
    assert applied["outcome"] == "updated"
    assert pipeline.crm.query("SELECT job_title FROM accounts WHERE account_no = :n", n=account_no) == [
        {"job_title": TITLE}]
    shown = json.loads(pipeline.cli("events", "show", str(poison["id"]), "--format", "json").stdout)
    assert [(c["side"], c["field"], c["old_value"], c["new_value"]) for c in shown["changes"]] == [
        ("crm", "job_title", "CEO", TITLE)]
    history = json.loads(pipeline.cli("history", key, "--format", "json").stdout)
    assert ("crm", "job_title", "CEO", TITLE) in [
        (c["side"], c["field"], c["old_value"], c["new_value"]) for c in history["changes"]]

    # A second replay re-reads both sides, finds them equal, and writes nothing anywhere.
    pipeline.settle()                                   # the CRM write's own changelog echo is done
    pipeline.emulator.reset_stats()
    changelog = pipeline.crm_changelog_count()
    row = pipeline.crm.query("SELECT * FROM accounts WHERE account_no = :n", n=account_no)
    diffs = pipeline.state("SELECT count(*) AS n FROM event_changes")[0]["n"]
    again = _replay_and_wait(pipeline, poison["id"])
    assert again["outcome"] == "noop"
    pipeline.settle()
    assert pipeline.ews_writes() == 0, pipeline.emulator.stats()
    assert pipeline.crm_changelog_count() == changelog
    assert pipeline.crm.query("SELECT * FROM accounts WHERE account_no = :n", n=account_no) == row
    assert pipeline.state("SELECT count(*) AS n FROM event_changes")[0]["n"] == diffs
    assert contact().job_title == TITLE
    assert pipeline.dead_events() == []
