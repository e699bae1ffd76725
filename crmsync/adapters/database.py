"""Engines and schema setup for the CRM and state databases (SQLite and PostgreSQL).

Nothing here runs at import. ``make_engine`` is the one place that knows how each dialect must
be configured for crmsync's short compare-and-set transactions to be safe.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event, inspect, text
from sqlalchemy.engine import make_url
from sqlalchemy.pool import StaticPool

from crmsync.errors import CrmsyncError

#: Connection execution option: the next transaction will write (SQLite: BEGIN IMMEDIATE).
WRITE_OPTION = "crmsync_write"

SQLITE_BUSY_TIMEOUT_MS = 30_000


class SchemaMismatch(CrmsyncError):
    """The CRM database lacks a table, column or trigger crmsync needs."""


def _normalize_url(url: str) -> str:
    u = make_url(url)
    if u.drivername in ("postgresql", "postgres"):
        u = u.set(drivername="postgresql+psycopg")
    return u.render_as_string(hide_password=False)


def make_engine(url: str, **kwargs: Any) -> Engine:
    """An Engine configured for crmsync.

    SQLite: WAL (readers never block the writer), a busy timeout, foreign keys on, and
    SQLAlchemy's documented pysqlite recipe (driver BEGIN disabled, our own BEGIN emitted) so that
    transactions really are transactions; a connection opened with ``write_tx`` begins with
    ``BEGIN IMMEDIATE``, taking the write lock up front so that read-then-write compare-and-set
    cannot interleave with another writer. PostgreSQL: psycopg 3 (``postgresql://`` is rewritten
    to ``postgresql+psycopg://``).
    """
    url = _normalize_url(url)
    u = make_url(url)
    if u.get_backend_name() == "sqlite":
        connect_args = dict(kwargs.pop("connect_args", {}))
        connect_args.setdefault("timeout", SQLITE_BUSY_TIMEOUT_MS / 1000)
        connect_args.setdefault("check_same_thread", False)
        memory = u.database in (None, "", ":memory:")
        if memory:  # one shared in-memory database for every thread, not one per connection
            kwargs.setdefault("poolclass", StaticPool)
        engine = create_engine(url, connect_args=connect_args, **kwargs)

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.isolation_level = None  # we emit BEGIN ourselves (see do_begin)
            cur = dbapi_conn.cursor()
            try:
                if not memory:
                    cur.execute("PRAGMA journal_mode=WAL")
                    cur.execute("PRAGMA synchronous=NORMAL")
                cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
                cur.execute("PRAGMA foreign_keys=ON")
            finally:
                cur.close()

        @event.listens_for(engine, "begin")
        def _on_begin(conn: Connection) -> None:
            if conn.get_execution_options().get(WRITE_OPTION):
                conn.exec_driver_sql("BEGIN IMMEDIATE")
            else:
                conn.exec_driver_sql("BEGIN")

        return engine
    kwargs.setdefault("pool_pre_ping", True)
    return create_engine(url, **kwargs)


@contextmanager
def write_tx(engine: Engine) -> Iterator[Connection]:
    """A short write transaction (BEGIN IMMEDIATE on SQLite); commits on success."""
    with engine.connect() as conn:
        conn = conn.execution_options(**{WRITE_OPTION: True})
        with conn.begin():
            yield conn


@contextmanager
def read_tx(engine: Engine) -> Iterator[Connection]:
    """A read-only transaction: one consistent snapshot, never takes the SQLite write lock."""
    with engine.connect() as conn:
        with conn.begin():
            yield conn


def safe_url(engine: Engine) -> str:
    """The engine's URL without its password, for messages."""
    return engine.url.render_as_string(hide_password=True)


# --------------------------------------------------------------------------- state database

def _alembic_config(connection: Connection) -> Any:
    from alembic.config import Config

    import schemas

    cfg = Config()
    cfg.set_main_option("script_location", str(Path(schemas.__file__).parent / "migrations"))
    cfg.attributes["connection"] = connection
    return cfg


def init_state(engine: Engine) -> None:
    """Bring the state database to the latest migration (idempotent, safe to run concurrently)."""
    from alembic import command

    with write_tx(engine) as conn:
        if conn.dialect.name == "postgresql":
            # two `crmsync init` at once must not both create the tables
            conn.execute(text("SELECT pg_advisory_xact_lock(hashtext('crmsync.init_state'))"))
        command.upgrade(_alembic_config(conn), "head")


def state_revision(engine: Engine) -> str | None:
    """The state database's current migration revision (None before ``init_state``)."""
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"version_table": "crmsync_alembic_version"})
        return ctx.get_current_revision()


