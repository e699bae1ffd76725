"""Read-only views for ``crmsync status`` and the demo."""

from __future__ import annotations


def event_totals(engine, max_id: bool = False) -> dict[str, int]:
    """Events per status (and, with ``max_id``, the highest event id as ``max_id``)."""
    from sqlalchemy import func, select

    from schemas.state_tables import events

    with engine.connect() as conn:
        if max_id:
            return {"max_id": conn.execute(select(func.max(events.c.id))).scalar() or 0}
        rows = conn.execute(select(events.c.status, func.count()).group_by(events.c.status))
        return {status: count for status, count in rows}


def applied_events_after(engine, after_id: int, limit: int = 200) -> list[dict]:
    """Finished events (applied or dead) with an id above ``after_id``, oldest first; an
    Exchange event is named by the CRM key of its link when it has one."""
    from sqlalchemy import func, select

    from schemas.state_tables import events, links

    linked = links.alias("l")
    on_item = (linked.c.mailbox == events.c.mailbox) & (linked.c.item_id == events.c.item_id)
    query = (select(events.c.id, events.c.source, events.c.mailbox, events.c.op,
                    func.coalesce(events.c.crm_key, linked.c.crm_key).label("crm_key"),
                    events.c.item_id, events.c.status, events.c.outcome, events.c.last_error)
             .select_from(events.outerjoin(linked, on_item))
             .where(events.c.id > after_id, events.c.status.in_(("applied", "dead")))
             .order_by(events.c.id).limit(limit))
    with engine.connect() as conn:
        return [dict(row._mapping) for row in conn.execute(query)]


def attention(engine) -> dict[str, dict]:
    """Per mailbox, what may need a person: ``retrying`` (unfinished events that already failed
    at least once), ``failed`` (events in a ``failed`` status, where the event log has one) and
    ``oldest_unfinished`` (aware UTC creation time of the oldest event not yet applied or dead)."""
    from datetime import UTC, datetime

    from sqlalchemy import func, select

    from schemas.state_tables import events

    unfinished = events.c.status.in_(("pending", "published", "failed"))
    query = (select(events.c.mailbox,
                    func.count().filter(unfinished & (events.c.attempts > 0) & (events.c.status != "failed")),
                    func.count().filter(events.c.status == "failed"),
                    func.min(events.c.created_at).filter(unfinished))
             .group_by(events.c.mailbox))
    out: dict[str, dict] = {}
    with engine.connect() as conn:
        for mailbox, retrying, failed, oldest in conn.execute(query):
            if isinstance(oldest, str):   # MIN() over a TypeDecorator column comes back untyped on SQLite
                oldest = datetime.fromisoformat(oldest)
            if oldest is not None:
                oldest = oldest.replace(tzinfo=UTC) if oldest.tzinfo is None else oldest.astimezone(UTC)
            out[mailbox] = {"retrying": int(retrying or 0), "failed": int(failed or 0), "oldest_unfinished": oldest}
    return out


SIDES = {"crm": "crm->exchange", "exchange": "exchange->crm"}


def current_lag(engine, now) -> dict[str, dict[str, float]]:
    """Per mailbox and side (``crm->exchange``: changes made in the CRM, ``exchange->crm``:
    changes made in Exchange), the age in seconds at ``now`` of the oldest event not yet applied
    (pending, published or failed; a dead event waits for a person and is counted apart). A side
    with nothing waiting has lag 0; every mailbox with events has both sides."""
    from datetime import UTC, datetime

    from sqlalchemy import func, select

    from schemas.state_tables import events

    unfinished = events.c.status.in_(("pending", "published", "failed"))
    query = (select(events.c.mailbox, events.c.source, func.min(events.c.created_at).filter(unfinished))
             .group_by(events.c.mailbox, events.c.source))
    out: dict[str, dict[str, float]] = {}
    with engine.connect() as conn:
        for mailbox, source, oldest in conn.execute(query):
            sides = out.setdefault(mailbox, dict.fromkeys(SIDES.values(), 0.0))
            if oldest is None or source not in SIDES:
                continue
            if isinstance(oldest, str):   # MIN() over a TypeDecorator column comes back untyped on SQLite
                oldest = datetime.fromisoformat(oldest)
            oldest = oldest.replace(tzinfo=UTC) if oldest.tzinfo is None else oldest.astimezone(UTC)
            sides[SIDES[source]] = max(0.0, (now - oldest).total_seconds())
    return out
