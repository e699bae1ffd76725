"""The two sides as ports (cosmicpython): the only shapes the sync service sees.

Adapters (SQLAlchemy for the CRM, exchangelib for Exchange) and in-memory fakes implement these;
no adapter type crosses this boundary.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal, Protocol

from schemas.canonical import CanonicalContact

if TYPE_CHECKING:
    from crmsync.core.matching import SearchTerms

Changes = Mapping[str, "str | None"]


@dataclass(frozen=True)
class CrmRecord:
    """A CRM account or secondary contact as read now."""

    key: str                      # account:<account_no> | contact:<id>
    record: CanonicalContact
    version: str                  # opaque token; changes whenever the row changes
    active: bool = True           # accounts.is_active (contacts are always active)
    modified_at: datetime | None = None
    account_key: str | None = None  # for a secondary contact: its account's key


@dataclass(frozen=True)
class ExchangeRecord:
    """An Exchange contact in one mailbox's sync folder, as read now."""

    item_id: str
    change_key: str
    record: CanonicalContact
    crm_key: str | None = None    # the key stamped in the crmsync extended property
    private: bool = False         # Sensitivity is in the private set: never read into the CRM
    modified_at: datetime | None = None


class CrmSide(Protocol):
    def read(self, key: str) -> CrmRecord | None: ...

    def update(self, key: str, changes: Changes, expect: str) -> CrmRecord:
        """Write ``changes`` if the row still has version ``expect``; else raise Stale."""

    def read_many(self, keys: list[str]) -> dict[str, CrmRecord]:
        """``read`` for a batch; missing keys are absent from the result."""

    def create_account(self, account_no: str, values: Changes) -> CrmRecord:
        """Create an account with this account_no, or return the existing one (idempotent)."""

    def deactivate(self, key: str, expect: str | None) -> CrmRecord | None:
        """Set is_active = false (never a hard delete); None if the row is gone. Stale when
        ``expect`` is given and the row has another version."""

    def delete_account(self, key: str, expect: str | None) -> Literal["deleted", "deactivated", "gone"]:
        """Delete an account row (``on_exchange_delete = "delete"``); Stale on another version.
        An account that still has secondary contacts is deactivated instead ("deactivated")."""

    def reactivate(self, key: str, expect: str) -> CrmRecord:
        """Set is_active = true on an account (its contact was restored in Outlook); Stale on
        another version."""


class ExchangeSide(Protocol):
    mailbox: str

    def read(self, item_id: str) -> ExchangeRecord | None: ...

    def find_by_crm_key(self, crm_key: str) -> ExchangeRecord | None: ...

    def read_many(self, item_ids: list[str]) -> list[ExchangeRecord | None]:
        """``read`` for a batch, in the order of ``item_ids``."""

    def find_many_by_crm_key(self, crm_keys: list[str]) -> dict[str, ExchangeRecord]: ...

    def find_similar(self, emails: list[str], surnames: list[str], limit: int = 200) -> list[ExchangeRecord]:
        """Contacts carrying one of ``emails`` or one of ``surnames`` (case-insensitive), at most
        ``limit``: a bounded look-up of candidates, never a read of the whole folder."""

    def search(self, terms: SearchTerms, limit: int = 200) -> list[ExchangeRecord]:
        """Contacts a person's search may mean (name, company, e-mail, phone; a superset of
        ``matching.search_fields``), at most ``limit``, found by the server (never a read of the
        whole folder); private ones come back marked private, with an empty record. Where the
        server cannot search a field (Graph: a part of an e-mail address, business and home
        phones), the adapter says so and finds fewer."""

    def find_deleted_by_crm_key(self, crm_key: str) -> ExchangeRecord | None:
        """The contact stamped with ``crm_key`` in the mailbox's Deleted Items, if any."""

    def restore(self, item_id: str) -> ExchangeRecord:
        """Move a contact from Deleted Items back into the sync folder (it may get a new id)."""

    def create_many(self, entries: list[tuple[str, Changes]]) -> list[ExchangeRecord | Exception]:
        """Bulk create, stamped; per entry the record or that entry's error, in order."""

    def create(self, crm_key: str, values: Changes) -> ExchangeRecord:
        """Create a contact stamped with ``crm_key`` in the mailbox's sync folder."""

    def update(self, item_id: str, changes: Changes, expect_change_key: str,
               crm_key: str | None = None) -> ExchangeRecord:
        """Write with ConflictResolution=NeverOverwrite; Stale on a changed ChangeKey.
        A non-None ``crm_key`` also (re)stamps the extended property."""

    def delete(self, item_id: str, change_key: str, hard: bool = False) -> None:
        """MoveToDeletedItems (recoverable by the mailbox owner; ``hard``: HardDelete, for good)
        iff the contact still has ``change_key``; Stale when it changed, nothing when it is
        already gone."""

    def folder_state(self) -> Literal["ok", "empty", "missing"]:
        """Whether the sync folder holds contacts ("ok"), none ("empty"), or is gone ("missing":
        deleted, or no longer reachable by its id) — the empty-folder guard asks before letting
        deletes read from this folder cross."""


