"""The reference CRM schema and its change capture, on SQLite and PostgreSQL.

Writes go through a plain DBAPI connection (sqlite3 / psycopg), as any other program would.
"""

from __future__ import annotations

import pytest
from sqlalchemy import Engine, text

from crmsync.adapters.crm.changelog import Changelog
from crmsync.adapters.database import SchemaMismatch, check_crm_schema, init_crm, make_engine
from tests.contract.dbhelpers import run_sql


def log_rows(engine: Engine) -> list[tuple[str, str, str, int | None]]:
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(text(
            "SELECT table_name, row_key, op, account_id FROM crm_changelog ORDER BY id"))]


def test_init_crm_is_idempotent_and_keeps_data(crm_engine: Engine, crm_dbapi) -> None:
    run_sql(crm_dbapi, "INSERT INTO accounts (account_no, company_name) VALUES ('A1', 'Acme')")
    init_crm(crm_engine)
    init_crm(crm_engine)
    check_crm_schema(crm_engine)
    assert log_rows(crm_engine) == [("accounts", "A1", "insert", None)]


def test_plain_sql_insert_update_delete_are_captured(crm_engine: Engine, crm_dbapi) -> None:
    run_sql(crm_dbapi,
            "INSERT INTO accounts (id, account_no, company_name) VALUES (10, 'A1', 'Acme')",
            "INSERT INTO contacts (id, account_id, first_name) VALUES (7, 10, 'Ann')")
    run_sql(crm_dbapi, "UPDATE accounts SET phone_business = '+1 555 0100' WHERE id = 10",
            "UPDATE contacts SET last_name = 'Lee' WHERE id = 7")
    run_sql(crm_dbapi, "DELETE FROM contacts WHERE id = 7", "DELETE FROM accounts WHERE id = 10")
    assert log_rows(crm_engine) == [
        ("accounts", "A1", "insert", None),
        ("contacts", "7", "insert", 10),
        ("accounts", "A1", "update", None),
        ("contacts", "7", "update", 10),
        ("contacts", "7", "delete", 10),
        ("accounts", "A1", "delete", None),
    ]
    rows = Changelog(crm_engine).pending()
    assert [r.crm_key for r in rows] == ["account:A1", "contact:7", "account:A1", "contact:7",
                                          "contact:7", "account:A1"]
    assert all(r.changed_at is not None and r.changed_at.tzinfo is not None for r in rows)


def test_rolled_back_change_is_not_captured(crm_engine: Engine, crm_dbapi) -> None:
    conn = crm_dbapi()
    try:
        conn.execute("INSERT INTO accounts (account_no) VALUES ('A1')")
        conn.rollback()
    finally:
        conn.close()
    assert log_rows(crm_engine) == []


def test_update_that_changes_nothing_is_not_logged(crm_engine: Engine, crm_dbapi) -> None:
    run_sql(crm_dbapi,
            "INSERT INTO accounts (id, account_no, email) VALUES (1, 'A1', 'a@example.com')",
            "INSERT INTO contacts (id, account_id, email) VALUES (2, 1, NULL)")
    run_sql(crm_dbapi, "UPDATE accounts SET email = email, notes = NULL WHERE id = 1",
            "UPDATE contacts SET email = NULL WHERE id = 2")
    assert [op for _t, _k, op, _a in log_rows(crm_engine)] == ["insert", "insert"]


def test_account_no_rename_is_a_delete_and_an_insert(crm_engine: Engine, crm_dbapi) -> None:
    run_sql(crm_dbapi, "INSERT INTO accounts (id, account_no) VALUES (1, 'OLD-1')")
    run_sql(crm_dbapi, "UPDATE accounts SET account_no = 'NEW-1', city = 'Oslo' WHERE id = 1")
    assert log_rows(crm_engine) == [
        ("accounts", "OLD-1", "insert", None),
        ("accounts", "OLD-1", "delete", None),
        ("accounts", "NEW-1", "insert", None),
    ]


