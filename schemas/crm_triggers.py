"""Change-capture triggers: every INSERT/UPDATE/DELETE of accounts and contacts appends a row to
``crm_changelog`` in the same transaction, whoever wrote it (DESIGN.md §5).

Rules, identical on both dialects:
- an UPDATE that changes no column (``SET x = x``) logs nothing, so crmsync's own no-op writes
  and idle tools make no noise;
- an account whose ``account_no`` changes is logged as a delete of the old key and an insert of
  the new one, because the key is what links it to Exchange;
- on PostgreSQL every log row also sends ``pg_notify('crm_changelog', id)``, a doorbell for
  LISTEN; the changelog stays the truth.

Change times (``updated_at``) are the database clock's, in UTC, whoever wrote the row:
- every INSERT, and every UPDATE that changes any column, sets ``updated_at`` to the database's
  current UTC time, whatever the statement put into it (a stale value, NULL, a local time);
- an UPDATE that changes nothing leaves the row as it is (no new time, no log row);
- ``updated_at`` alone is not a content change: the changelog compares every other column, so
  the triggers' own stamping never logs a second row, and crmsync's writes echo exactly once.
On PostgreSQL a BEFORE trigger sets ``NEW.updated_at`` (``clock_timestamp() AT TIME ZONE 'UTC'``,
independent of the session's TimeZone). SQLite's triggers cannot change NEW, so an AFTER trigger
updates the row once more, only when ``updated_at`` is not already this statement's time
(SQLite's ``'now'`` is fixed for one statement): the extra UPDATE therefore stops at once, also
with ``PRAGMA recursive_triggers = ON``.

Only DDL text lives here; ``crmsync.adapters.database.init_crm`` decides what is missing and runs it.
"""

from __future__ import annotations

from schemas.crm_tables import accounts, contacts

CHANNEL = "crm_changelog"
_TABLES = {"accounts": accounts, "contacts": contacts}

_SQLITE_NOW = "strftime('%Y-%m-%d %H:%M:%f', 'now')"


#: The column the time-keeping triggers own; it is no content of its own.
TIME_COLUMN = "updated_at"


def _changed(table_columns: list[str], *, old: str = "OLD", new: str = "NEW", op: str) -> str:
    return " OR ".join(f"{old}.{c} {op} {new}.{c}" for c in table_columns)


def _content_columns(table) -> list[str]:  # type: ignore[no-untyped-def]
    return [c.name for c in table.columns if c.name != TIME_COLUMN]


def _sqlite_touch(table: str, when: str) -> str:
    return (
        f"CREATE TRIGGER crmsync_{table}_time_{'ai' if when == 'INSERT' else 'au'} "
        f"AFTER {when} ON {table} "
        f"WHEN NEW.{TIME_COLUMN} IS NOT {_SQLITE_NOW}"
        + ("" if when == "INSERT" else f" AND ({_changed([c.name for c in _TABLES[table].columns], op='IS NOT')})")
        + f" BEGIN UPDATE {table} SET {TIME_COLUMN} = {_SQLITE_NOW} WHERE id = NEW.id; END"
    )


def _sqlite_log(row: str, table: str, key_expr: str, account_expr: str, op: str) -> str:
    return (
        "INSERT INTO crm_changelog (table_name, row_id, row_key, account_id, op, changed_at, processed) "
        f"VALUES ('{table}', {row}.id, {key_expr}, {account_expr}, '{op}', {_SQLITE_NOW}, 0);"
    )


def sqlite_triggers() -> dict[str, str]:
    """Trigger name -> ``CREATE TRIGGER`` statement for SQLite."""
    acc_cols = _content_columns(accounts)
    con_cols = _content_columns(contacts)

    def acc(row: str, op: str) -> str:
        return _sqlite_log(row, "accounts", f"{row}.account_no", "NULL", op)

    def con(row: str, op: str) -> str:
        return _sqlite_log(row, "contacts", f"CAST({row}.id AS TEXT)", f"{row}.account_id", op)

    return {
        "crmsync_accounts_ai": (
            "CREATE TRIGGER crmsync_accounts_ai AFTER INSERT ON accounts "
            f"BEGIN {acc('NEW', 'insert')} END"
        ),
        "crmsync_accounts_au": (
            "CREATE TRIGGER crmsync_accounts_au AFTER UPDATE ON accounts "
            f"WHEN OLD.account_no IS NEW.account_no AND ({_changed(acc_cols, op='IS NOT')}) "
            f"BEGIN {acc('NEW', 'update')} END"
        ),
        "crmsync_accounts_au_key": (
            "CREATE TRIGGER crmsync_accounts_au_key AFTER UPDATE ON accounts "
            "WHEN OLD.account_no IS NOT NEW.account_no "
            f"BEGIN {acc('OLD', 'delete')} {acc('NEW', 'insert')} END"
        ),
        "crmsync_accounts_ad": (
            "CREATE TRIGGER crmsync_accounts_ad AFTER DELETE ON accounts "
            f"BEGIN {acc('OLD', 'delete')} END"
        ),
        "crmsync_contacts_ai": (
            "CREATE TRIGGER crmsync_contacts_ai AFTER INSERT ON contacts "
            f"BEGIN {con('NEW', 'insert')} END"
        ),
        "crmsync_contacts_au": (
            "CREATE TRIGGER crmsync_contacts_au AFTER UPDATE ON contacts "
            f"WHEN {_changed(con_cols, op='IS NOT')} "
            f"BEGIN {con('NEW', 'update')} END"
        ),
        "crmsync_contacts_ad": (
            "CREATE TRIGGER crmsync_contacts_ad AFTER DELETE ON contacts "
            f"BEGIN {con('OLD', 'delete')} END"
        ),
        **{f"crmsync_{t}_time_{suffix}": _sqlite_touch(t, when)
           for t in ("accounts", "contacts") for suffix, when in (("ai", "INSERT"), ("au", "UPDATE"))},
    }