# --------------------------------------------------------------------------- state database

@dataclass(frozen=True)
class Link:
    """One synced pair: a CRM record and its Exchange contact in one mailbox (DESIGN.md §3)."""

    id: int
    mailbox: str
    crm_key: str
    item_id: str | None           # None until the Exchange contact exists
    change_key: str | None
    crm_version: str | None
    base: CanonicalContact | None  # the record as last synced; None before the first sync
    crm_hash: str | None
    exchange_hash: str | None
    lease_token: str | None = None
    deleted: bool = False         # the pair was deleted on a side and the delete propagated
    synced_at: datetime | None = None
    fence: int = 0                # grows on every lease acquisition (take-overs included)
    private: bool = False         # the contact turned Private: unlinked, no data kept
    lease_until: datetime | None = None


@dataclass(frozen=True)
class ConflictRecord:
    """A field changed on both sides to different values, and how the policy decided it;
    written together with the link commit, so a lost race records nothing."""

    field: str
    crm_value: str | None
    exchange_value: str | None
    chosen: str                   # crm | exchange


@dataclass(frozen=True)
class FieldWrite:
    """One field crmsync wrote on one side (old and new raw value), for the event log; like
    conflicts, written with the link commit. ``field`` None: a whole-record act (a delete)."""

    side: str                     # crm | exchange
    field: str | None
    old: str | None
    new: str | None


@dataclass(frozen=True)
class NewEvent:
    """A change seen by a producer, before it has an id."""

    source: str                   # "crm" | "exchange"
    mailbox: str
    op: str                       # "upsert" | "delete"
    dedup_key: str                # crm: "crm:<changelog id>:<mailbox>"; exchange: "ex:<mailbox>:<item_id>:<change_key|delete>"
    crm_key: str | None = None
    item_id: str | None = None


@dataclass(frozen=True)
class Event:
    id: int
    source: str
    mailbox: str
    op: str
    crm_key: str | None
    item_id: str | None
    status: str                   # pending | published | applied | dead
    attempts: int
    last_error: str | None
    created_at: datetime


@dataclass(frozen=True)
class LinkUpdate:
    """What a worker commits for a link once both sides hold the merged record."""

    item_id: str | None
    change_key: str | None
    crm_version: str | None
    base: CanonicalContact | None
    crm_hash: str | None
    exchange_hash: str | None
    deleted: bool = False
    private: bool = False
    conflicts: tuple[ConflictRecord, ...] = ()
    writes: tuple[FieldWrite, ...] = ()      # what this apply wrote (the event log's diffs)
    action: str | None = None                # the outcome, e.g. "updated"
    event_ids: tuple[int, ...] = ()          # the events this commit applied