def test_processed_rows_are_not_pending_and_purge_removes_them(crm_engine: Engine, crm_dbapi) -> None:
    from datetime import UTC, datetime, timedelta

    run_sql(crm_dbapi, "INSERT INTO accounts (account_no) VALUES ('A1')",
            "INSERT INTO accounts (account_no) VALUES ('A2')")
    log = Changelog(crm_engine)
    first, second = log.pending()
    log.mark_processed([first.id])
    assert [r.id for r in log.pending()] == [second.id]
    assert log.purge(datetime.now(UTC) + timedelta(seconds=5)) == 1
    assert log.count() == 1
    assert log.purge(datetime.now(UTC) + timedelta(seconds=5)) == 0


def test_init_adds_missing_triggers_to_existing_tables(sql_url: str, crm_dbapi) -> None:
    engine = make_engine(sql_url)
    try:
        from schemas.crm_tables import crm_metadata

        crm_metadata.create_all(engine)       # tables exist, triggers do not
        with pytest.raises(SchemaMismatch, match="trigger"):
            check_crm_schema(engine)
        init_crm(engine)
        check_crm_schema(engine)
        run_sql(crm_dbapi, "INSERT INTO accounts (account_no) VALUES ('A1')")
        assert log_rows(engine) == [("accounts", "A1", "insert", None)]
    finally:
        engine.dispose()


def test_check_names_the_missing_column(sql_url: str, crm_dbapi) -> None:
    run_sql(crm_dbapi, "CREATE TABLE accounts (id INTEGER PRIMARY KEY, account_no TEXT NOT NULL)")
    engine = make_engine(sql_url)
    try:
        with pytest.raises(SchemaMismatch, match="'accounts' is missing column.*'company_name'"):
            check_crm_schema(engine)
        with pytest.raises(SchemaMismatch, match="'company_name'"):
            init_crm(engine)               # never alters an existing table
    finally:
        engine.dispose()


def test_postgresql_notifies_each_change(crm_engine: Engine, crm_dbapi) -> None:
    log = Changelog(crm_engine)
    if not log.doorbell_supported:
        assert crm_engine.dialect.name == "sqlite"
        with pytest.raises(RuntimeError):
            log.listen(0.1)
        return
    try:
        assert log.listen(0.2) is False        # opens the LISTEN connection; nothing yet
        run_sql(crm_dbapi, "INSERT INTO accounts (account_no) VALUES ('A1')")
        assert log.listen(5) is True
        assert log.listen(0.2) is False
    finally:
        log.close()


def test_a_row_committed_late_with_a_smaller_id_is_still_read(crm_engine: Engine, crm_dbapi) -> None:
    """PostgreSQL hands out sequence ids at insert, not at commit: a reader keyed on
    ``id > last seen`` would skip the slow transaction's row forever; the processed flag does not."""
    if crm_engine.dialect.name != "postgresql":
        pytest.skip("SQLite has a single writer: changelog ids commit in order")
    log = Changelog(crm_engine)
    slow = crm_dbapi()
    try:
        slow.execute("INSERT INTO accounts (account_no) VALUES ('SLOW')")   # takes the smaller id
        run_sql(crm_dbapi, "INSERT INTO accounts (account_no) VALUES ('FAST')")
        (fast,) = log.pending()
        assert fast.row_key == "FAST"
        log.mark_processed([fast.id])
        slow.commit()
    finally:
        slow.close()
    (late,) = log.pending()
    assert late.row_key == "SLOW" and late.id < fast.id


def test_sqlite_write_transactions_take_the_write_lock_up_front(crm_engine: Engine, crm_dbapi) -> None:
    """``write_tx`` begins with BEGIN IMMEDIATE on SQLite, so a read-then-write compare-and-set
    cannot be overtaken by another writer between its read and its write."""
    import sqlite3

    from crmsync.adapters.database import read_tx, write_tx

    if crm_engine.dialect.name != "sqlite":
        pytest.skip("PostgreSQL uses row locks (SELECT ... FOR UPDATE) instead")
    path = crm_engine.url.database
    other = sqlite3.connect(path, timeout=0, isolation_level=None)
    try:
        with read_tx(crm_engine) as conn:
            conn.execute(text("SELECT count(*) FROM accounts"))
            other.execute("BEGIN IMMEDIATE")          # a reader does not hold the write lock
            other.execute("ROLLBACK")
        with write_tx(crm_engine):
            with pytest.raises(sqlite3.OperationalError, match="locked"):
                other.execute("BEGIN IMMEDIATE")      # the writer holds it from BEGIN on
        with crm_engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
    finally:
        other.close()


