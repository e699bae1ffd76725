"""The delete brake's record in the state database (``held_deletes``): SQLAlchemy adapter of
``crmsync.ports.HeldDeletes``."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Engine, func, insert, select, update

from crmsync.adapters.database import read_tx, write_tx
from crmsync.ports import HeldDelete
from schemas.state_tables import held_deletes, links

#: What the brake counts in its window: deletes that crossed under it, and those it holds
#: (approved ones are not counted again: an administrator already let them through).
COUNTED = ("passed", "held")


def _row(m) -> HeldDelete:
    return HeldDelete(id=m["id"], mailbox=m["mailbox"], crm_key=m["crm_key"], side=m["side"],
                      status=m["status"], noted_at=m["noted_at"])


class SqlHeldDeletes:
    """``HeldDeletes`` on the state engine (SQLite or PostgreSQL)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def note(self, mailbox: str, entries: list[tuple[str, str]], status: str, now: datetime) -> list[int]:
        if not entries:
            return []
        with write_tx(self.engine) as conn:
            return [conn.execute(insert(held_deletes).values(mailbox=mailbox, crm_key=key, side=side, status=status,
                                                             noted_at=now).returning(held_deletes.c.id)).scalar_one()
                    for key, side in entries]

    def count_since(self, mailbox: str, since: datetime) -> int:
        query = select(func.count()).select_from(held_deletes).where(
            held_deletes.c.mailbox == mailbox, held_deletes.c.noted_at >= since,
            held_deletes.c.status.in_(COUNTED))
        with read_tx(self.engine) as conn:
            return int(conn.execute(query).scalar_one())

    def latest(self, mailbox: str, crm_keys: list[str]) -> dict[str, HeldDelete]:
        if not crm_keys:
            return {}
        query = (select(held_deletes).where(held_deletes.c.mailbox == mailbox, held_deletes.c.crm_key.in_(crm_keys))
                 .order_by(held_deletes.c.id))
        with read_tx(self.engine) as conn:
            return {row.crm_key: row for row in (_row(r._mapping) for r in conn.execute(query))}

    def find(self, mailbox: str | None = None, statuses: tuple[str, ...] = ("held",)) -> list[HeldDelete]:
        query = select(held_deletes).where(held_deletes.c.status.in_(statuses)).order_by(held_deletes.c.id)
        if mailbox is not None:
            query = query.where(held_deletes.c.mailbox == mailbox)
        with read_tx(self.engine) as conn:
            return [_row(r._mapping) for r in conn.execute(query)]

    def set_status(self, ids: list[int], status: str, now: datetime, *, only_from: tuple[str, ...] = ()) -> list[int]:
        if not ids:
            return []
        query = update(held_deletes).where(held_deletes.c.id.in_(ids))
        if only_from:
            query = query.where(held_deletes.c.status.in_(only_from))
        with write_tx(self.engine) as conn:
            moved = conn.execute(query.values(status=status, decided_at=now).returning(held_deletes.c.id))
            return sorted(r[0] for r in moved)

    def synced_links(self, mailbox: str) -> int:
        query = select(func.count()).select_from(links).where(
            links.c.mailbox == mailbox, links.c.base_json.is_not(None), links.c.deleted.is_(False))
        with read_tx(self.engine) as conn:
            return int(conn.execute(query).scalar_one())