class StateStore(Protocol):
    """Links, events, cursors and conflicts: the durable record of the sync (DESIGN.md §1)."""

    # events -------------------------------------------------------------------------------
    def add_events(self, events: list[NewEvent], cursor: tuple[str, str] | None = None) -> list[int]:
        """Insert events (duplicates by dedup_key are skipped) and, in the same transaction,
        set the named cursor. Returns the ids of the events inserted now."""

    def get_event(self, event_id: int) -> Event | None: ...

    def get_events(self, event_ids: list[int]) -> dict[int, Event]:
        """The events found among ``event_ids``, by id."""

    def mark_published(self, event_ids: list[int]) -> None: ...

    def mark_applied(self, event_id: int, outcome: str | None = None) -> None:
        """Done; ``outcome`` says what the worker did (updated, noop, created-exchange, ...)."""

    def record_attempt(self, event_id: int, error: str | None) -> int:
        """Count one more attempt (and its error); returns the attempts so far."""

    def mark_dead(self, event_id: int, error: str) -> None: ...

    def events_to_redrive(self, older_than: datetime, limit: int, *,
                          lost_before: datetime | None = None,
                          now: datetime | None = None) -> list[Event]:
        """Pending or published events whose delivery (publish or retry ETA) was due before
        ``older_than``; with ``lost_before``, also those sent before it and due by ``now``
        (the broker lost its messages)."""

    def get_cursor(self, name: str) -> str | None: ...

    # links --------------------------------------------------------------------------------
    def find_link(self, mailbox: str, *, crm_key: str | None = None,
                  item_id: str | None = None) -> Link | None: ...

    def links_for_mailbox(self, mailbox: str) -> list[Link]: ...

    def acquire(self, mailbox: str, crm_key: str, item_id: str | None, owner: str,
                ttl_seconds: float, now: datetime) -> Link:
        """Lease the link (creating it when missing) with a compare-and-set; LeaseTaken while
        any unexpired lease is held (the same owner included: an owner is one execution). The
        returned link carries a new lease token and a fence one higher than before."""

    def commit(self, link: Link, update: LinkUpdate, now: datetime) -> Link:
        """Write the new link state (and its conflicts) iff ``link.lease_token`` still holds the
        lease; Stale if not. Releases the lease."""

    def release(self, link: Link) -> None: ...

    # batches (one transaction each) ---------------------------------------------------------
    def acquire_many(self, mailbox: str, wanted: list[tuple[str, str | None]], owner: str,
                     ttl_seconds: float, now: datetime
                     ) -> tuple[dict[str, Link], dict[str, str]]:
        """Leased links by crm_key, and why each other key could not be leased now."""

    def commit_many(self, commits: list[tuple[Link, LinkUpdate]], now: datetime) -> dict[str, str]:
        """Commit each; returns why each failed crm_key failed (the others are committed)."""

    def release_many(self, links: list[Link]) -> None: ...

    def renew_many(self, links: list[Link], ttl_seconds: float, now: datetime) -> dict[str, Link]:
        """Extend each lease still held under its token to ``now + ttl``; returns the renewed
        links by crm_key (a key missing from the result lost its lease to a take-over)."""

    def mark_applied_many(self, outcomes: Mapping[int, str | None]) -> None: ...

    def mark_retrying(self, event_ids: list[int], now: datetime,
                      due_at: datetime | None = None) -> None:
        """A retry of these events was sent ``now`` to run at ``due_at`` (default now): the
        re-drive leaves them alone until that is overdue."""


@dataclass(frozen=True)
class HeldDelete:
    """A delete noted by the delete brake (see crmsync.core.deletes)."""

    id: int
    mailbox: str
    crm_key: str
    side: str            # where the delete would land: crm | exchange
    status: str          # passed | held | approved | applied | discarded | unlinked | resolved
    noted_at: datetime
    reason: str | None = None   # why held: brake | folder-empty | folder-missing (None: brake)


