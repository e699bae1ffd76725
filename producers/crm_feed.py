"""CRM feed: ``crm_changelog`` rows → one event per (mailbox, record) (DESIGN.md §3.1 Fan-out).

Order of effects, so a crash anywhere loses nothing and duplicates nothing:
events committed (deduplicated by changelog id) → changelog rows marked processed. A crash in
between re-reads the same rows next time; their dedup keys make the re-insert a no-op.

The very first sync reads every record's current state, so the changelog rows written before
that read need no events of their own: they are *absorbed* once it is done. Which rows those are
is fixed once, before the first read, and stored (``FirstSyncPosition``); see there why.
"""

from __future__ import annotations

import bisect
import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, replace

import structlog

from crmsync.ports import NewEvent
from producers.ports import ChangelogPort, ChangeRowLike, CrmKeysPort, EventStore

log = structlog.get_logger(__name__)

ACCOUNT_PREFIX = "account:"


#: The cursor holding the ``FirstSyncPosition`` (one per installation, not per mailbox).
FIRST_SYNC_CURSOR = "crm-first-sync"
#: At most this many changelog rows are absorbed by the first sync; any beyond become events.
FIRST_SYNC_MAX_ROWS = 1_000_000


def initial_cursor_name(mailbox: str) -> str:
    return f"crm-initial:{mailbox}"


