"""What waits for a person, in the state database: held deletes (the delete brake) and held
conflicts (the manual conflict queue). SQLAlchemy adapters of
``crmsync.ports.HeldDeletes`` and ``HeldConflicts``."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Engine, delete, func, insert, select, update

from crmsync.adapters.database import read_tx, write_tx
from crmsync.ports import HeldConflict, HeldDelete
from schemas.state_tables import held_conflicts, held_deletes, links

#: What the brake counts in its window: deletes that crossed under it, and those it holds
#: (approved ones are not counted again: an administrator already let them through).
COUNTED = ("passed", "held")


def _row(m) -> HeldDelete:
    return HeldDelete(id=m["id"], mailbox=m["mailbox"], crm_key=m["crm_key"], side=m["side"],
                      status=m["status"], noted_at=m["noted_at"], reason=m["reason"])


class SqlHeldDeletes:
    """``HeldDeletes`` on the state engine (SQLite or PostgreSQL)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def note(self, mailbox: str, entries: list[tuple[str, str]], status: str, now: datetime,
             reason: str | None = None) -> list[int]:
        if not entries:
            return []
        with write_tx(self.engine) as conn:
            return [conn.execute(insert(held_deletes).values(mailbox=mailbox, crm_key=key, side=side, status=status,
                                                             noted_at=now, reason=reason).returning(held_deletes.c.id)).scalar_one()
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


def _conflict(m) -> HeldConflict:
    return HeldConflict(id=m["id"], mailbox=m["mailbox"], crm_key=m["crm_key"], field=m["field"],
                        crm_value=m["crm_value"], exchange_value=m["exchange_value"], base_value=m["base_value"],
                        status=m["status"], value=m["value"], decided_by=m["decided_by"], held_at=m["held_at"])


class SqlHeldConflicts:
    """``HeldConflicts`` on the state engine (SQLite or PostgreSQL)."""

    OPEN = ("held", "resolved")

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def hold(self, mailbox: str, crm_key: str, fields: list[tuple[str, str | None, str | None, str | None]],
             now: datetime) -> None:
        if not fields:
            return
        t = held_conflicts
        with write_tx(self.engine) as conn:
            for name, crm_value, exchange_value, base_value in fields:
                values = {"crm_value": crm_value, "exchange_value": exchange_value, "base_value": base_value}
                done = conn.execute(update(t).where(t.c.mailbox == mailbox, t.c.crm_key == crm_key, t.c.field == name,
                                                    t.c.status == "held").values(**values))
                if not done.rowcount:
                    conn.execute(insert(t).values(mailbox=mailbox, crm_key=crm_key, field=name, status="held",
                                                  held_at=now, **values))

    def open_for(self, mailbox: str, crm_key: str) -> dict[str, HeldConflict]:
        t = held_conflicts
        query = select(t).where(t.c.mailbox == mailbox, t.c.crm_key == crm_key, t.c.status.in_(self.OPEN)).order_by(t.c.id)
        with read_tx(self.engine) as conn:
            return {row.field: row for row in (_conflict(r._mapping) for r in conn.execute(query))}

    def get(self, conflict_id: int) -> HeldConflict | None:
        with read_tx(self.engine) as conn:
            row = conn.execute(select(held_conflicts).where(held_conflicts.c.id == conflict_id)).first()
        return _conflict(row._mapping) if row is not None else None

    def find(self, mailbox: str | None = None, statuses: tuple[str, ...] = ("held",)) -> list[HeldConflict]:
        t = held_conflicts
        query = select(t).where(t.c.status.in_(statuses)).order_by(t.c.id)
        if mailbox is not None:
            query = query.where(t.c.mailbox == mailbox)
        with read_tx(self.engine) as conn:
            return [_conflict(r._mapping) for r in conn.execute(query)]

    def resolve(self, conflict_id: int, value: str | None, decided_by: str, now: datetime) -> bool:
        t = held_conflicts
        with write_tx(self.engine) as conn:
            done = conn.execute(update(t).where(t.c.id == conflict_id, t.c.status == "held")
                                .values(status="resolved", value=value, decided_by=decided_by, decided_at=now))
            return bool(done.rowcount)

    def forget(self, mailbox: str, crm_key: str) -> None:
        with write_tx(self.engine) as conn:
            conn.execute(delete(held_conflicts).where(held_conflicts.c.mailbox == mailbox,
                                                      held_conflicts.c.crm_key == crm_key))

    def mark_applied(self, ids: list[int], now: datetime) -> None:
        if not ids:
            return
        with write_tx(self.engine) as conn:
            conn.execute(update(held_conflicts).where(held_conflicts.c.id.in_(ids),
                                                      held_conflicts.c.status == "resolved").values(status="applied"))
