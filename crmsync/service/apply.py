"""The apply protocol of DESIGN.md §3.1: what a worker does with a batch of events.

An event is a trigger, not a command: the service leases the links the events concern, re-reads
both sides (and the link row) on every attempt, reconciles against the link's base and writes
only what differs. Duplicate, late, out-of-order and self-echo events therefore change nothing.

There is one path: a single event is a batch of one. Leases are fenced: every execution has its
own owner id, and before each side effect the worker makes sure its lease outlives the longest
call it is about to make (``call_budget_s``), renewing it when needed; a lease lost to a
take-over stops the link before its next write. Creates are always looked up by the stamped CRM
key first (one bulk FindItem per batch). Every step is safe to crash after: creates are found
again through the stamp, and a re-read after a partial apply yields a plan that finishes the job.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Literal

import structlog

from crmsync.core import matching
from crmsync.core.deletes import FolderState, folder_guard
from crmsync.core.normalize import content_hash, same
from crmsync.core.reconcile import (
    Plan,
    Policy,
    may_create,
    may_delete,
    plan_create_crm,
    plan_create_exchange,
    reconcile,
)
from crmsync.core.second_source import (
    NewRecordDecision,
    candidates_for_crm,
    candidates_for_exchange,
    decide,
)
from crmsync.errors import BadRecord, LeaseTaken, Stale, Transient
from crmsync.ports import (
    ConflictRecord,
    CrmRecord,
    CrmSide,
    Event,
    ExchangeRecord,
    ExchangeSide,
    FieldWrite,
    HeldConflicts,
    HeldDeletes,
    Link,
    LinkUpdate,
    ReviewItem,
    ReviewQueue,
    StateStore,
)
from crmsync.testhooks import crash_point
from schemas.canonical import CONTACT_CRM_READONLY, CanonicalContact, fields_for, parse_crm_key
from schemas.canonical import crm_key as make_crm_key

log = structlog.get_logger("crmsync.service.apply")

#: Candidates looked up per new record (issue 8): those sharing an e-mail address come first.
_POOL_PER_RECORD = 50
#: How often one link is re-read after a lost optimistic-concurrency race, within one task.
MAX_STALE_ROUNDS = 5

Outcome = Literal[
    "missing", "done-already", "noop", "created-exchange", "created-crm", "updated",
    "deleted-exchange", "deactivated-crm", "unlinked", "unlinked-private", "private-skipped", "gone",
    "restored", "skipped-one-way", "delete-held", "skipped-filter", "deleted-crm", "linked-new", "review-held",
]
#: A crossing delete's fate this round (crmsync.core.deletes): go, held by the brake, discarded by
#: an administrator, or kept from crossing by the mailbox's delete rule.
Verdict = Literal["go", "hold", "discard", "unlink"]


class LeaseLost(LeaseTaken):
    """This execution's lease was taken over (it expired): stop before the next write."""


@dataclass
class SyncServices:
    """What the service needs, built once per process by the composition root."""

    store: StateStore
    crm: CrmSide
    exchange_for: Callable[[str], ExchangeSide]   # mailbox -> its Exchange side
    policy: Policy
    lease_ttl_s: float = 60.0
    #: The longest one side effect may take (an Exchange call with its retries and back-off):
    #: a lease is renewed before a write unless it outlives now + this.
    call_budget_s: float = 25.0
    clock: Callable[[], datetime] = field(default=lambda: datetime.now().astimezone())
    new_account_no: Callable[[], str] | None = None
    #: Each mailbox's own policy (direction, field rules); None: ``policy`` for every mailbox.
    policy_for: Callable[[str], Policy] | None = None
    #: The delete brake's record; None: deletes cross by the mailbox's rules, never held.
    held: HeldDeletes | None = None
    #: The manual conflict queue; None: held fields are not recorded (nothing is written either).
    conflicts: HeldConflicts | None = None
    #: The review queue of new records (issue 8); None: a record that would wait for a person
    #: is neither created nor linked (it is logged and waits for `crmsync link add`).
    review: ReviewQueue | None = None


@dataclass(frozen=True)
class BatchResult:
    """Per event: what was done, or the error that the task maps to a retry or dead letter."""

    outcomes: dict[int, Outcome]
    errors: dict[int, BaseException]


def apply_event(svc: SyncServices, event_id: int, owner: str | None = None) -> Outcome:
    """One event, as a batch of one; raises what the batch reports for it."""
    result = apply_events(svc, [event_id], owner)
    if event_id in result.errors:
        raise result.errors[event_id]
    return result.outcomes[event_id]


def apply_events(svc: SyncServices, event_ids: list[int], owner: str | None = None) -> BatchResult:
    """Apply events with few round trips: leases, reads, lookups, creates and link commits each
    go as one batch per mailbox. ``owner`` names this execution (a fresh one when None); an
    event that cannot be done now comes back in ``errors`` (LeaseTaken, Stale, Transient,
    BadRecord ...) for the task to retry or dead-letter."""
    owner = owner or uuid.uuid4().hex
    outcomes: dict[int, Outcome] = {}
    errors: dict[int, BaseException] = {}
    by_mailbox: dict[str, list[Event]] = {}
    wanted = list(dict.fromkeys(event_ids))
    found = svc.store.get_events(wanted)
    for event_id in wanted:
        event = found.get(event_id)
        if event is None or event.status in ("applied", "dead"):
            outcomes[event_id] = "missing" if event is None else "done-already"
            continue
        by_mailbox.setdefault(event.mailbox, []).append(event)
    for mailbox, events in by_mailbox.items():
        try:
            _MailboxBatch(svc, owner, mailbox).run(events, outcomes, errors)
        except Exception as exc:  # noqa: BLE001 - e.g. Exchange down: the rest of this mailbox waits
            for event in events:
                if event.id not in outcomes:
                    errors.setdefault(event.id, exc)
    done = {eid: outcome for eid, outcome in outcomes.items() if outcome not in ("missing", "done-already")}
    svc.store.mark_applied_many(done)
    for event_id, outcome in done.items():
        event = found[event_id]
        log.info("event.applied", event_id=event_id, mailbox=event.mailbox, source=event.source,
                 crm_key=event.crm_key, item_id=event.item_id, action=outcome)
    return BatchResult(outcomes, errors)