# --------------------------------------------------------------------------- CRM database

def _existing_triggers(conn: Connection) -> set[str]:
    return set(_trigger_definitions(conn))


def _trigger_definitions(conn: Connection) -> dict[str, str | None]:
    """Trigger name -> what identifies its definition: the CREATE statement on SQLite, the
    comment crmsync put on it on PostgreSQL (None when it has none)."""
    if conn.dialect.name == "sqlite":
        rows = conn.execute(text("SELECT name, sql FROM sqlite_master WHERE type = 'trigger'"))
    else:
        rows = conn.execute(
            text(
                "SELECT t.tgname, obj_description(t.oid, 'pg_trigger') FROM pg_trigger t "
                "JOIN pg_class c ON c.oid = t.tgrelid "
                "WHERE NOT t.tgisinternal AND c.relname IN ('accounts', 'contacts') "
                "AND pg_table_is_visible(c.oid)"
            )
        )
    return {r[0]: r[1] for r in rows}


def _marker(ddl: str) -> str:
    return "crmsync trigger " + hashlib.sha256(ddl.encode()).hexdigest()[:16]


def _expected_triggers(dialect: str) -> set[str]:
    from schemas import crm_triggers

    if dialect == "sqlite":
        return set(crm_triggers.sqlite_triggers())
    return set(crm_triggers.postgresql_triggers())


def init_crm(engine: Engine) -> None:
    """Create the reference CRM schema and install or upgrade its triggers.

    Idempotent. Tables are additive: existing tables are kept as they are (their columns are
    checked, never altered), missing ones are created, no table or data is ever dropped. The
    triggers are crmsync's own: a missing one is created and one whose definition differs from
    this version's (an older crmsync's) is replaced, in the same transaction, so a database set
    up by an earlier version gets the time-keeping triggers on the next ``crmsync init``.
    """
    from schemas import crm_triggers
    from schemas.crm_tables import crm_metadata

    dialect = engine.dialect.name
    if dialect not in ("sqlite", "postgresql"):
        raise SchemaMismatch(f"CRM database {safe_url(engine)}: dialect {dialect!r} is not supported "
                             "(use SQLite or PostgreSQL)")
    with write_tx(engine) as conn:
        if dialect == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(hashtext('crmsync.init_crm'))"))
        crm_metadata.create_all(conn, checkfirst=True)
        _check_columns(conn, safe_url(engine))
        present = _trigger_definitions(conn)
        if dialect == "sqlite":
            for name, ddl in crm_triggers.sqlite_triggers().items():
                if present.get(name, "") == ddl:
                    continue
                if name in present:
                    conn.exec_driver_sql(f'DROP TRIGGER "{name}"')
                conn.exec_driver_sql(ddl)
        else:
            for ddl in crm_triggers.postgresql_functions():
                conn.exec_driver_sql(ddl)
            for name, (table, ddl) in crm_triggers.postgresql_triggers().items():
                if present.get(name, "") == _marker(ddl):
                    continue
                if name in present:
                    conn.exec_driver_sql(f'DROP TRIGGER "{name}" ON {table}')
                conn.exec_driver_sql(ddl)
                conn.exec_driver_sql(f"COMMENT ON TRIGGER \"{name}\" ON {table} IS '{_marker(ddl)}'")


def _check_columns(conn: Connection, where: str) -> None:
    from schemas.crm_tables import REQUIRED_COLUMNS

    insp = inspect(conn)
    tables = set(insp.get_table_names())
    for table, required in REQUIRED_COLUMNS.items():
        if table not in tables:
            raise SchemaMismatch(
                f"CRM database {where}: table {table!r} is missing; run `crmsync init` to create it"
            )
        have = {c["name"] for c in insp.get_columns(table)}
        missing = [c for c in required if c not in have]
        if missing:
            raise SchemaMismatch(
                f"CRM database {where}: table {table!r} is missing column(s) "
                f"{', '.join(repr(c) for c in missing)}; crmsync never alters existing tables, "
                "add them or map your schema"
            )


def check_crm_schema(engine: Engine, *, triggers: bool = True) -> None:
    """Raise SchemaMismatch naming the first missing table, column or change-capture trigger."""
    where = safe_url(engine)
    with engine.connect() as conn:
        _check_columns(conn, where)
        if triggers:
            missing = sorted(_expected_triggers(conn.dialect.name) - _existing_triggers(conn))
            if missing:
                raise SchemaMismatch(
                    f"CRM database {where}: change-capture trigger(s) {', '.join(missing)} missing, "
                    "so edits would not be seen; run `crmsync init` to add them"
                )
