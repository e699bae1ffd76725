"""CRM feed: ``crm_changelog`` rows → one event per (mailbox, record) (DESIGN.md §3.1 Fan-out).

Order of effects, so a crash anywhere loses nothing and duplicates nothing:
events committed (deduplicated by changelog id) → changelog rows marked processed. A crash in
between re-reads the same rows next time; their dedup keys make the re-insert a no-op.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import structlog

from crmsync.ports import NewEvent
from producers.ports import ChangelogPort, ChangeRowLike, CrmKeysPort, EventStore

log = structlog.get_logger(__name__)

ACCOUNT_PREFIX = "account:"


def initial_cursor_name(mailbox: str) -> str:
    return f"crm-initial:{mailbox}"


class CrmProducer:
    """Turns CRM changes into event rows; the CRM itself is only read."""

    def __init__(self, changelog: ChangelogPort, crm: CrmKeysPort, store: EventStore,
                 mailboxes: Sequence[str], fan_out_contacts: bool = True,
                 batch_size: int = 500, without_contacts: Sequence[str] = ()) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.changelog = changelog
        self.crm = crm
        self.store = store
        self.mailboxes = list(mailboxes)
        self.fan_out_contacts = fan_out_contacts
        #: Mailboxes configured with secondary_contacts = false: no contact:<id> events.
        self.without_contacts = frozenset(without_contacts)
        self.batch_size = batch_size
        #: True when the last poll read a full batch: more rows are probably waiting.
        self.more = False

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
        the last batch; a crash before re-runs it and the dedup keys skip what exists."""
        if self.initial_done(mailbox):
            return
        keys = self.crm.all_keys()
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

    def covered_by_first_sync(self, limit: int = 1_000_000) -> list[int]:
        """Changelog rows pending before the very first initial sync (no mailbox has one yet).
        The initial sync reads every record's current state after them, so once it is done for
        every mailbox they can be marked processed instead of becoming a second event each."""
        if any(self.initial_done(mb) for mb in self.mailboxes):
            return []
        return [row.id for row in self.changelog.pending(limit)]
