"""Re-drive: re-publish events that were not applied in time (DESIGN.md §4).

Redis may lose or never receive a message (crash without AOF, broker down while publishing);
the event row is the record, so anything pending or published-but-unapplied past the deadline
is simply sent again. A duplicate is harmless: the worker acts on current state.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import structlog

from producers.ports import EventStore, Publisher

log = structlog.get_logger(__name__)


def redrive(store: EventStore, publisher: Publisher, older_than_s: float, now: datetime,
            limit: int = 1000, max_rounds: int = 20) -> int:
    """Re-publish events last published (or created) before ``now - older_than_s`` and not
    applied, ``limit`` at a time, up to ``max_rounds`` times. Returns how many were sent."""
    older_than = now - timedelta(seconds=older_than_s)
    total = 0
    for _ in range(max_rounds):
        events = store.events_to_redrive(older_than, limit)
        if not events:
            break
        sent = publisher.publish(store, [event.id for event in events])
        total += sent
        log.info("producer.redrive", found=len(events), sent=sent, older_than_s=older_than_s)
        # Sent events get a new published_at and drop out of the next query; stop when the
        # backlog is drained or the broker refuses (the next re-drive tries again).
        if len(events) < limit or sent < len(events):
            break
    return total
