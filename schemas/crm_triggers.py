"""Change-capture triggers: every INSERT/UPDATE/DELETE of accounts and contacts appends a row to
``crm_changelog`` in the same transaction, whoever wrote it (DESIGN.md §5).

Rules, identical on both dialects:
- an UPDATE that changes no column (``SET x = x``) logs nothing, so crmsync's own no-op writes
  and idle tools make no noise;
- an account whose ``account_no`` changes is logged as a delete of the old key and an insert of
  the new one, because the key is what links it to Exchange;
- on PostgreSQL every log row also sends ``pg_notify('crm_changelog', id)``, a doorbell for
  LISTEN; the changelog stays the truth.

Only DDL text lives here; ``crmsync.adapters.database.init_crm`` decides what is missing and runs it.
"""

from __future__ import annotations

from schemas.crm_tables import accounts, contacts

CHANNEL = "crm_changelog"

_SQLITE_NOW = "strftime('%Y-%m-%d %H:%M:%f', 'now')"


def _changed(table_columns: list[str], *, old: str = "OLD", new: str = "NEW", op: str) -> str:
    return " OR ".join(f"{old}.{c} {op} {new}.{c}" for c in table_columns)


def _sqlite_log(row: str, table: str, key_expr: str, account_expr: str, op: str) -> str:
    return (
        "INSERT INTO crm_changelog (table_name, row_id, row_key, account_id, op, changed_at, processed) "
        f"VALUES ('{table}', {row}.id, {key_expr}, {account_expr}, '{op}', {_SQLITE_NOW}, 0);"
    )


def sqlite_triggers() -> dict[str, str]:
    """Trigger name -> ``CREATE TRIGGER IF NOT EXISTS`` statement for SQLite."""
    acc_cols = [c.name for c in accounts.columns]
    con_cols = [c.name for c in contacts.columns]

    def acc(row: str, op: str) -> str:
        return _sqlite_log(row, "accounts", f"{row}.account_no", "NULL", op)

    def con(row: str, op: str) -> str:
        return _sqlite_log(row, "contacts", f"CAST({row}.id AS TEXT)", f"{row}.account_id", op)

    return {
        "crmsync_accounts_ai": (
            "CREATE TRIGGER IF NOT EXISTS crmsync_accounts_ai AFTER INSERT ON accounts "
            f"BEGIN {acc('NEW', 'insert')} END"
        ),
        "crmsync_accounts_au": (
            "CREATE TRIGGER IF NOT EXISTS crmsync_accounts_au AFTER UPDATE ON accounts "
            f"WHEN OLD.account_no IS NEW.account_no AND ({_changed(acc_cols, op='IS NOT')}) "
            f"BEGIN {acc('NEW', 'update')} END"
        ),
        "crmsync_accounts_au_key": (
            "CREATE TRIGGER IF NOT EXISTS crmsync_accounts_au_key AFTER UPDATE ON accounts "
            "WHEN OLD.account_no IS NOT NEW.account_no "
            f"BEGIN {acc('OLD', 'delete')} {acc('NEW', 'insert')} END"
        ),
        "crmsync_accounts_ad": (
            "CREATE TRIGGER IF NOT EXISTS crmsync_accounts_ad AFTER DELETE ON accounts "
            f"BEGIN {acc('OLD', 'delete')} END"
        ),
        "crmsync_contacts_ai": (
            "CREATE TRIGGER IF NOT EXISTS crmsync_contacts_ai AFTER INSERT ON contacts "
            f"BEGIN {con('NEW', 'insert')} END"
        ),
        "crmsync_contacts_au": (
            "CREATE TRIGGER IF NOT EXISTS crmsync_contacts_au AFTER UPDATE ON contacts "
            f"WHEN {_changed(con_cols, op='IS NOT')} "
            f"BEGIN {con('NEW', 'update')} END"
        ),
        "crmsync_contacts_ad": (
            "CREATE TRIGGER IF NOT EXISTS crmsync_contacts_ad AFTER DELETE ON contacts "
            f"BEGIN {con('OLD', 'delete')} END"
        ),
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

    The UPDATE triggers are separate because only they may compare ``OLD.* IS DISTINCT FROM
    NEW.*`` in their WHEN clause (skipping no-op updates without even calling the function).
    """
    out: dict[str, tuple[str, str]] = {}
    for table in ("accounts", "contacts"):
        fn = f"crmsync_log_{table}()"
        out[f"crmsync_{table}_ins_del"] = (
            table,
            f"CREATE TRIGGER crmsync_{table}_ins_del AFTER INSERT OR DELETE ON {table} "
            f"FOR EACH ROW EXECUTE FUNCTION {fn}",
        )
        out[f"crmsync_{table}_upd"] = (
            table,
            f"CREATE TRIGGER crmsync_{table}_upd AFTER UPDATE ON {table} "
            f"FOR EACH ROW WHEN (OLD.* IS DISTINCT FROM NEW.*) EXECUTE FUNCTION {fn}",
        )
    return out