class HeldDeletes(Protocol):
    """The brake's record of deletes, per mailbox, in the state database."""

    def note(self, mailbox: str, entries: list[tuple[str, str]], status: str, now: datetime,
             reason: str | None = None) -> list[int]:
        """Record (crm_key, side) deletes with ``status`` (and, for held ones, why); their ids, in order."""

    def count_since(self, mailbox: str, since: datetime) -> int:
        """Deletes noted for ``mailbox`` at or after ``since`` that crossed or wait to
        under the brake or are held by it (passed, held)."""

    def latest(self, mailbox: str, crm_keys: list[str]) -> dict[str, HeldDelete]:
        """Per key, its most recent noted delete (absent: none)."""

    def find(self, mailbox: str | None = None, statuses: tuple[str, ...] = ("held",)) -> list[HeldDelete]: ...

    def set_status(self, ids: list[int], status: str, now: datetime, *, only_from: tuple[str, ...] = ()) -> list[int]:
        """Move these rows to ``status`` (only rows now in ``only_from``, when given); the ids moved."""

    def synced_links(self, mailbox: str) -> int:
        """How many links of the mailbox are synced (have a base) and not deleted."""


@dataclass(frozen=True)
class HeldConflict:
    """A field held by ``conflict_policy = "manual"``: both values, and a person's decision."""

    id: int
    mailbox: str
    crm_key: str
    field: str
    crm_value: str | None
    exchange_value: str | None
    base_value: str | None
    status: str                   # held | resolved | applied
    value: str | None = None      # the decided value (resolved, applied)
    decided_by: str | None = None
    held_at: datetime | None = None


class HeldConflicts(Protocol):
    """The manual conflict queue in the state database."""

    def hold(self, mailbox: str, crm_key: str, fields: list[tuple[str, str | None, str | None, str | None]],
             now: datetime) -> None:
        """Hold (field, crm value, exchange value, base value): one open row per field, whose
        values are refreshed when it is held again."""

    def open_for(self, mailbox: str, crm_key: str) -> dict[str, HeldConflict]:
        """Per field, its row that is held or resolved (not yet applied)."""

    def get(self, conflict_id: int) -> HeldConflict | None: ...

    def find(self, mailbox: str | None = None, statuses: tuple[str, ...] = ("held",)) -> list[HeldConflict]: ...

    def resolve(self, conflict_id: int, value: str | None, decided_by: str, now: datetime) -> bool:
        """A held row becomes resolved with ``value``; False when it is not held (any more)."""

    def mark_applied(self, ids: list[int], now: datetime) -> None: ...

    def forget(self, mailbox: str, crm_key: str) -> None:
        """Remove every row of this link (its contact turned Private: its data leaves)."""


@dataclass(frozen=True)
class ReviewItem:
    """A record new on one side that waits for a person (issue 8): link it to a candidate on
    the other side (accept) or create it there (reject)."""

    id: int
    mailbox: str
    side: str                     # crm | exchange: where the new record is
    record_key: str               # its CRM key or ItemId
    name: str
    candidates: tuple[dict[str, Any], ...]  # {key, name, score, agree: [signal], disagree: [signal]}, best first
    reason: str
    status: str                   # open | accepted | rejected
    chosen: str | None = None
    decided_by: str | None = None
    held_at: datetime | None = None


class ReviewQueue(Protocol):
    """The review queue of new records in the state database."""

    def hold(self, mailbox: str, side: str, record_key: str, name: str, candidates: list[dict[str, Any]], reason: str,
             now: datetime) -> ReviewItem:
        """The record's row: added as open, or the one it already has (its candidates refreshed
        while it is open); idempotent, so a replayed event holds it once."""

    def for_record(self, mailbox: str, side: str, record_key: str) -> ReviewItem | None: ...

    def get(self, item_id: int) -> ReviewItem | None: ...

    def find(self, mailbox: str | None = None, statuses: tuple[str, ...] = ("open",)) -> list[ReviewItem]: ...

    def decide(self, item_id: int, status: str, chosen: str | None, decided_by: str, now: datetime) -> bool:
        """An open row becomes accepted or rejected; False when it is not open (any more)."""

    def counts(self) -> dict[str, int]:
        """Open rows per mailbox."""
