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
            limit: int = 1000) -> int:
    """Re-publish up to ``limit`` events created before ``now - older_than_s`` and not applied.
    Returns how many were sent."""
    events = store.events_to_redrive(now - timedelta(seconds=older_than_s), limit)
    if not events:
        return 0
    sent = publisher.publish(store, [event.id for event in events])
    log.info("producer.redrive", found=len(events), sent=sent, older_than_s=older_than_s)
    return sent
