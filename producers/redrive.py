"""Re-drive: re-publish events that were not applied in time (DESIGN.md §4).

Redis may lose or never receive a message (crash without AOF, broker down while publishing);
the event row is the record, so anything pending or published-but-unapplied past its due time
(its publish, or its retry's ETA) is simply sent again, and after a Redis restart everything
sent to the old server is sent again as soon as it is due. A duplicate is harmless: the worker
acts on current state under a fenced lease.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import structlog

from producers.ports import EventStore, Publisher

log = structlog.get_logger(__name__)


def redrive(store: EventStore, publisher: Publisher, older_than_s: float, now: datetime,
            limit: int = 1000, max_rounds: int = 20, *, lost_before: datetime | None = None) -> int:
    """Re-publish unapplied events whose delivery was due before ``now - older_than_s`` — and,
    with ``lost_before`` (when the broker was seen to have restarted), those sent before it that
    are due by ``now`` — ``limit`` at a time, up to ``max_rounds`` times. Returns how many were
    sent."""
    older_than = now - timedelta(seconds=older_than_s)
    total = 0
    for _ in range(max_rounds):
        events = store.events_to_redrive(older_than, limit, lost_before=lost_before, now=now)
        if not events:
            break
        sent = publisher.publish(store, [event.id for event in events])
        total += sent
        log.info("producer.redrive", found=len(events), sent=sent, older_than_s=older_than_s,
                 broker_restarted=lost_before is not None)
        # Sent events get a new published_at and drop out of the next query; stop when the
        # backlog is drained or the broker refuses (the next re-drive tries again).
        if len(events) < limit or sent < len(events):
            break
    return total
