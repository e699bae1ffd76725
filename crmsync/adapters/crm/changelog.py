"""Reading the CRM's trigger-written ``crm_changelog`` (DESIGN.md §5).

Rows are consumed by their ``processed`` flag, not by ``id > cursor``: on PostgreSQL sequence
ids commit out of order, so a row with a smaller id can become visible after a larger one was
already read; an unprocessed row is picked up whenever it becomes visible. The producer turns
the rows into event rows (deduplicated by changelog id) and only then marks them processed, so
a crash in between repeats rows instead of losing them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine, delete, func, select, update
from sqlalchemy.exc import OperationalError

from crmsync.adapters.database import read_tx, safe_url, write_tx
from crmsync.errors import Transient
from schemas.canonical import crm_key
from schemas.crm_tables import crm_changelog
from schemas.crm_triggers import CHANNEL

BATCH = 500


@dataclass(frozen=True)
class ChangeRow:
    """One captured change: which row of which table, and whether it was inserted, updated or
    deleted. Carries keys only; the worker re-reads the current row."""

    id: int
    table_name: str          # accounts | contacts
    row_id: int
    row_key: str             # account_no for accounts, str(id) for contacts
    account_id: int | None   # for contacts: their account's id
    op: str                  # insert | update | delete
    changed_at: datetime | None  # UTC-aware

    @property
    def crm_key(self) -> str:
        return crm_key("account" if self.table_name == "accounts" else "contact", self.row_key)


class Changelog:
    """The changelog of one CRM database."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._listener: ChangelogListener | None = None

    @property
    def doorbell_supported(self) -> bool:
        """True where ``listen()`` can wake the producer early (PostgreSQL LISTEN/NOTIFY).
        On SQLite the producer watches the database file instead."""
        return self.engine.dialect.name == "postgresql"

    def pending(self, limit: int = 500) -> list[ChangeRow]:
        """Unprocessed rows, oldest id first."""
        stmt = (select(crm_changelog).where(crm_changelog.c.processed.is_(False))
                .order_by(crm_changelog.c.id).limit(limit))
        with read_tx(self.engine) as conn:
            return [_row(r._mapping) for r in conn.execute(stmt)]

    def pending_ids(self, limit: int = 1_000_000) -> list[int]:
        """The ids of the unprocessed rows committed and visible now, ascending, read by one
        statement (one snapshot): a row whose transaction commits later is not among them, even
        when its id is smaller (PostgreSQL). The first sync records them as its position."""
        stmt = (select(crm_changelog.c.id).where(crm_changelog.c.processed.is_(False))
                .order_by(crm_changelog.c.id).limit(limit))
        with read_tx(self.engine) as conn:
            return [int(i) for i in conn.execute(stmt).scalars()]

    def mark_processed(self, ids: Iterable[int]) -> None:
        ids = list(ids)
        with write_tx(self.engine) as conn:
            for i in range(0, len(ids), BATCH):
                conn.execute(update(crm_changelog).where(crm_changelog.c.id.in_(ids[i:i + BATCH]))
                             .values(processed=True))

    def purge(self, older_than: datetime) -> int:
        """Delete processed rows changed before ``older_than``; returns how many."""
        with write_tx(self.engine) as conn:
            res = conn.execute(delete(crm_changelog).where(
                crm_changelog.c.processed.is_(True), crm_changelog.c.changed_at < older_than))
            return res.rowcount or 0

    def count(self) -> int:
        """Rows in the changelog (tests and `status` count CRM writes with it)."""
        with read_tx(self.engine) as conn:
            return int(conn.execute(select(func.count()).select_from(crm_changelog)).scalar_one())

    def listen(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for a NOTIFY on ``crm_changelog`` (PostgreSQL only).

        True: something was logged (or the listening connection broke, so poll now); False:
        timeout. The LISTEN connection is opened on first use and kept until ``close()``.
        Notifications sent before the first call are not seen: read ``pending()`` first.
        """
        import psycopg

        if not self.doorbell_supported:
            raise RuntimeError("changelog LISTEN needs PostgreSQL; on SQLite watch the database file")
        if self._listener is None:
            try:
                self._listener = ChangelogListener(self.engine)
            except (psycopg.OperationalError, OperationalError) as exc:
                raise Transient(f"CRM database {safe_url(self.engine)}: cannot LISTEN "
                                f"({type(exc).__name__})") from None
        try:
            return self._listener.wait(timeout)
        except psycopg.OperationalError:
            self.close()  # reconnect on the next call; meanwhile poll
            return True

    def close(self) -> None:
        """Close the LISTEN connection, if any."""
        if self._listener is not None:
            listener, self._listener = self._listener, None
            try:
                listener.close()
            except Exception:  # noqa: BLE001 - closing a broken connection
                pass


class ChangelogListener:
    """A dedicated psycopg connection LISTENing on ``crm_changelog``: a doorbell only.

    Use as a context manager; ``wait(timeout)`` returns True when at least one notification
    arrived (all queued ones are drained), False on timeout.
    """

    def __init__(self, engine: Engine) -> None:
        import psycopg

        # its own connection, outside the pool: it stays in autocommit, listening
        cargs, cparams = engine.dialect.create_connect_args(engine.url)
        cparams = {**cparams, "autocommit": True}
        self._conn: Any = psycopg.connect(*cargs, **cparams)
        self._conn.execute(f"LISTEN {CHANNEL}")

    def wait(self, timeout: float) -> bool:
        got = False
        for _ in self._conn.notifies(timeout=timeout, stop_after=1):
            got = True
        if got:  # drain whatever else is queued, without waiting
            for _ in self._conn.notifies(timeout=0):
                pass
        return got

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> ChangelogListener:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _row(m: Any) -> ChangeRow:
    changed = m["changed_at"]
    return ChangeRow(
        id=int(m["id"]),
        table_name=m["table_name"],
        row_id=int(m["row_id"]),
        row_key=str(m["row_key"]),
        account_id=m["account_id"],
        op=m["op"],
        changed_at=None if changed is None else changed.replace(tzinfo=UTC),
    )
