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