@dataclass(frozen=True)
class FirstSyncPosition:
    """The changelog rows the very first sync covers: exactly the unprocessed rows that were
    committed and visible when it began, as ranges of ids, and whether they were absorbed yet.

    Why absorbing exactly these rows loses no edit, on SQLite and on PostgreSQL:

    1. The ids are read in one snapshot *before* any mailbox's first sync reads the CRM's keys
       (``all_keys``), and workers read each record later still. A row in the set was committed
       before that snapshot, so every later read sees its change (or a newer one, which has a row
       of its own). Its event would only repeat what the first sync's event already carries.
    2. The set is the rows *visible*, not "every id up to the largest one seen": on PostgreSQL a
       transaction holding a smaller sequence id may commit after a larger one is visible. Such a
       row is not in the set (a range never spans an id that was not visible), so it flows as
       an ordinary event whenever it appears. On SQLite (one writer) the set is simply a prefix.
    3. The position is stored in the state database before the first event of the first sync
       (the first sync's later transactions only add events and "done" cursors), and a producer
       that finds it stored never takes a new one. So a restart mid-first-sync resumes with the
       *old* position: rows written after the first read (for records whose first-sync event may
       already be applied) are not in it and become events. Storing it in a transaction of its own
       is enough: it only has to be durable no later than the first event relying on it; stored
       without events, it still precedes every ``all_keys`` read that follows.
    4. A crash between absorbing (marking the rows processed in the CRM) and recording
       ``absorbed`` repeats an idempotent update. Any subset of the set is as safe as the set,
       so capping it (``FIRST_SYNC_MAX_ROWS``) only turns the excess into ordinary events.
    """

    ranges: tuple[tuple[int, int], ...]      # inclusive, ascending, disjoint
    absorbed: bool = False

    @classmethod
    def of_ids(cls, ids: Iterable[int]) -> FirstSyncPosition:
        ranges: list[tuple[int, int]] = []
        for i in sorted(set(ids)):
            if ranges and ranges[-1][1] == i - 1:
                ranges[-1] = (ranges[-1][0], i)
            else:
                ranges.append((i, i))
        return cls(tuple(ranges))

    def covers(self, changelog_id: int) -> bool:
        at = bisect.bisect_right(self.ranges, (changelog_id, float("inf"))) - 1
        return at >= 0 and self.ranges[at][0] <= changelog_id <= self.ranges[at][1]

    def to_json(self) -> str:
        return json.dumps({"visible": [list(r) for r in self.ranges], "absorbed": self.absorbed},
                          separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> FirstSyncPosition:
        data = json.loads(text)
        return cls(tuple((int(a), int(b)) for a, b in data["visible"]), bool(data["absorbed"]))


class CrmProducer:
    """Turns CRM changes into event rows; the CRM itself is only read."""

    def __init__(self, changelog: ChangelogPort, crm: CrmKeysPort, store: EventStore,
                 mailboxes: Sequence[str], fan_out_contacts: bool = True,
                 batch_size: int = 500, without_contacts: Sequence[str] = (),
                 with_inactive: Sequence[str] = ()) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.changelog = changelog
        self.crm = crm
        self.store = store
        self.mailboxes = list(mailboxes)
        self.fan_out_contacts = fan_out_contacts
        #: Mailboxes configured with secondary_contacts = false: no contact:<id> events.
        self.without_contacts = frozenset(without_contacts)
        #: Mailboxes configured with only_active = false: their first sync lists inactive accounts too.
        self.with_inactive = frozenset(with_inactive)
        self.batch_size = batch_size
        #: True when the last poll read a full batch: more rows are probably waiting.
        self.more = False
        #: Mailboxes whose first sync waits for an administrator (the first-sync gate): no
        #: events for them; their first sync, once it runs, reads every record's current state.
        self.held: set[str] = set()

    # ---------------------------------------------------------------- changelog
    def poll(self, limit: int | None = None) -> list[int]:
        """Read pending changelog rows, commit their events, then mark the rows processed.
        Returns the ids of the events created now."""
        limit = limit or self.batch_size
        rows = list(self.changelog.pending(limit))
        self.more = len(rows) >= limit
        if not rows:
            return []
        events = [event for row in rows for event in self._events_for(row)]
        ids = self.store.add_events(events) if events else []
        # Only after the events are durable: a crash before this line re-reads the rows.
        self.changelog.mark_processed([row.id for row in rows])
        if ids:
            log.info("producer.events_created", count=len(ids), source="crm",
                     mailbox=",".join(self.mailboxes), changelog_rows=len(rows))
        return ids

    def _events_for(self, row: ChangeRowLike) -> list[NewEvent]:
        crm_key = row.crm_key
        op = "delete" if row.op == "delete" else "upsert"
        contact_keys: list[str] = []
        # A secondary contact's Exchange copy carries its account's company name, so an
        # account update concerns its contacts too (their workers re-read and decide).
        if (self.fan_out_contacts and row.op == "update" and row.table_name == "accounts"
                and crm_key.startswith(ACCOUNT_PREFIX)):
            contact_keys = self.crm.contact_keys_of_account(crm_key[len(ACCOUNT_PREFIX):])
        events: list[NewEvent] = []
        for mailbox in self.mailboxes:
            if mailbox in self.held:
                continue
            if mailbox in self.without_contacts:
                if crm_key.startswith("contact:"):
                    continue
                events.append(NewEvent(source="crm", mailbox=mailbox, op=op, crm_key=crm_key,
                                       dedup_key=f"crm:{row.id}:{mailbox}:{crm_key}"))
                continue
            events.append(NewEvent(source="crm", mailbox=mailbox, op=op, crm_key=crm_key,
                                   dedup_key=f"crm:{row.id}:{mailbox}:{crm_key}"))
            events.extend(
                NewEvent(source="crm", mailbox=mailbox, op="upsert", crm_key=contact_key,
                         dedup_key=f"crm:{row.id}:{mailbox}:{contact_key}")
                for contact_key in contact_keys)
        return events

    # ---------------------------------------------------------------- initial sync
    def initial_done(self, mailbox: str) -> bool:
        return self.store.get_cursor(initial_cursor_name(mailbox)) == "done"

    def initial_batches(self, mailbox: str) -> Iterator[list[int]]:
        """The first sync of a mailbox: one upsert per CRM record, in batches, so the caller
        can publish a batch while the next is written. The "done" cursor is committed with
        the last batch; a crash before re-runs it and the dedup keys skip what exists.
        The very first one stores its changelog position before it reads the CRM."""
        if self.initial_done(mailbox):
            return
        self._fix_first_sync_position()
        keys = self.crm.all_keys(inactive=True) if mailbox in self.with_inactive else self.crm.all_keys()
        if mailbox in self.without_contacts:
            keys = [key for key in keys if not key.startswith("contact:")]
        name = initial_cursor_name(mailbox)
        total = 0
        starts = range(0, len(keys), self.batch_size) or [0]
        last = starts[-1]
        for start in starts:
            chunk = keys[start:start + self.batch_size]
            events = [NewEvent(source="crm", mailbox=mailbox, op="upsert", crm_key=key,
                               dedup_key=f"init:{mailbox}:{key}") for key in chunk]
            ids = self.store.add_events(events, cursor=(name, "done") if start == last else None)
            total += len(ids)
            yield ids
        log.info("producer.events_created", count=total, source="crm-initial", mailbox=mailbox,
                 crm_records=len(keys))

    def first_sync_position(self) -> FirstSyncPosition | None:
        stored = self.store.get_cursor(FIRST_SYNC_CURSOR)
        return None if stored is None else FirstSyncPosition.from_json(stored)

    def _fix_first_sync_position(self) -> None:
        """Before the very first ``all_keys`` read: store the changelog rows visible now, unless
        a position is stored already (a resumed first sync keeps its own) or some mailbox had
        its first sync before (then there is nothing to absorb: the rows become events)."""
        if self.store.get_cursor(FIRST_SYNC_CURSOR) is not None:
            return
        if any(self.initial_done(mb) for mb in self.mailboxes):
            return
        position = FirstSyncPosition.of_ids(self.changelog.pending_ids(FIRST_SYNC_MAX_ROWS))
        self.store.add_events([], cursor=(FIRST_SYNC_CURSOR, position.to_json()))
        log.info("producer.first_sync_position", changelog_ranges=len(position.ranges),
                 changelog_rows=sum(b - a + 1 for a, b in position.ranges))

    def covered_by_first_sync(self, limit: int = FIRST_SYNC_MAX_ROWS) -> list[int]:
        """Pending changelog rows within the first sync's position (not absorbed yet)."""
        position = self.first_sync_position()
        if position is None or position.absorbed:
            return []
        return [i for i in self.changelog.pending_ids(limit) if position.covers(i)]

    def absorb_first_sync(self) -> int:
        """Once every mailbox's first sync is done, mark the rows it covers processed without
        events, then record that. Returns how many rows were absorbed now."""
        if not all(self.initial_done(mb) for mb in self.mailboxes if mb not in self.held):
            return 0
        position = self.first_sync_position()
        if position is None or position.absorbed:
            return 0
        covered = self.covered_by_first_sync()
        if covered:
            self.changelog.mark_processed(covered)
        self.store.add_events([], cursor=(FIRST_SYNC_CURSOR,
                                          replace(position, absorbed=True).to_json()))
        log.info("producer.first_sync_absorbed", changelog_rows=len(covered))
        return len(covered)