# ------------------------------------------------------------------------------------ a batch

@dataclass(frozen=True)
class _Deferred:
    """An Exchange create that goes out in the batch's one bulk CreateItem."""

    plan: Plan
    crm: CrmRecord


Step = tuple[Outcome, "LinkUpdate | _Deferred | None"]


class _MailboxBatch:
    """One mailbox's share of a batch: lease, then read → reconcile → apply → commit rounds."""

    def __init__(self, svc: SyncServices, owner: str, mailbox: str) -> None:
        self.svc = svc
        self.owner = owner
        self.mailbox = mailbox
        self.exchange = svc.exchange_for(mailbox)
        self.policy = svc.policy_for(mailbox) if svc.policy_for else svc.policy
        self.held: dict[str, Link] = {}          # crm_key -> link with our lease token
        self.event_ids: dict[str, tuple[int, ...]] = {}   # crm_key -> its events (the event log)
        self.gate: dict[str, Verdict] = {}       # crm_key -> what its crossing delete may do
        self.approved: dict[str, int] = {}       # crm_key -> the approved held_deletes row
        self.folder: FolderState | None = None   # the sync folder as last read (None: not asked)
        #: crm_key of a new CRM record -> what to do instead of creating its contact (issue 8)
        self.new_crm: dict[str, tuple[NewRecordDecision, ExchangeRecord | None]] = {}
        #: crm_key -> the new contact matched to it (issue 8): read with it when its link has no item
        self.matched: dict[str, str] = {}

    # ------------------------------------------------------------------ leases (the fence)
    def _ensure(self, keys: list[str]) -> list[str]:
        """Make sure each lease outlives the next call; returns the keys whose lease is lost."""
        svc = self.svc
        now = svc.clock()
        need = now + timedelta(seconds=svc.call_budget_s)
        short = [self.held[k] for k in keys if (self.held[k].lease_until or now) <= need]
        if not short:
            return []
        renewed = svc.store.renew_many(short, svc.lease_ttl_s, now)
        lost = []
        for link in short:
            fresh = renewed.get(link.crm_key)
            if fresh is None:
                lost.append(link.crm_key)
                del self.held[link.crm_key]
            else:
                self.held[link.crm_key] = replace(self.held[link.crm_key], lease_until=fresh.lease_until)
        return lost

    def _check(self, key: str) -> None:
        if self._ensure([key]):
            raise LeaseLost(f"link ({self.mailbox}, {key}): the lease expired and was taken over; "
                            "stopped before writing")

    # ------------------------------------------------------------------ the batch
    def run(self, events: list[Event], outcomes: dict[int, Outcome], errors: dict[int, BaseException]) -> None:
        keyed = self._keys(events, outcomes, errors)
        if not keyed:
            return
        self.event_ids = {k: tuple(e.id for e in evs) for k, (_, evs) in keyed.items()}
        svc = self.svc
        now = svc.clock()
        leased, refused = svc.store.acquire_many(self.mailbox, [(k, item) for k, (item, _) in keyed.items()],
                                                 self.owner, svc.lease_ttl_s, now)
        until = now + timedelta(seconds=svc.lease_ttl_s)
        self.held = {k: replace(link, lease_until=until) for k, link in leased.items()}
        results: dict[str, Outcome | BaseException] = {k: LeaseTaken(why) for k, why in refused.items()}
        try:
            self._rounds(results)
        finally:
            leftover = [link for k, link in self.held.items()]
            svc.store.release_many(leftover)
        for key, (_, key_events) in keyed.items():
            result = results.get(key, Stale(f"{key}: not finished"))
            for event in key_events:
                if isinstance(result, BaseException):
                    errors[event.id] = result
                else:
                    outcomes[event.id] = result

    def _keys(self, events: list[Event], outcomes: dict[int, Outcome],
              errors: dict[int, BaseException]) -> dict[str, tuple[str | None, list[Event]]]:
        """crm_key -> (ItemId hint, its events). A contact new in Outlook gets its stamped key,
        or a new account key that it is stamped with before the CRM row is created."""
        keyed: dict[str, tuple[str | None, list[Event]]] = {}
        unlinked: list[Event] = []
        for event in events:
            key = event.crm_key
            if key is not None:
                try:
                    parse_crm_key(key)
                except ValueError as exc:
                    errors[event.id] = BadRecord(f"event {event.id} in {self.mailbox}: {exc}")
                    continue
            elif event.item_id is not None:
                link = self.svc.store.find_link(self.mailbox, item_id=event.item_id)
                if link is None:
                    unlinked.append(event)
                    continue
                key = link.crm_key
            else:
                errors[event.id] = BadRecord(f"event {event.id}: names neither a CRM key nor an item")
                continue
            keyed.setdefault(key, (event.item_id, []))[1].append(event)
        if unlinked:
            items = self.exchange.read_many([e.item_id for e in unlinked if e.item_id])
            new = [item for item in items if item is not None and not item.private and item.crm_key is None
                   and may_create(self.policy, "crm")]
            matched = self._match_new_exchange(new) if new else {}
            for event, item in zip(unlinked, items, strict=True):
                if item is None:
                    outcomes[event.id] = "gone"
                elif item.private:
                    outcomes[event.id] = "private-skipped"
                elif item.crm_key is None and not may_create(self.policy, "crm"):
                    outcomes[event.id] = "skipped-one-way"   # new in Outlook; this mailbox never writes the CRM
                elif item.crm_key is None and matched.get(item.item_id, "") is None:
                    outcomes[event.id] = "review-held"       # waits for a person (crmsync review)
                else:
                    key = item.crm_key or matched.get(item.item_id) or self._new_account_key(item)
                    if item.crm_key is None and matched.get(item.item_id):
                        self.matched[key] = item.item_id
                    hint, evs = keyed.setdefault(key, (item.item_id, []))
                    evs.append(event)
                    if hint is None:
                        keyed[key] = (item.item_id, evs)
        return keyed

    def _new_account_key(self, item: ExchangeRecord) -> str:
        new_no = self.svc.new_account_no() if self.svc.new_account_no else None
        if not new_no:
            raise BadRecord(f"item {item.item_id} in {self.mailbox}: no way to generate an account_no")
        return make_crm_key("account", new_no)

    def _rounds(self, results: dict[str, Outcome | BaseException]) -> None:
        svc = self.svc
        todo = list(self.held)
        for _ in range(MAX_STALE_ROUNDS):
            if not todo:
                return
            reads = self._read(todo)
            self.gate = self._brake(todo, reads)
            self.new_crm = self._match_new_crm(todo, reads)
            commits: list[tuple[Link, LinkUpdate]] = []
            creates: list[tuple[Link, _Deferred]] = []
            again: list[str] = []
            for key in todo:
                link = self.held.get(key)
                if link is None:
                    results[key] = LeaseLost(f"link ({self.mailbox}, {key}): lease lost")
                    continue
                crm, ex = reads[key]
                if isinstance(crm, BadRecord):
                    results[key] = crm
                    continue
                try:
                    outcome, update = self._step(link, crm, ex)
                except Stale as lost:
                    log.info("apply.stale_reread", mailbox=self.mailbox, crm_key=key, why=str(lost))
                    again.append(key)
                    continue
                except Exception as exc:  # noqa: BLE001 - this link only; the batch carries on
                    results[key] = exc
                    continue
                results[key] = outcome
                if isinstance(update, _Deferred):
                    creates.append((link, update))
                elif update is not None:
                    commits.append((link, update))
            if creates:
                commits.extend(self._create(creates, results))
            crash_point("before_link_commit")
            failed = svc.store.commit_many([(self.held[link.crm_key], self._logged(link.crm_key, u, results))
                                            for link, u in commits if link.crm_key in self.held], svc.clock())
            for link, _ in commits:
                if link.crm_key in self.held:
                    del self.held[link.crm_key]   # committed (the commit released the lease) or lost
                    if link.crm_key in failed:
                        why = failed[link.crm_key]
                        results[link.crm_key] = BadRecord(why) if "already linked" in why else LeaseLost(why)
            todo = self._reread_links(again, results)
        for key in todo:
            results[key] = Stale(f"{key} in {self.mailbox}: still changing after {MAX_STALE_ROUNDS} re-reads")

    def _logged(self, key: str, update: LinkUpdate, results: dict[str, Outcome | BaseException]) -> LinkUpdate:
        """The update with what the event log records of it: the outcome, the events, and a
        whole-record act (a delete) when no field was written."""
        action = results.get(key)
        action = action if isinstance(action, str) else None
        writes = update.writes
        if not writes and action in _ACTS:
            writes = (FieldWrite(_ACTS[action], None, None, None),)
        return replace(update, action=action, writes=writes, event_ids=self.event_ids.get(key, ()))

    def _reread_links(self, keys: list[str], results: dict[str, Outcome | BaseException]) -> list[str]:
        """The link rows themselves are read again after a lost race: another execution may
        have committed meanwhile (and our lease with it is gone)."""
        out = []
        for key in keys:
            held = self.held.get(key)
            row = self.svc.store.find_link(self.mailbox, crm_key=key)
            if held is None or row is None or row.lease_token != held.lease_token:
                self.held.pop(key, None)
                results[key] = LeaseLost(f"link ({self.mailbox}, {key}): lease lost while re-reading")
                continue
            self.held[key] = replace(row, lease_until=held.lease_until)
            out.append(key)
        return out

    def _read(self, keys: list[str]) -> dict[str, tuple[CrmRecord | BadRecord | None, ExchangeRecord | None]]:
        """Both sides of every link, in bulk: CRM rows by key, Exchange items by id, and by the
        stamped key wherever the link has no item in the folder (always looked up: a stamp is
        the only proof that no earlier attempt created the contact)."""
        links = {k: self.held[k] for k in keys}
        crm = self._read_crm(list(links))
        with_item = [(link.crm_key, link.item_id or self.matched[link.crm_key]) for link in links.values()
                     if link.item_id or (link.base is None and link.crm_key in self.matched)]
        by_item = dict(zip([key for key, _ in with_item],
                           self.exchange.read_many([item for _, item in with_item]), strict=True)
                       ) if with_item else {}
        missing = [k for k in links if by_item.get(k) is None]
        by_stamp = self._find_stamped(missing) if missing else {}
        return {k: (crm.get(k), by_item.get(k) or by_stamp.get(k)) for k in links}

    def _find_stamped(self, keys: list[str]) -> dict[str, ExchangeRecord]:
        """Contacts by stamp; a sync folder that has disappeared finds none (and is remembered
        for the empty-folder guard) instead of failing the batch."""
        try:
            return self.exchange.find_many_by_crm_key(keys)
        except Exception:
            if self.exchange.folder_state() != "missing":
                raise
            self.folder = "missing"
            return {}

    def _read_crm(self, keys: list[str]) -> dict[str, CrmRecord | BadRecord]:
        """CRM rows in one query; when one row cannot be read (a bad record), each is read on
        its own so that only the bad one carries the error."""
        try:
            return dict(self.svc.crm.read_many(keys))
        except BadRecord:
            out: dict[str, CrmRecord | BadRecord] = {}
            for key in keys:
                try:
                    rec = self.svc.crm.read(key)
                except BadRecord as exc:
                    out[key] = exc
                    continue
                if rec is not None:
                    out[key] = rec
            return out

    def _create(self, creates: list[tuple[Link, _Deferred]],
                results: dict[str, Outcome | BaseException]) -> list[tuple[Link, LinkUpdate]]:
        lost = set(self._ensure([link.crm_key for link, _ in creates]))
        for link, _ in creates:
            if link.crm_key in lost:
                results[link.crm_key] = LeaseLost(f"link ({self.mailbox}, {link.crm_key}): lease lost before create")
        creates = [(link, d) for link, d in creates if link.crm_key not in lost]
        if not creates:
            return []
        made = self.exchange.create_many([(link.crm_key, d.plan.to_exchange) for link, d in creates])
        crash_point("after_exchange_write")
        out = []
        for (link, deferred), rec in zip(creates, made, strict=True):
            if isinstance(rec, BaseException):
                rec.add_note(_writing_note("exchange", link.crm_key, deferred.plan.to_exchange))
                results[link.crm_key] = rec
            else:
                fields = fields_for(parse_crm_key(link.crm_key)[0])
                written = _writes("exchange", {}, deferred.plan.to_exchange)
                out.append((link, replace(self._update(link, fields, deferred.plan.base, rec, deferred.crm),
                                          writes=written)))
        return out

    # ------------------------------------------------------------------ one link
    def _step(self, link: Link, crm: CrmRecord | None, ex: ExchangeRecord | None) -> Step:
        """Decide and apply one link's side effects (creates deferred to the bulk request).
        Raises Stale when a precondition failed: the caller re-reads the link and both sides."""
        kind, ident = parse_crm_key(link.crm_key)
        fields = fields_for(kind)
        crm_live = self._live(crm)

        if ex is not None and ex.private:
            if link.private:
                return "private-skipped", None
            if link.base is not None or link.item_id is not None:
                # Linked before, Private now: unlink and forget its data; the CRM keeps the
                # account as it was last shared.
                if self.svc.conflicts is not None:
                    self.svc.conflicts.forget(self.mailbox, link.crm_key)
                return "unlinked-private", LinkUpdate(item_id=ex.item_id, change_key=None, crm_version=None,
                                                      base=None, crm_hash=None, exchange_hash=None,
                                                      deleted=False, private=True)
            return "private-skipped", None
        if link.private:
            if ex is None:
                return "private-skipped", None
            link = _fresh(link, item_id=ex.item_id)   # shared again: a two-way merge, never a create

        if link.deleted:
            return self._after_delete(link, kind, ident, fields, crm, ex)

        was_synced = link.base is not None
        if not crm_live and ex is None:
            return ("gone" if not was_synced else "unlinked"), _deleted_update(link)
        if not crm_live:
            if was_synced:
                verdict = self.gate.get(link.crm_key, "go")
                if verdict == "hold":
                    return "delete-held", None
                if verdict != "go" or not may_delete(self.policy, "exchange"):
                    return "unlinked", _deleted_update(link)   # kept from crossing (one-way, rule, discard)
                self._check(link.crm_key)
                self.exchange.delete(ex.item_id, ex.change_key, hard=self.policy.deletes.hard_deletes_contacts)
                crash_point("after_exchange_write")
                self._delete_done(link.crm_key)
                return "deleted-exchange", _deleted_update(link)
            if crm is not None and not crm.active:
                return "noop", None       # first pairing with an inactive account: keep both as they are
            if not may_create(self.policy, "crm"):
                return "skipped-one-way", None
            return "created-crm", self._create_crm(link, kind, ident, ex, fields)
        if ex is None:
            if was_synced:
                verdict = self.gate.get(link.crm_key, "go")
                if verdict == "hold" and kind == "account":
                    return "delete-held", None
                if kind == "account" and verdict == "go" and may_delete(self.policy, "crm"):
                    self._check(link.crm_key)
                    outcome: Outcome = "deactivated-crm"
                    if self.policy.deletes.deletes_crm_rows:
                        if self.svc.crm.delete_account(link.crm_key, crm.version) == "deleted":
                            outcome = "deleted-crm"
                    else:
                        self.svc.crm.deactivate(link.crm_key, crm.version)
                    crash_point("after_crm_write")
                    self._delete_done(link.crm_key)
                    return outcome, _deleted_update(link)
                return "unlinked", _deleted_update(link)
            if not may_create(self.policy, "exchange"):
                return "skipped-one-way", None
            if not self._pushes(crm):
                return "skipped-filter", None
            decided = self.new_crm.get(link.crm_key)
            if decided is not None and decided[0].action == "review":
                return "review-held", None
            if decided is not None and decided[1] is not None:
                # A second source (issue 8): the same person is in the folder, unlinked: link, merge.
                _, update = self._merge(replace(link, item_id=decided[1].item_id), fields, crm, decided[1])
                return "linked-new", update
            return "created-exchange", _Deferred(plan_create_exchange(crm.record, fields, self.policy), crm)
        return self._merge(link, fields, crm, ex)

    def _after_delete(self, link: Link, kind: str, ident: str, fields: tuple[str, ...],
                      crm: CrmRecord | None, ex: ExchangeRecord | None) -> Step:
        """A pair whose delete crossed. It comes back only by a person's act: the contact
        restored from Deleted Items (then a deactivated account is re-activated), or the CRM
        record re-activated (then its contact is moved back from Deleted Items, never created
        twice); a secondary contact deleted in Outlook comes back only when that contact itself
        is edited in the CRM."""
        crm_live = crm is not None and crm.active
        marker = self._unlinked_by_delete(link.crm_key)
        if marker is not None:
            # Discarded, or kept from crossing by a rule: nothing comes back on its own. Only both
            # sides live again (restored or re-created by a person) re-link the pair.
            if ex is None or not crm_live:
                return "noop", None
            assert self.svc.held is not None
            self.svc.held.set_status([marker], "resolved", self.svc.clock())
        if ex is not None:                      # restored in Outlook (same or a new ItemId)
            if crm is None:
                return "noop", None
            if not crm.active:
                if not may_create(self.policy, "crm"):
                    return "noop", None         # one-way: a restore in Outlook does not reach the CRM
                self._check(link.crm_key)
                crm = self.svc.crm.reactivate(link.crm_key, crm.version)
                crash_point("after_crm_write")
            outcome, update = self._merge(replace(link, deleted=False), fields, crm, ex)
            return ("restored", update)
        if not crm_live or not may_create(self.policy, "exchange"):
            return "noop", None
        if kind == "contact" and link.base is not None and self._unchanged_since(link, crm, fields):
            return "noop", None                 # deleted in Outlook; stays deleted until edited in the CRM
        trashed = self.exchange.find_deleted_by_crm_key(link.crm_key)
        if trashed is not None:
            self._check(link.crm_key)
            restored = self.exchange.restore(trashed.item_id)
            crash_point("after_exchange_write")
            outcome, update = self._merge(replace(link, deleted=False, item_id=restored.item_id), fields,
                                          crm, restored)
            return ("restored", update)
        return "created-exchange", _Deferred(plan_create_exchange(crm.record, fields, self.policy), crm)

    def _live(self, crm: CrmRecord | None) -> bool:
        """Whether the CRM side of a pair is there to sync: an active record, or with
        ``only_active = false`` any record (deactivating is then no delete)."""
        return crm is not None and (crm.active or not self.policy.only_active)

    def _pushes(self, crm: CrmRecord) -> bool:
        """The push filter, judged on the account (a secondary contact on its account's values)."""
        if not self.policy.push_filter:
            return True
        account = crm if crm.account_key is None else self.svc.crm.read(crm.account_key)
        return account is not None and self.policy.pushes(account.record)

    # ------------------------------------------------------------------ a second source (issue 8)
    def _match_policy(self) -> matching.MatchPolicy:
        return matching.MatchPolicy(region=self.policy.region)

    def _unlinked_crm(self, cands: Iterable[matching.Candidate]) -> list[matching.Candidate]:
        out = []
        for cand in cands:
            link = self.svc.store.find_link(self.mailbox, crm_key=cand.crm_key)
            if link is None or (link.item_id is None and link.base is None and not link.deleted):
                out.append(cand)
        return out

    def _unlinked_exchange(self, cands: Iterable[matching.Candidate]) -> list[matching.Candidate]:
        return [c for c in cands if self.svc.store.find_link(self.mailbox, item_id=c.exchange_key) is None]

    def _similar_crm(self, records: Iterable[CanonicalContact]) -> dict[str, CrmRecord]:
        """Active CRM accounts sharing an e-mail address or a last name with ``records`` (one
        query); {} when the CRM adapter cannot look them up."""
        find = getattr(self.svc.crm, "find_similar", None)
        records = list(records)
        if find is None or not records:
            return {}
        emails = {e.strip().lower() for r in records for e in (r.email, r.email2) if e and e.strip()}
        names = {r.last_name.strip() for r in records if r.last_name and r.last_name.strip()}
        return dict(find(sorted(emails), sorted(names), limit=_POOL_PER_RECORD * len(records)))

    def _similar_exchange(self, records: Iterable[CanonicalContact]) -> dict[str, ExchangeRecord]:
        """Contacts of the folder sharing an e-mail address or a last name with ``records``
        (one query), not private; {} when the Exchange adapter cannot look them up."""
        find = getattr(self.exchange, "find_similar", None)
        records = list(records)
        if find is None or not records:
            return {}
        emails = {e.strip() for r in records for e in (r.email, r.email2) if e and e.strip()}
        names = {r.last_name.strip() for r in records if r.last_name and r.last_name.strip()}
        found = find(sorted(emails), sorted(names), limit=_POOL_PER_RECORD * len(records))
        return {x.item_id: x for x in found if not x.private}

    def _review(self, side: str, key: str, record: CanonicalContact, decision: NewRecordDecision,
                names: Mapping[str, CanonicalContact]) -> None:
        """Hold a new record in the review queue (idempotent: a replay finds its row)."""
        log.warning("new_record.review", mailbox=self.mailbox, side=side, key=key, reason=decision.reason,
                    candidates=len(decision.candidates), hint="crmsync review list | accept | reject")
        if self.svc.review is None:
            return
        from crmsync.service.linking import display_name

        cands = [{"key": c.exchange_key if side == "crm" else c.crm_key,
                  "name": display_name(names[c.exchange_key if side == "crm" else c.crm_key]),
                  "score": c.score, "agree": sorted({e.signal for e in c.agree}),
                  "disagree": sorted({e.signal for e in c.disagree})} for c in decision.candidates]
        self.svc.review.hold(self.mailbox, side, key, display_name(record), cands, decision.reason, self.svc.clock())

    def _queued(self, side: str, key: str) -> ReviewItem | None:
        """This record's row in the review queue: open (it still waits), accepted (link it to
        the chosen candidate), rejected (create it); None when it never waited."""
        if self.svc.review is None:
            return None
        return self.svc.review.for_record(self.mailbox, side, key)

    def _match_new_exchange(self, items: list[ExchangeRecord]) -> dict[str, str | None]:
        """For contacts new in Outlook: item_id -> the unlinked CRM record to link it to, None
        when it waits for a person; absent: create a new account (as before issue 8)."""
        mode = self.policy.on_new_record
        out: dict[str, str | None] = {}
        todo = []
        for item in items:
            row = self._queued("exchange", item.item_id)
            if row is not None and row.status == "open":
                out[item.item_id] = None
            elif row is not None and row.status == "accepted" and row.chosen:
                out[item.item_id] = row.chosen          # a person chose (crmsync review accept)
            elif row is None and mode != "create":
                todo.append(item)
        pool = self._similar_crm(item.record for item in todo)
        if not pool:
            return out
        policy = self._match_policy()
        crm_pool = [matching.CrmRecord(k, r.record) for k, r in pool.items()]
        claimed: dict[str, list[str]] = {}
        decisions: dict[str, NewRecordDecision] = {}
        for item in todo:
            cands = self._unlinked_crm(candidates_for_exchange(
                matching.ExchangeRecord(item.item_id, item.record, item.crm_key), crm_pool, policy))
            decisions[item.item_id] = decision = decide("exchange", cands, mode)
            if decision.chosen is not None:
                claimed.setdefault(decision.chosen.crm_key, []).append(item.item_id)
        names: dict[str, CanonicalContact] = {k: r.record for k, r in pool.items()}
        by_id = {item.item_id: item for item in todo}
        for item_id, decision in decisions.items():
            if decision.chosen is not None:
                rivals = claimed[decision.chosen.crm_key]
                if len(rivals) > 1:
                    decision = replace(decision, action="review", chosen=None,
                                       reason=f"contested: {decision.chosen.crm_key} is also the best match of "
                                              f"{len(rivals) - 1} other new contact(s)")
                elif not self._mutual_crm(decision.chosen, by_id[item_id]):
                    decision = replace(decision, action="review", chosen=None,
                                       reason=f"contested: {decision.chosen.crm_key} matches another contact "
                                              "as well or better")
            if decision.action == "link" and decision.chosen is not None:
                out[item_id] = decision.chosen.crm_key
            elif decision.action == "review":
                linked = self.svc.store.find_link(self.mailbox, item_id=item_id)
                if linked is not None:   # linked meanwhile (its CRM record's event, another worker)
                    out[item_id] = linked.crm_key
                    continue
                self._review("exchange", item_id, by_id[item_id].record, decision, names)
                out[item_id] = None
        return out

    def _mutual_crm(self, chosen: matching.Candidate, item: ExchangeRecord) -> bool:
        """The CRM record a new contact would be linked to has no other unlinked contact in the
        folder that matches it as well (within the margin): then a person decides."""
        rec = self.svc.crm.read(chosen.crm_key)
        if rec is None:
            return False
        others = self._similar_exchange([rec.record])
        others.setdefault(item.item_id, item)
        found = candidates_for_crm(
            matching.CrmRecord(chosen.crm_key, rec.record),
            [matching.ExchangeRecord(k, x.record, x.crm_key) for k, x in others.items()
             if x.crm_key in (None, chosen.crm_key)], self._match_policy())
        # the new contact itself stays in (it may have been linked to this very record meanwhile)
        cands = [c for c in found if c.exchange_key == item.item_id]
        cands += self._unlinked_exchange(c for c in found if c.exchange_key != item.item_id)
        back = decide("crm", cands, "match-then-create")
        return back.chosen is not None and back.chosen.exchange_key == item.item_id

    def _match_new_crm(self, keys: list[str], reads: dict) -> dict[str, tuple[NewRecordDecision, ExchangeRecord | None]]:
        """For CRM records new to this mailbox (never linked, no stamped contact): crm_key ->
        (decision, the unlinked contact to link it to). Absent: create its contact."""
        mode = self.policy.on_new_record
        new: dict[str, CrmRecord] = {}
        out: dict[str, tuple[NewRecordDecision, ExchangeRecord | None]] = {}
        for key in keys:
            link = self.held.get(key)
            crm, ex = reads[key]
            if (link is None or ex is not None or not isinstance(crm, CrmRecord) or not crm.active
                    or link.item_id is not None or link.base is not None or link.deleted or link.private):
                continue
            row = self._queued("crm", key)
            if row is not None and row.status == "open":
                out[key] = (NewRecordDecision("review", (), reason="waits for a person"), None)
            elif row is not None and row.status == "accepted" and row.chosen:
                out[key] = self._accepted(key, row.chosen)
            elif row is None and mode != "create":
                new[key] = crm
        pool = self._similar_exchange(r.record for r in new.values())
        if not pool:
            return out
        policy = self._match_policy()
        ex_pool = [matching.ExchangeRecord(k, x.record, x.crm_key) for k, x in pool.items()]
        claimed: dict[str, list[str]] = {}
        decisions: dict[str, NewRecordDecision] = {}
        for key, crm in new.items():
            cands = [c for c in candidates_for_crm(matching.CrmRecord(key, crm.record), ex_pool, policy)
                     if pool[c.exchange_key].crm_key in (None, key)]
            decisions[key] = decision = decide("crm", self._unlinked_exchange(cands), mode)
            if decision.chosen is not None:
                claimed.setdefault(decision.chosen.exchange_key, []).append(key)
        names: dict[str, CanonicalContact] = {k: x.record for k, x in pool.items()}
        for key, decision in decisions.items():
            chosen = decision.chosen
            if chosen is not None:
                if len(claimed[chosen.exchange_key]) > 1:
                    decision = replace(decision, action="review", chosen=None,
                                       reason="contested: its best match is also the best match of "
                                              f"{len(claimed[chosen.exchange_key]) - 1} other new record(s)")
                elif not self._mutual_exchange(chosen, pool[chosen.exchange_key], key):
                    decision = replace(decision, action="review", chosen=None,
                                       reason="contested: its best match matches another CRM record as well or better")
            if decision.action == "review":
                self._review("crm", key, new[key].record, decision, names)
                out[key] = (decision, None)
            elif decision.action == "link" and decision.chosen is not None:
                out[key] = (decision, pool[decision.chosen.exchange_key])
        return out

    def _accepted(self, key: str, item_id: str) -> tuple[NewRecordDecision, ExchangeRecord | None]:
        """The contact a person linked a new CRM record to, if it can still be linked."""
        item = self.exchange.read(item_id)
        if (item is None or item.private or item.crm_key not in (None, key)
                or self.svc.store.find_link(self.mailbox, item_id=item_id) is not None):
            log.warning("new_record.accepted_candidate_gone", mailbox=self.mailbox, crm_key=key, item_id=item_id)
            return NewRecordDecision("review", (), reason=f"the chosen contact {item_id} is gone or linked"), None
        return NewRecordDecision("link", ()), item

    def _mutual_exchange(self, chosen: matching.Candidate, item: ExchangeRecord, key: str) -> bool:
        """The contact a new CRM record would be linked to has no other unlinked CRM record
        that matches it as well (within the margin)."""
        pool = self._similar_crm([item.record])
        crm = [matching.CrmRecord(k, r.record) for k, r in pool.items()]
        if key not in pool:
            own = self.svc.crm.read(key)
            if own is None:
                return False
            crm.append(matching.CrmRecord(key, own.record))
        cands = self._unlinked_crm(candidates_for_exchange(
            matching.ExchangeRecord(item.item_id, item.record, item.crm_key), crm, self._match_policy()))
        back = decide("exchange", cands, "match-then-create")
        return back.chosen is not None and back.chosen.crm_key == key

    # ------------------------------------------------------------------ the delete brake
    def _crossing(self, link: Link, crm: CrmRecord | None, ex: ExchangeRecord | None) -> str | None:
        """The side a delete would land on if this link were stepped now (the cases of
        ``_step`` that delete or deactivate), or None."""
        if link.private or link.deleted or link.base is None or (ex is not None and ex.private):
            return None
        crm_live = self._live(crm)
        if not crm_live and ex is not None:
            return "exchange" if may_delete(self.policy, "exchange") else None
        if crm_live and ex is None and parse_crm_key(link.crm_key)[0] == "account":
            return "crm" if may_delete(self.policy, "crm") else None
        return None

    def _brake(self, keys: list[str], reads: dict) -> dict[str, Verdict]:
        """Every crossing delete of this round gets its verdict at once, so a mass delete that
        arrives together is held together: approved or discarded earlier by an administrator,
        still held, or new; new ones are held when the window's count trips the brake (or
        deletes are held already), else they pass. Every one is noted in the state database."""
        rules = self.policy.deletes
        crossing: dict[str, str] = {}
        for key in keys:
            crm, ex = reads[key]
            if key in self.held and not isinstance(crm, BadRecord):
                side = self._crossing(self.held[key], crm, ex)
                if side is not None:
                    crossing[key] = side
        gate: dict[str, Verdict] = {k: "unlink" for k, side in crossing.items() if not rules.crosses(side)}
        held = self.svc.held
        if held is None:
            return {k: gate.get(k, "go") for k in crossing}
        now = self.svc.clock()
        since = now - timedelta(seconds=rules.window_s)
        if gate:
            held.note(self.mailbox, [(k, crossing[k]) for k in gate], "unlinked", now)
        latest = held.latest(self.mailbox, [k for k in crossing if k not in gate])
        fresh: list[str] = []
        for key in crossing:
            if key in gate:
                continue
            row = latest.get(key)
            status = row.status if row is not None else None
            if row is not None and status == "approved":
                gate[key] = "go"
                self.approved[key] = row.id
            elif status == "discarded":
                gate[key] = "discard"
            elif status == "held":
                gate[key] = "hold"
            elif row is not None and status == "passed" and row.noted_at >= since:
                gate[key] = "go"                # this delete's own earlier attempt passed
            else:
                fresh.append(key)
        guarded = [k for k in fresh if crossing[k] == "crm"]   # read as gone from the sync folder
        if guarded:
            reason = folder_guard(self._folder_state(), held.synced_links(self.mailbox))
            if reason is not None:
                held.note(self.mailbox, [(k, "crm") for k in guarded], "held", now, reason=reason)
                for key in guarded:
                    gate[key] = "hold"
                fresh = [k for k in fresh if k not in guarded]
                log.warning("deletes.held", mailbox=self.mailbox, held=len(guarded), reason=reason,
                            hint="crmsync deletes list | approve | discard")
        if fresh:
            count = held.count_since(self.mailbox, since) + len(fresh)
            trip = bool(held.find(self.mailbox, ("held",))) or rules.trips(count, held.synced_links(self.mailbox))
            held.note(self.mailbox, [(k, crossing[k]) for k in fresh], "held" if trip else "passed", now,
                      reason="brake" if trip else None)
            for key in fresh:
                gate[key] = "hold" if trip else "go"
            if trip:
                log.warning("deletes.held", mailbox=self.mailbox, held=len(fresh), in_window=count,
                            hint="crmsync deletes list | approve | discard")
        return gate

    def _folder_state(self) -> FolderState:
        """The sync folder as it reads now (asked once per batch)."""
        if self.folder is None:
            self.folder = self.exchange.folder_state()
        return self.folder

    def _delete_done(self, key: str) -> None:
        row = self.approved.pop(key, None)
        if row is not None and self.svc.held is not None:
            self.svc.held.set_status([row], "applied", self.svc.clock(), only_from=("approved",))

    def _unlinked_by_delete(self, key: str) -> int | None:
        """The id of the marker that keeps this deleted pair unlinked (discarded or by rule)."""
        if self.svc.held is None:
            return None
        row = self.svc.held.latest(self.mailbox, [key]).get(key)
        return row.id if row is not None and row.status in ("discarded", "unlinked") else None

    def _unchanged_since(self, link: Link, crm: CrmRecord, fields: tuple[str, ...]) -> bool:
        own = tuple(f for f in fields if f not in CONTACT_CRM_READONLY)
        assert link.base is not None
        return all(same(f, getattr(crm.record, f), getattr(link.base, f), region=self.policy.region)
                   for f in own)

    def _create_crm(self, link: Link, kind: str, ident: str, ex: ExchangeRecord,
                    fields: tuple[str, ...]) -> LinkUpdate:
        if kind != "account":
            raise BadRecord(f"item {ex.item_id} in {self.mailbox}: stamped {link.crm_key}, "
                            "but that secondary contact no longer exists in the CRM")
        if ex.crm_key != link.crm_key:
            # Stamp first, so a crash before the CRM insert finds the same account_no again.
            self._check(link.crm_key)
            ex = self.exchange.update(ex.item_id, {}, ex.change_key, crm_key=link.crm_key)
            crash_point("after_exchange_write")
        plan = plan_create_crm(ex.record, fields, self._policy(link))
        self._check(link.crm_key)
        with _writing("crm", link.crm_key, plan.to_crm):
            crm = self.svc.crm.create_account(ident, plan.to_crm)
        crash_point("after_crm_write")
        return replace(self._update(link, fields, plan.base, ex, crm), writes=_writes("crm", {}, plan.to_crm))

    def _merge(self, link: Link, fields: tuple[str, ...], crm: CrmRecord, ex: ExchangeRecord) -> Step:
        policy = self._policy(link)
        queue = self.svc.conflicts if policy.holds_conflicts else None
        decided = {}
        if queue is not None:   # a person's decisions on held fields of this link
            decided = {f: row for f, row in queue.open_for(self.mailbox, link.crm_key).items() if row.status == "resolved"}
        plan: Plan = reconcile(link.base, crm.record, ex.record, policy, fields=fields,
                               crm_modified_at=crm.modified_at, exchange_modified_at=ex.modified_at,
                               resolved={f: row.value for f, row in decided.items()})
        written = (_writes("exchange", ex.record.model_dump(), plan.to_exchange)
                   + _writes("crm", crm.record.model_dump(), plan.to_crm))
        # A pair linked by hand or by the matcher carries no stamp yet: stamp it with this write
        # (or alone), so a lost state database finds the pair again instead of creating a copy.
        stamp = link.crm_key if ex.crm_key != link.crm_key else None
        if plan.to_exchange or stamp is not None:
            self._check(link.crm_key)
            with _writing("exchange", link.crm_key, plan.to_exchange):
                ex = self.exchange.update(ex.item_id, plan.to_exchange, ex.change_key, crm_key=stamp)
            crash_point("after_exchange_write")
        if plan.to_crm:
            self._check(link.crm_key)
            with _writing("crm", link.crm_key, plan.to_crm):
                crm = self.svc.crm.update(link.crm_key, plan.to_crm, crm.version)
            crash_point("after_crm_write")
        outcome: Outcome = "updated" if (plan.to_crm or plan.to_exchange) else "noop"
        conflicts = tuple(ConflictRecord(c.field, c.crm_value, c.exchange_value, c.chosen) for c in plan.conflicts
                          if c.chosen != "held")
        conflicts += tuple(ConflictRecord(f, row.crm_value, row.exchange_value, f"manual: {row.decided_by}")
                           for f, row in decided.items())
        if queue is not None:
            held = [(c.field, c.crm_value, c.exchange_value, c.base_value) for c in plan.conflicts if c.chosen == "held"]
            queue.hold(self.mailbox, link.crm_key, held, self.svc.clock())
            queue.mark_applied([row.id for row in decided.values()], self.svc.clock())
        return outcome, replace(self._update(link, fields, plan.base, ex, crm), conflicts=conflicts,
                                writes=written)

    def _policy(self, link: Link) -> Policy:
        """Secondary contacts take their company name from the CRM account, never from Exchange."""
        policy = self.policy
        if parse_crm_key(link.crm_key)[0] == "contact":
            return replace(policy, crm_readonly=policy.crm_readonly | CONTACT_CRM_READONLY)
        return policy

    def _update(self, link: Link, fields: tuple[str, ...], base: CanonicalContact,
                ex: ExchangeRecord, crm: CrmRecord) -> LinkUpdate:
        digest = content_hash(base, fields, region=self.policy.region)
        return LinkUpdate(item_id=ex.item_id, change_key=ex.change_key, crm_version=crm.version,
                          base=base, crm_hash=digest, exchange_hash=digest)