# --------------------------------------------------------------------------- change times
# The CRM side's change time is the database clock in UTC, set by the triggers on every insert
# and every update that changes something, whatever the writing program put into updated_at.

def _db_now(engine: Engine):
    """The database clock now, as naive UTC (what the triggers must store)."""
    from datetime import UTC, datetime

    with engine.connect() as conn:
        if engine.dialect.name == "sqlite":
            raw = conn.exec_driver_sql("SELECT strftime('%Y-%m-%d %H:%M:%f', 'now')").scalar()
            return datetime.fromisoformat(raw)
        value = conn.exec_driver_sql("SELECT clock_timestamp()").scalar()
        return value.astimezone(UTC).replace(tzinfo=None)


def _updated_at(engine: Engine, table: str, row_id: int):
    from schemas.crm_tables import accounts, contacts

    t = {"accounts": accounts, "contacts": contacts}[table]
    with engine.connect() as conn:
        return conn.execute(t.select().with_only_columns(t.c.updated_at).where(t.c.id == row_id)).scalar()


def _assert_db_time(engine: Engine, value, before, after) -> None:
    from datetime import timedelta

    slack = timedelta(milliseconds=5)   # SQLite's clock has milliseconds
    assert value is not None, "updated_at must be set by the database"
    assert before - slack <= value <= after + slack, (before, value, after)


HOW_PLAIN_SQL_WRITES_UPDATED_AT = {
    "left_alone": "",
    "set_to_a_past_value": ", updated_at = '2001-02-03 04:05:06'",
    "set_to_null": ", updated_at = NULL",
    "set_to_a_future_value": ", updated_at = '2099-01-01 00:00:00'",
}


@pytest.mark.parametrize("how", list(HOW_PLAIN_SQL_WRITES_UPDATED_AT))
def test_plain_sql_update_gets_the_database_utc_time_whatever_it_writes_into_updated_at(
        crm_engine: Engine, crm_dbapi, how: str) -> None:
    run_sql(crm_dbapi,
            "INSERT INTO accounts (id, account_no, city, updated_at) VALUES (1, 'A1', 'Oslo', '2001-01-01 00:00:00')",
            "INSERT INTO contacts (id, account_id, first_name) VALUES (2, 1, 'Ann')")
    extra = HOW_PLAIN_SQL_WRITES_UPDATED_AT[how]
    before = _db_now(crm_engine)
    run_sql(crm_dbapi, f"UPDATE accounts SET city = 'Bergen'{extra} WHERE id = 1",
            f"UPDATE contacts SET first_name = 'Anne'{extra} WHERE id = 2")
    after = _db_now(crm_engine)
    _assert_db_time(crm_engine, _updated_at(crm_engine, "accounts", 1), before, after)
    _assert_db_time(crm_engine, _updated_at(crm_engine, "contacts", 2), before, after)
    # the time travels with the change, and the change is logged once per row
    assert [op for _t, _k, op, _a in log_rows(crm_engine)] == ["insert", "insert", "update", "update"]


@pytest.mark.parametrize("how", ["left_alone", "set_to_a_past_value", "set_to_null"])
def test_plain_sql_insert_gets_the_database_utc_time(crm_engine: Engine, crm_dbapi, how: str) -> None:
    value = {"left_alone": None, "set_to_a_past_value": "'2001-02-03 04:05:06'", "set_to_null": "NULL"}[how]
    cols, vals = ("", "") if value is None else (", updated_at", f", {value}")
    before = _db_now(crm_engine)
    run_sql(crm_dbapi, f"INSERT INTO accounts (id, account_no{cols}) VALUES (1, 'A1'{vals})",
            f"INSERT INTO contacts (id, account_id{cols}) VALUES (2, 1{vals})")
    after = _db_now(crm_engine)
    _assert_db_time(crm_engine, _updated_at(crm_engine, "accounts", 1), before, after)
    _assert_db_time(crm_engine, _updated_at(crm_engine, "contacts", 2), before, after)
    assert [op for _t, _k, op, _a in log_rows(crm_engine)] == ["insert", "insert"]