def _pg_log(row: str, table: str, key_expr: str, account_expr: str, op: str) -> str:
    return (
        "INSERT INTO crm_changelog (table_name, row_id, row_key, account_id, op, changed_at, processed) "
        f"VALUES ('{table}', {row}.id, {key_expr}, {account_expr}, '{op}', "
        "clock_timestamp() AT TIME ZONE 'UTC', false) RETURNING id INTO log_id; "
        f"PERFORM pg_notify('{CHANNEL}', log_id::text);"
    )


def postgresql_functions() -> list[str]:
    """``CREATE OR REPLACE FUNCTION`` statements (safe to re-run: they never drop anything)."""

    def acc(row: str, op: str) -> str:
        return _pg_log(row, "accounts", f"{row}.account_no", "NULL", op)

    def con(row: str, op: str) -> str:
        return _pg_log(row, "contacts", f"{row}.id::text", f"{row}.account_id", op)

    return [
        f"""
CREATE OR REPLACE FUNCTION crmsync_touch_updated_at() RETURNS trigger LANGUAGE plpgsql AS $fn$
BEGIN
  -- the database clock in UTC, whatever the session's TimeZone and whatever the client wrote
  IF TG_OP = 'INSERT' OR OLD IS DISTINCT FROM NEW THEN
    IF pg_typeof(NEW.{TIME_COLUMN}) = 'timestamp with time zone'::regtype THEN
      NEW.{TIME_COLUMN} := clock_timestamp();
    ELSE
      NEW.{TIME_COLUMN} := clock_timestamp() AT TIME ZONE 'UTC';
    END IF;
  END IF;
  RETURN NEW;
END
$fn$""",
        f"""
CREATE OR REPLACE FUNCTION crmsync_log_accounts() RETURNS trigger LANGUAGE plpgsql AS $fn$
DECLARE log_id bigint;
BEGIN
  IF TG_OP = 'INSERT' THEN
    {acc('NEW', 'insert')}
  ELSIF TG_OP = 'DELETE' THEN
    {acc('OLD', 'delete')}
  ELSIF OLD.account_no IS DISTINCT FROM NEW.account_no THEN
    {acc('OLD', 'delete')}
    {acc('NEW', 'insert')}
  ELSE
    {acc('NEW', 'update')}
  END IF;
  RETURN NULL;
END
$fn$""",
        f"""
CREATE OR REPLACE FUNCTION crmsync_log_contacts() RETURNS trigger LANGUAGE plpgsql AS $fn$
DECLARE log_id bigint;
BEGIN
  IF TG_OP = 'INSERT' THEN
    {con('NEW', 'insert')}
  ELSIF TG_OP = 'DELETE' THEN
    {con('OLD', 'delete')}
  ELSE
    {con('NEW', 'update')}
  END IF;
  RETURN NULL;
END
$fn$""",
    ]


def postgresql_triggers() -> dict[str, tuple[str, str]]:
    """Trigger name -> (table, ``CREATE TRIGGER`` statement) for PostgreSQL.

    The UPDATE triggers are separate because only they may compare the old and new row in their
    WHEN clause (skipping no-op updates without even calling the function); they compare every
    column but ``updated_at``. The time trigger's name starts with ``zz_`` because PostgreSQL runs
    BEFORE triggers in name order: another program's BEFORE trigger cannot overwrite the time.
    """
    out: dict[str, tuple[str, str]] = {}
    for table in ("accounts", "contacts"):
        fn = f"crmsync_log_{table}()"
        cols = _content_columns(_TABLES[table])
        old = ", ".join(f"OLD.{c}" for c in cols)
        new = ", ".join(f"NEW.{c}" for c in cols)
        out[f"zz_crmsync_{table}_time"] = (
            table,
            f"CREATE TRIGGER zz_crmsync_{table}_time BEFORE INSERT OR UPDATE ON {table} "
            "FOR EACH ROW EXECUTE FUNCTION crmsync_touch_updated_at()",
        )
        out[f"crmsync_{table}_ins_del"] = (
            table,
            f"CREATE TRIGGER crmsync_{table}_ins_del AFTER INSERT OR DELETE ON {table} "
            f"FOR EACH ROW EXECUTE FUNCTION {fn}",
        )
        out[f"crmsync_{table}_upd"] = (
            table,
            f"CREATE TRIGGER crmsync_{table}_upd AFTER UPDATE ON {table} "
            f"FOR EACH ROW WHEN (({old}) IS DISTINCT FROM ({new})) EXECUTE FUNCTION {fn}",
        )
    return out


def time_triggers(dialect: str) -> dict[str, str | None]:
    """The names of the triggers that keep ``updated_at`` (-> their table on PostgreSQL, where
    DROP TRIGGER needs it; None on SQLite)."""
    if dialect == "sqlite":
        return {name: None for name in sqlite_triggers() if "_time_" in name}
    return {name: table for name, (table, _ddl) in postgresql_triggers().items() if name.endswith("_time")}
