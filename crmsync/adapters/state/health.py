"""Mailboxes crmsync cannot reach now (access denied, folder missing), in the state database.

One row per unavailable mailbox in the ``cursors`` table, named ``mailbox-unavailable:<address>``,
holding JSON ``{"since": ISO time, "error": text}``: the producer and the workers write it when
the Exchange adapter raises ``MailboxUnavailable``, the producer removes it once the mailbox
answers again, and ``crmsync status`` shows it. No migration: the cursors table exists already.
The error text is crmsync's own message (it names the mailbox and the EWS response code, never
a secret).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

from sqlalchemy import Engine, delete, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from crmsync.adapters.database import read_tx, write_tx
from schemas.state_tables import cursors

PREFIX = "mailbox-unavailable:"


class SqlMailboxHealth:
    """Which mailboxes are unavailable, since when and why (the state engine, SQLite or PostgreSQL)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._insert = pg_insert if engine.dialect.name == "postgresql" else sqlite_insert

    def unavailable(self) -> dict[str, dict]:
        """mailbox -> {"since": aware datetime, "error": str, "updated_at": datetime | None}."""
        with read_tx(self.engine) as conn:
            rows = conn.execute(select(cursors.c.name, cursors.c.value, cursors.c.updated_at)
                                .where(cursors.c.name.startswith(PREFIX, autoescape=True))).all()
        out: dict[str, dict] = {}
        for name, value, updated_at in rows:
            try:
                data = json.loads(value or "{}")
                since = datetime.fromisoformat(data["since"])
            except (ValueError, KeyError, TypeError):
                data, since = {"error": str(value)}, None
            out[name.removeprefix(PREFIX)] = {"since": since, "error": str(data.get("error", "")),
                                              "updated_at": updated_at}
        return out

    def mark_unavailable(self, mailbox: str, error: str, now: datetime | None = None) -> None:
        """Record (or refresh) that ``mailbox`` is unavailable; ``since`` keeps the first time."""
        now = now or datetime.now(UTC)
        name = PREFIX + mailbox
        with write_tx(self.engine) as conn:
            old = conn.execute(select(cursors.c.value).where(cursors.c.name == name)).scalar()
            since = now.isoformat()
            if old:
                try:
                    since = json.loads(old)["since"]
                except (ValueError, KeyError, TypeError):
                    pass
            value = json.dumps({"since": since, "error": error})
            stmt = self._insert(cursors).values(name=name, value=value, updated_at=now)
            conn.execute(stmt.on_conflict_do_update(index_elements=["name"], set_={"value": value, "updated_at": now}))

    def mark_available(self, mailbox: str) -> None:
        with write_tx(self.engine) as conn:
            conn.execute(delete(cursors).where(cursors.c.name == PREFIX + mailbox))
