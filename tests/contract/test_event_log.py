"""The event log (crmsync.adapters.state.event_log) and its commands, on the real SQLAlchemy
state store, on SQLite and PostgreSQL; replay publishes to a private redis-server."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import redis
from sqlalchemy import Engine, text, update
from sqlalchemy.exc import IntegrityError
from typer.testing import CliRunner

from crmsync.adapters.database import init_crm, make_engine
from crmsync.adapters.state.event_log import (
    EventQuery,
    error_parts,
    history,
    list_events,
    matching_ids,
    purge,
    record_errors,
    requeue,
    show_event,
)
from crmsync.adapters.state.sqlalchemy_store import SqlStateStore
from crmsync.cli.app import app
from crmsync.cli.events import parse_when
from crmsync.errors import BadRecord
from crmsync.ports import ConflictRecord, FieldWrite, LinkUpdate, NewEvent
from schemas.canonical import CanonicalContact
from schemas.state_tables import event_changes, events

MB, MB2 = "alice@example.com", "bob@example.com"


@pytest.fixture
def store(state_engine: Engine) -> SqlStateStore:
    return SqlStateStore(state_engine)


def _event(n: int, key: str | None = "account:A1", mailbox: str = MB, source: str = "crm",
           item: str | None = None) -> NewEvent:
    return NewEvent(source=source, mailbox=mailbox, op="upsert", crm_key=key, item_id=item,
                    dedup_key=f"t:{n}:{mailbox}")


def _apply(store: SqlStateStore, event_ids: list[int], key: str, item: str, writes: tuple[FieldWrite, ...],
           action: str = "updated", conflicts: tuple[ConflictRecord, ...] = (), private: bool = False,
           mailbox: str = MB) -> None:
    """What a worker does: lease, commit with the diffs, mark the events applied."""
    now = datetime.now(UTC)
    link = store.acquire(mailbox, key, None, "test-owner", 30, now)
    store.commit(link, LinkUpdate(item_id=item, change_key="CK", crm_version="v", base=CanonicalContact(),
                                  crm_hash="h", exchange_hash="h", private=private, conflicts=conflicts,
                                  writes=writes, action=action, event_ids=tuple(event_ids)), now)
    store.mark_applied_many({i: action for i in event_ids})


@pytest.fixture
def log(store: SqlStateStore) -> dict[str, int]:
    """A small log: applied with diffs, skipped, failed (a retry due), dead, pending, and an
    Exchange event naming only its item; in two mailboxes."""
    ids = store.add_events([_event(1), _event(2, "account:B2"), _event(3, "account:C3"), _event(4, "account:D4"),
                            _event(5, "account:E5", mailbox=MB2),
                            _event(6, None, source="exchange", item="ITEM-A1")])
    applied, skipped, failed, dead, pending, from_outlook = ids
    _apply(store, [applied], "account:A1", "ITEM-A1",
           (FieldWrite("exchange", "phone_business", "+1 555 0100", "+1 555 0199"),
            FieldWrite("crm", "email", "old@example.org", "new@example.org")),
           conflicts=(ConflictRecord("job_title", "CEO", "Boss", "exchange"),))
    store.mark_applied_many({skipped: "private-skipped"})
    store.record_attempt(failed, "Transient: Exchange busy")
    store.record_attempt(dead, "BadRecord: accounts row id=4: company_name holds a vertical tab")
    store.mark_dead(dead, "BadRecord: accounts row id=4: company_name holds a vertical tab")
    return {"applied": applied, "skipped": skipped, "failed": failed, "dead": dead, "pending": pending,
            "from_outlook": from_outlook}


# ------------------------------------------------------------------------------------ queries

def test_list_shows_the_six_statuses(state_engine: Engine, log: dict[str, int]) -> None:
    shown = {r["id"]: r["status"] for r in list_events(state_engine, EventQuery(limit=None))}
    assert shown == {log["applied"]: "applied", log["skipped"]: "skipped", log["failed"]: "failed",
                     log["dead"]: "dead", log["pending"]: "pending", log["from_outlook"]: "pending"}
    for status in ("applied", "skipped", "failed", "dead"):
        assert [r["id"] for r in list_events(state_engine, EventQuery(status=status))] == [log[status]]


def test_filters_combine_and_the_newest_come_first(state_engine: Engine, log: dict[str, int]) -> None:
    in_mb = list_events(state_engine, EventQuery(mailbox=MB))
    assert [r["id"] for r in in_mb] == sorted((v for k, v in log.items() if k != "pending"), reverse=True)
    assert [r["id"] for r in list_events(state_engine, EventQuery(mailbox=MB2))] == [log["pending"]]
    assert len(list_events(state_engine, EventQuery(limit=2))) == 2
    hour = timedelta(hours=1)
    assert len(list_events(state_engine, EventQuery(since=datetime.now(UTC) - hour))) == 6
    assert list_events(state_engine, EventQuery(since=datetime.now(UTC) + hour)) == []
    assert [r["id"] for r in list_events(state_engine, EventQuery(status="dead", mailbox=MB2))] == []


def test_record_finds_events_by_crm_key_item_id_and_through_the_link(state_engine: Engine,
                                                                      log: dict[str, int]) -> None:
    by_key = list_events(state_engine, EventQuery(record="account:A1"))
    # the Exchange event names only ITEM-A1; the link says it is account:A1
    assert [r["id"] for r in by_key] == [log["from_outlook"], log["applied"]]
    assert [r["crm_key"] for r in by_key] == ["account:A1", "account:A1"]
    assert [r["id"] for r in list_events(state_engine, EventQuery(record="ITEM-A1"))] == [log["from_outlook"]]


def test_a_bad_status_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match="unknown status 'deadd'"):
        EventQuery(status="deadd")


def test_show_has_the_error_and_the_written_diffs(state_engine: Engine, log: dict[str, int]) -> None:
    shown = show_event(state_engine, log["applied"])
    assert shown is not None and shown["status"] == "applied" and shown["outcome"] == "updated"
    assert [(c["side"], c["field"], c["old_value"], c["new_value"]) for c in shown["changes"]] == [
        ("exchange", "phone_business", "+1 555 0100", "+1 555 0199"),
        ("crm", "email", "old@example.org", "new@example.org")]
    dead = show_event(state_engine, log["dead"])
    assert dead is not None and dead["status"] == "dead" and dead["changes"] == []
    assert "company_name" in dead["last_error"]
    assert show_event(state_engine, 10_000) is None


def test_a_contact_turning_private_takes_its_logged_values_with_it(store: SqlStateStore, state_engine: Engine,
                                                                   log: dict[str, int]) -> None:
    [later] = store.add_events([_event(7, None, source="exchange", item="ITEM-A1")])
    _apply(store, [later], "account:A1", "ITEM-A1", (), action="unlinked-private", private=True)
    assert show_event(state_engine, log["applied"])["changes"] == []
    assert history(state_engine, "account:A1")["changes"] == []
    with state_engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM event_changes")).scalar() == 0


# ------------------------------------------------------------------------------------ errors

def test_errors_are_kept_taken_apart(state_engine: Engine, log: dict[str, int]) -> None:
    noted = RuntimeError("Exchange refused the value")
    noted.add_note("while writing phone_business, email of account:C3 to the exchange")
    record_errors(state_engine, {log["failed"]: noted,
                                 log["dead"]: BadRecord("accounts row id=4: field 'company_name' holds a tab")})
    failed, dead = show_event(state_engine, log["failed"]), show_event(state_engine, log["dead"])
    assert (failed["error_class"], failed["error_record"], failed["error_field"]) == (
        "RuntimeError", "account:C3", "phone_business, email")
    assert failed["failed_at"] is not None
    assert (dead["error_class"], dead["error_record"], dead["error_field"]) == (
        "BadRecord", "account:D4", "company_name")


def test_a_database_error_reads_as_the_driver_message_without_sql_or_values(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'crm.db'}")
    init_crm(engine)
    with pytest.raises(IntegrityError) as caught, engine.begin() as conn:
        conn.execute(text("INSERT INTO accounts (account_no, company_name) VALUES (NULL, 'Secret Co')"))
    parts = error_parts(caught.value)
    assert parts["error_class"] == "IntegrityError"
    assert "NOT NULL" in parts["message"] and "accounts.account_no" in parts["message"]
    assert "Secret Co" not in parts["message"] and "INSERT" not in parts["message"]
    engine.dispose()


# ------------------------------------------------------------------------------------ replay, purge

def test_requeue_takes_any_status_back_to_pending(state_engine: Engine, log: dict[str, int]) -> None:
    assert matching_ids(state_engine, EventQuery(status="dead", limit=None)) == [log["dead"]]
    assert requeue(state_engine, [log["dead"], log["applied"]]) == sorted([log["dead"], log["applied"]])
    again = {r["id"]: r for r in list_events(state_engine, EventQuery(limit=None))}
    assert again[log["dead"]]["status"] == again[log["applied"]]["status"] == "pending"
    assert again[log["dead"]]["attempts"] == 0


def test_purge_deletes_only_finished_events_before_the_cutoff(state_engine: Engine, log: dict[str, int]) -> None:
    now = datetime.now(UTC)
    assert purge(state_engine, now - timedelta(hours=1)) == 0
    assert purge(state_engine, now + timedelta(seconds=5), dry_run=True) == 2
    assert len(list_events(state_engine, EventQuery(limit=None))) == 6
    assert purge(state_engine, now + timedelta(seconds=5)) == 2
    left = {r["status"] for r in list_events(state_engine, EventQuery(limit=None))}
    assert left == {"failed", "dead", "pending"}
    with state_engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM event_changes")).scalar() == 0


# ------------------------------------------------------------------------------------ history

def test_history_by_crm_key_or_item_id_shows_each_write_once_and_the_conflicts(
        store: SqlStateStore, state_engine: Engine, log: dict[str, int]) -> None:
    two = store.add_events([_event(8), _event(9, None, source="exchange", item="ITEM-A1")])
    _apply(store, two, "account:A1", "ITEM-A1", (FieldWrite("crm", "city", None, "Springfield"),))
    [deleted] = store.add_events([_event(10)])
    _apply(store, [deleted], "account:A1", "ITEM-A1", (FieldWrite("exchange", None, None, None),),
           action="deleted-exchange")
    for record in ("account:A1", "ITEM-A1"):
        found = history(state_engine, record)
        assert found["keys"] == [(MB, "account:A1")]
        assert [(c["side"], c["field"], c["new_value"], c["event_ids"]) for c in found["changes"]] == [
            ("exchange", "phone_business", "+1 555 0199", [log["applied"]]),
            ("crm", "email", "new@example.org", [log["applied"]]),
            ("crm", "city", "Springfield", two),
            ("exchange", None, None, [deleted])]
        assert found["changes"][-1]["action"] == "deleted-exchange"
        assert [(c["field"], c["crm_value"], c["exchange_value"], c["chosen"]) for c in found["conflicts"]] == [
            ("job_title", "CEO", "Boss", "exchange")]
    assert history(state_engine, "account:ZZ")["keys"] == []


# ------------------------------------------------------------------------------------ the commands

@pytest.fixture
def cli(tmp_path: Path, sql_url: str, state_engine: Engine, redis_server):
    """Run ``crmsync`` in-process against this state database, a SQLite CRM and a private
    Redis database as the broker."""
    crm = make_engine(f"sqlite:///{tmp_path / 'crm.db'}")
    init_crm(crm)
    crm.dispose()
    broker = redis_server.url(redis_server.new_database())
    queue = "crmsync.test.events"
    config = tmp_path / "crmsync.toml"
    config.write_text(f'[crm]\nurl = "sqlite:///{tmp_path / "crm.db"}"\n[state]\nurl = "{sql_url}"\n'
                      f'keep_applied_days = 7\n[broker]\nurl = "{broker}"\n[worker]\nqueue_prefix = "{queue}"\n')
    runner = CliRunner()

    def run(*args: str, ok: bool = True):
        result = runner.invoke(app, ["--config", str(config), *args], env={"COLUMNS": "250"})
        if ok:
            assert result.exit_code == 0, (result.output, result.exception)
        return result

    run.redis = redis.Redis.from_url(broker)
    run.queue = f"{queue}.to_exchange"   # the events replayed are CRM changes
    yield run
    run.redis.close()


def test_events_list_in_three_formats(cli, log: dict[str, int]) -> None:
    table = cli("events", "list", "--status", "dead").output
    assert "account:D4" in table and "company_name holds a vertical tab" in table and "account:A1" not in table
    rows = json.loads(cli("events", "list", "--format", "json", "--mailbox", MB2).output)
    assert [(r["id"], r["status"], r["crm_key"]) for r in rows] == [(log["pending"], "pending", "account:E5")]
    parsed = list(csv.DictReader(io.StringIO(cli("events", "list", "-f", "csv", "--record", "account:A1").output)))
    assert [int(r["id"]) for r in parsed] == [log["from_outlook"], log["applied"]]
    assert cli("events", "list", "--since", "1h", "-f", "json").output.count('"id"') == 6
    bad = cli("events", "list", "--status", "deadd", ok=False)
    assert bad.exit_code != 0 and "unknown status 'deadd'" in str(bad.exception)


def test_events_show_prints_the_diffs(cli, log: dict[str, int]) -> None:
    out = cli("events", "show", str(log["applied"])).output
    for expected in ("applied", "phone_business", "+1 555 0100", "+1 555 0199", "old@example.org",
                     "new@example.org", "exchange", "crm"):
        assert expected in out
    shown = json.loads(cli("events", "show", str(log["dead"]), "-f", "json").output)
    assert shown["status"] == "dead" and "company_name" in shown["last_error"]


def test_events_replay_publishes_through_the_broker(cli, state_engine: Engine, log: dict[str, int]) -> None:
    dry = cli("events", "replay", "--status", "dead", "--dry-run").output
    assert "would replay 1 event(s)" in dry and "account:D4" in dry
    assert cli.redis.llen(cli.queue) == 0 and show_event(state_engine, log["dead"])["status"] == "dead"
    assert "replayed 1 of 1 event(s)" in cli("events", "replay", "--status", "dead").output
    assert cli.redis.llen(cli.queue) == 1
    assert show_event(state_engine, log["dead"])["status"] == "published"
    assert "replayed 2 of 2" in cli("events", "replay", str(log["applied"]), str(log["skipped"])).output
    assert cli.redis.llen(cli.queue) == 2
    assert "no such event(s): 99999" in str(cli("events", "replay", "99999", ok=False).exception)
    assert "nothing to replay" in str(cli("events", "replay", ok=False).exception)


def test_events_purge_defaults_to_keep_applied_days(cli, state_engine: Engine, log: dict[str, int]) -> None:
    with state_engine.begin() as conn:
        conn.execute(update(events).where(events.c.id == log["applied"])
                     .values(applied_at=datetime.now(UTC) - timedelta(days=8)))
    assert "purged 1 applied/skipped event(s)" in cli("events", "purge").output   # keep_applied_days = 7
    assert show_event(state_engine, log["applied"]) is None
    with state_engine.connect() as conn:
        assert conn.execute(event_changes.select()).all() == []
    assert "purged 1 applied/skipped" in cli("events", "purge", "--before", "2999-01-01").output
    assert {r["status"] for r in list_events(state_engine, EventQuery(limit=None))} == {"failed", "dead", "pending"}


def test_history_command(cli, log: dict[str, int]) -> None:
    out = cli("history", "ITEM-A1").output
    assert "account:A1 in alice@example.com" in out
    for expected in ("phone_business", "+1 555 0199", "job_title", "CEO", "Boss", "Exchange's value kept"):
        assert expected in out
    found = json.loads(cli("history", "account:A1", "-f", "json").output)
    assert [c["field"] for c in found["changes"]] == ["phone_business", "email"]
    assert found["conflicts"][0]["chosen"] == "exchange"
    assert "no link and no logged change" in str(cli("history", "account:NOPE", ok=False).exception)


def test_times_are_iso_or_ages() -> None:
    now = datetime(2026, 12, 1, 8, 0, tzinfo=UTC)
    assert parse_when("12h", now) == datetime(2026, 11, 30, 20, 0, tzinfo=UTC)
    assert parse_when("2026-12-01", now) == datetime(2026, 12, 1, tzinfo=UTC)
    assert parse_when("2026-12-01T09:00+01:00", now) == datetime(2026, 12, 1, 8, 0, tzinfo=UTC)
    with pytest.raises(Exception, match="ISO 8601"):
        parse_when("yesterday", now)
