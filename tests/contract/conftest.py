"""Fixtures of the database contract suites: every test runs on SQLite and on PostgreSQL.

PostgreSQL is expected on 127.0.0.1:5432 (user postgres, trust auth; CI starts it). When it is
not reachable the ``postgresql`` cases FAIL, never skip: a suite that silently ran on SQLite
only would hide exactly the bugs (out-of-order sequence ids, row locks) it exists to catch.
"""

from __future__ import annotations

import os
import sqlite3
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine

from crmsync.adapters.database import init_crm, init_state, make_engine

PG_ADMIN = os.environ.get("CRMSYNC_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")


def _pg_admin() -> Any:
    import psycopg

    try:
        return psycopg.connect(PG_ADMIN, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        pytest.fail(f"PostgreSQL is not reachable at {PG_ADMIN} ({exc}); start it (CI does)")


@pytest.fixture(params=["sqlite", "postgresql"])
def sql_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The SQLAlchemy URL of a fresh, empty database, dropped after the test."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'test.db'}"
        return
    name = f"crmsync_t_{uuid.uuid4().hex[:12]}"
    with _pg_admin() as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    base = PG_ADMIN.rsplit("/", 1)[0]
    try:
        yield f"{base}/{name}"
    finally:
        with _pg_admin() as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def crm_engine(sql_url: str) -> Iterator[Engine]:
    """An engine on a database holding the reference CRM schema and its triggers."""
    engine = make_engine(sql_url)
    init_crm(engine)
    try:
        yield engine
    finally:
        engine.dispose()


@pytest.fixture
def state_engine(sql_url: str) -> Iterator[Engine]:
    """An engine on a database migrated to the latest state schema."""
    engine = make_engine(sql_url)
    init_state(engine)
    try:
        yield engine
    finally:
        engine.dispose()


@pytest.fixture
def crm_dbapi(sql_url: str) -> Callable[[], Any]:
    """Open a plain DBAPI connection (sqlite3 / psycopg) to the test database: 'any program
    writing plain SQL'. Both use autocommit-free transactions: call ``commit()``."""

    def connect() -> Any:
        if sql_url.startswith("sqlite:///"):
            return sqlite3.connect(sql_url.removeprefix("sqlite:///"), timeout=30)
        import psycopg

        return psycopg.connect(sql_url)

    return connect