#: Whole-record acts the event log records (with the side they act on) when no field was written.
_ACTS: dict[str, str | None] = {"deleted-exchange": "exchange", "deactivated-crm": "crm", "deleted-crm": "crm",
                                "restored": None}


def _writes(side: str, old: Mapping[str, str | None], new: Mapping[str, str | None]) -> tuple[FieldWrite, ...]:
    """Field diffs of one side's write: old raw value (None on a create) and new raw value."""
    return tuple(FieldWrite(side, f, old.get(f), v) for f, v in new.items())


def _writing_note(side: str, key: str, fields: Iterable[str]) -> str:
    return f"while writing {', '.join(fields) or 'the record'} of {key} to the {side}"


@contextmanager
def _writing(side: str, key: str, fields: Iterable[str]) -> Iterator[None]:
    """Name the record and fields on an error of this write: the event log shows them."""
    try:
        yield
    except Exception as exc:
        exc.add_note(_writing_note(side, key, fields))
        raise


def _deleted_update(link: Link) -> LinkUpdate:
    return LinkUpdate(item_id=link.item_id, change_key=link.change_key, crm_version=link.crm_version,
                      base=link.base, crm_hash=link.crm_hash, exchange_hash=link.exchange_hash, deleted=True)


def _fresh(link: Link, item_id: str | None = None) -> Link:
    return replace(link, item_id=item_id, change_key=None, base=None, deleted=False, private=False)


__all__ = ["BatchResult", "LeaseLost", "Outcome", "SyncServices", "Transient", "apply_event", "apply_events"]