def test_postgresql_session_in_another_time_zone_still_stores_utc(crm_engine: Engine, crm_dbapi) -> None:
    """now() in a New York session is five hours behind UTC as a naive timestamp: a client that
    writes it (or a trigger that used it) would make every CRM edit look hours old."""
    if crm_engine.dialect.name != "postgresql":
        pytest.skip("SQLite has no session time zone")
    run_sql(crm_dbapi, "INSERT INTO accounts (id, account_no) VALUES (1, 'A1')")
    before = _db_now(crm_engine)
    run_sql(crm_dbapi, "SET TIME ZONE 'America/New_York'",
            "UPDATE accounts SET city = 'Albany', updated_at = now() WHERE id = 1")
    run_sql(crm_dbapi, "SET TIME ZONE 'Asia/Tokyo'",
            "INSERT INTO contacts (id, account_id, first_name) VALUES (2, 1, 'Ken')")
    after = _db_now(crm_engine)
    _assert_db_time(crm_engine, _updated_at(crm_engine, "accounts", 1), before, after)
    _assert_db_time(crm_engine, _updated_at(crm_engine, "contacts", 2), before, after)


def test_update_that_changes_nothing_keeps_updated_at_and_logs_nothing(crm_engine: Engine, crm_dbapi) -> None:
    run_sql(crm_dbapi, "INSERT INTO accounts (id, account_no, email) VALUES (1, 'A1', 'a@example.com')",
            "INSERT INTO contacts (id, account_id, email) VALUES (2, 1, NULL)")
    stamped = (_updated_at(crm_engine, "accounts", 1), _updated_at(crm_engine, "contacts", 2))
    run_sql(crm_dbapi, "UPDATE accounts SET email = email WHERE id = 1",
            "UPDATE contacts SET email = NULL WHERE id = 2")
    assert (_updated_at(crm_engine, "accounts", 1), _updated_at(crm_engine, "contacts", 2)) == stamped
    assert [op for _t, _k, op, _a in log_rows(crm_engine)] == ["insert", "insert"]


def test_sqlite_recursive_triggers_do_not_loop(crm_engine: Engine) -> None:
    """A program that turns on PRAGMA recursive_triggers must not make the touch trigger loop."""
    import sqlite3

    if crm_engine.dialect.name != "sqlite":
        pytest.skip("SQLite only")
    db = sqlite3.connect(crm_engine.url.database, timeout=30)
    try:
        db.execute("PRAGMA recursive_triggers = ON")
        db.execute("INSERT INTO accounts (id, account_no) VALUES (1, 'A1')")
        db.execute("UPDATE accounts SET city = 'Oslo' WHERE id = 1")
        db.execute("UPDATE accounts SET updated_at = NULL WHERE id = 1")
        db.commit()
    finally:
        db.close()
    assert _updated_at(crm_engine, "accounts", 1) is not None
    assert [op for _t, _k, op, _a in log_rows(crm_engine)] == ["insert", "update"]


def test_init_upgrades_an_existing_database_to_the_time_keeping_triggers(sql_url: str, crm_dbapi) -> None:
    """A CRM database set up by an earlier crmsync (change capture only) gets the triggers that
    keep updated_at on the next `crmsync init`, its data untouched."""
    from schemas import crm_triggers
    from schemas.crm_tables import crm_metadata

    engine = make_engine(sql_url)
    try:
        crm_metadata.create_all(engine)
        init_crm(engine)
        run_sql(crm_dbapi, "INSERT INTO accounts (id, account_no, updated_at) VALUES (1, 'A1', '2001-01-01 00:00:00')")
        with engine.begin() as conn:       # back to the earlier trigger set: no time keeping
            for name, table in crm_triggers.time_triggers(engine.dialect.name).items():
                conn.exec_driver_sql(f"DROP TRIGGER {name}" + (f" ON {table}" if table else ""))
        with pytest.raises(SchemaMismatch, match="trigger"):
            check_crm_schema(engine)
        init_crm(engine)
        init_crm(engine)
        check_crm_schema(engine)
        before = _db_now(engine)
        run_sql(crm_dbapi, "UPDATE accounts SET city = 'Oslo' WHERE id = 1")
        _assert_db_time(engine, _updated_at(engine, "accounts", 1), before, _db_now(engine))
        assert [op for _t, _k, op, _a in log_rows(engine)] == ["insert", "update"]
    finally:
        engine.dispose()
