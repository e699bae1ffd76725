"""Exchange feed: SyncFolderItems changes of one mailbox → event rows (DESIGN.md §5).

The new sync state is committed only in the same state-database transaction as the events it
produced: a crash before that commit replays the same changes from the old state next time.
A sync state the server no longer accepts restarts the feed from a full listing.
"""

from __future__ import annotations

from collections.abc import Iterator

import structlog

from crmsync.adapters.exchange.ews.feed import SyncStateExpired
from crmsync.ports import NewEvent
from producers.ports import EventStore, ExchangeChangeLike, FeedPort

log = structlog.get_logger(__name__)

#: Guard against a feed that keeps saying "more" without moving on.
MAX_ROUNDS_PER_POLL = 1000


def sync_cursor_name(mailbox: str) -> str:
    return f"exchange-sync:{mailbox}"


class ExchangeProducer:
    """One mailbox's sync folder, read through its feed; Exchange is only read."""

    def __init__(self, mailbox: str, feed: FeedPort, store: EventStore) -> None:
        self.mailbox = mailbox
        self.feed = feed
        self.store = store
        self.cursor_name = sync_cursor_name(mailbox)

    def _event(self, change: ExchangeChangeLike) -> NewEvent:
        op = "delete" if change.op == "delete" else "upsert"
        # Event identity (DESIGN.md §3.1): (mailbox, ItemId, ChangeKey | delete).
        version = "delete" if op == "delete" else (change.change_key or "delete")
        return NewEvent(source="exchange", mailbox=self.mailbox, op=op, item_id=change.item_id,
                        dedup_key=f"ex:{self.mailbox}:{change.item_id}:{version}")

    def _changes(self, state: str | None, max_changes: int):
        try:
            return self.feed.changes(state, max_changes)
        except SyncStateExpired:
            if state is None:
                raise
            # A full listing reports every item again as a change; the dedup keys skip those
            # whose ChangeKey already has an event, so only real changes become new events.
            log.warning("producer.sync_state_expired", mailbox=self.mailbox,
                        action="restarting the folder's feed from a full listing")
            return self.feed.changes(None, max_changes)

    def _unsynced(self, changes):
        """Leave out versions the link was synced at: crmsync's own writes, read back (the
        worker would re-read them and write nothing). Event identity is (item, ChangeKey)."""
        upserts = [c.item_id for c in changes if c.op != "delete" and c.change_key]
        synced = self.store.synced_change_keys(self.mailbox, upserts) if upserts else {}
        return [c for c in changes if c.op == "delete" or synced.get(c.item_id) != c.change_key]

    def poll_batches(self, max_changes: int = 500) -> Iterator[list[int]]:
        """Page by page while the feed says "more": each page's events are committed with its
        sync state, then their ids are yielded (so the caller can publish them at once)."""
        total = 0
        for _ in range(MAX_ROUNDS_PER_POLL):
            state = self.store.get_cursor(self.cursor_name)
            changes, new_state, more = self._changes(state, max_changes)
            events = [self._event(change) for change in self._unsynced(changes)]
            if events or new_state != state:
                ids = self.store.add_events(events, cursor=(self.cursor_name, new_state))
                total += len(ids)
                yield ids
            if not more:
                break
        if total:
            log.info("producer.events_created", count=total, source="exchange",
                     mailbox=self.mailbox)

    def poll(self, max_changes: int = 500) -> list[int]:
        """Read changes since the stored sync state until the feed has no more; returns the ids
        of the events created now."""
        return [event_id for ids in self.poll_batches(max_changes) for event_id in ids]
