"""Re-drive: re-publish events that were not applied in time (DESIGN.md §4).

Redis may lose or never receive a message (crash without AOF, broker down while publishing);
the event row is the record, so anything pending or published-but-unapplied past its due time
(its publish, or its retry's ETA) is simply sent again, and after a Redis restart everything
sent to the old server is sent again as soon as it is due. A duplicate is harmless: the worker
acts on current state under a fenced lease.
"""

from __future__ import annotations

from dataclasses import dataclass
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
        # beat's maintenance worker runs this (never the producer): its one line per batch
        log.info("maintenance.redrive_batch", found=len(events), sent=sent, older_than_s=older_than_s,
                 broker_restarted=lost_before is not None)
        # Sent events get a new published_at and drop out of the next query; stop when the
        # backlog is drained or the broker refuses (the next re-drive tries again).
        if len(events) < limit or sent < len(events):
            break
    return total


#: The cursor holding the broker's identity (Redis ``run_id``) seen last: a new one means the
#: server restarted, and whatever it held before is gone.
BROKER_CURSOR = "broker:run-id"
#: When that restart was noticed (ISO time): unfinished events sent before it are re-sent once due.
LOST_BEFORE_CURSOR = "broker:lost-before"


@dataclass(frozen=True)
class RedriveReport:
    """What one re-drive round found: events re-sent, and whether the broker had restarted."""

    sent: int
    broker_restarted: bool
    lost_before: datetime | None


class Redriver:
    """One re-drive round: notice a restarted broker, then re-send what is overdue (or was lost
    with the old server). It keeps nothing in memory between rounds (the broker identity and
    the time of its last restart are cursors in the state database), so any process may run
    a round: ``crmsync beat`` schedules one every ``sync.redrive_check_s`` on the maintenance
    queue."""

    def __init__(self, store: EventStore, publisher: Publisher, redrive_after_s: float,
                 limit: int = 1000) -> None:
        self.store = store
        self.publisher = publisher
        self.redrive_after_s = redrive_after_s
        self.limit = limit

    def _notice_broker_restart(self, now: datetime) -> bool:
        """Compare the broker's identity with the last one seen; a new one loses every message
        sent before ``now``. True when a restart was noticed now."""
        identity = getattr(self.publisher, "broker_identity", None)
        current = identity() if identity is not None else None
        if current is None:       # unreachable, or a broker that cannot tell
            return False
        seen = self.store.get_cursor(BROKER_CURSOR)
        if current == seen:
            return False
        if seen is not None:      # (none seen yet: a first start; re-sending what is due is safe)
            log.warning("redrive.broker_restarted", action="re-driving every unfinished event sent before now")
        self.store.add_events([], cursor=(LOST_BEFORE_CURSOR, now.isoformat()))
        self.store.add_events([], cursor=(BROKER_CURSOR, current))
        return seen is not None

    def run_once(self, now: datetime) -> RedriveReport:
        restarted = self._notice_broker_restart(now)
        stored = self.store.get_cursor(LOST_BEFORE_CURSOR)
        lost_before = datetime.fromisoformat(stored) if stored else None
        sent = redrive(self.store, self.publisher, self.redrive_after_s, now, self.limit,
                       lost_before=lost_before)
        return RedriveReport(sent=sent, broker_restarted=restarted, lost_before=lost_before)
