"""The review queue of new records (issue 8) in the state database: the SQLAlchemy adapter of
``crmsync.ports.ReviewQueue``. One row per (mailbox, side, record key), so a replayed event
finds the row it held before instead of holding the record twice."""

from __future__ import annotations

import json
from datetime import datetime

from sqlalchemy import Engine, func, insert, select, update
from sqlalchemy.exc import IntegrityError

from crmsync.adapters.database import read_tx, write_tx
from crmsync.ports import ReviewItem
from schemas.state_tables import review_items


def _item(m) -> ReviewItem:
    return ReviewItem(id=m["id"], mailbox=m["mailbox"], side=m["side"], record_key=m["record_key"], name=m["name"],
                      candidates=tuple(json.loads(m["candidates_json"])), reason=m["reason"], status=m["status"],
                      chosen=m["chosen"], decided_by=m["decided_by"], held_at=m["held_at"])


class SqlReviewQueue:
    """``ReviewQueue`` on the state engine (SQLite or PostgreSQL)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def hold(self, mailbox: str, side: str, record_key: str, name: str, candidates: list[dict], reason: str,
             now: datetime) -> ReviewItem:
        t = review_items
        where = (t.c.mailbox == mailbox, t.c.side == side, t.c.record_key == record_key)
        values = {"name": name, "candidates_json": json.dumps(candidates, ensure_ascii=False), "reason": reason}
        try:
            with write_tx(self.engine) as conn:
                done = conn.execute(update(t).where(*where, t.c.status == "open").values(**values))
                if not done.rowcount and conn.execute(select(t.c.id).where(*where)).first() is None:
                    conn.execute(insert(t).values(mailbox=mailbox, side=side, record_key=record_key, status="open",
                                                  held_at=now, **values))
        except IntegrityError:
            pass   # another worker held it at the same moment: its row stands
        found = self.for_record(mailbox, side, record_key)
        assert found is not None
        return found

    def for_record(self, mailbox: str, side: str, record_key: str) -> ReviewItem | None:
        t = review_items
        with read_tx(self.engine) as conn:
            row = conn.execute(select(t).where(t.c.mailbox == mailbox, t.c.side == side,
                                               t.c.record_key == record_key)).first()
        return _item(row._mapping) if row is not None else None

    def get(self, item_id: int) -> ReviewItem | None:
        with read_tx(self.engine) as conn:
            row = conn.execute(select(review_items).where(review_items.c.id == item_id)).first()
        return _item(row._mapping) if row is not None else None

    def find(self, mailbox: str | None = None, statuses: tuple[str, ...] = ("open",)) -> list[ReviewItem]:
        t = review_items
        query = select(t).where(t.c.status.in_(statuses)).order_by(t.c.id)
        if mailbox is not None:
            query = query.where(t.c.mailbox == mailbox)
        with read_tx(self.engine) as conn:
            return [_item(r._mapping) for r in conn.execute(query)]

    def decide(self, item_id: int, status: str, chosen: str | None, decided_by: str, now: datetime) -> bool:
        if status not in ("accepted", "rejected"):
            raise ValueError(f"review item {item_id}: a decision is accepted or rejected, not {status!r}")
        t = review_items
        with write_tx(self.engine) as conn:
            done = conn.execute(update(t).where(t.c.id == item_id, t.c.status == "open")
                                .values(status=status, chosen=chosen, decided_by=decided_by, decided_at=now))
            return bool(done.rowcount)

    def counts(self) -> dict[str, int]:
        t = review_items
        query = select(t.c.mailbox, func.count()).where(t.c.status == "open").group_by(t.c.mailbox)
        with read_tx(self.engine) as conn:
            return {mailbox: n for mailbox, n in conn.execute(query)}
