"""The apply protocol of DESIGN.md §3.1: what a worker does with one event.

An event is a trigger, not a command: the service leases the link it concerns, re-reads both
sides, reconciles them against the link's base and writes only what differs. Duplicate, late,
out-of-order and self-echo events therefore change nothing. Every step is safe to crash after:
creates are found again through the CRM key stamped on the Exchange item, and a re-read after a
partial apply yields a plan that finishes the job.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Literal

import structlog

from crmsync.core.normalize import content_hash
from crmsync.core.reconcile import Plan, Policy, plan_create_crm, plan_create_exchange, reconcile
from crmsync.errors import BadRecord, LeaseTaken, Stale, Transient
from crmsync.ports import (
    CrmRecord,
    CrmSide,
    Event,
    ExchangeRecord,
    ExchangeSide,
    Link,
    LinkUpdate,
    StateStore,
)
from crmsync.testhooks import crash_point
from schemas.canonical import (
    CONTACT_CRM_READONLY,
    CanonicalContact,
    fields_for,
    parse_crm_key,
)
from schemas.canonical import (
    crm_key as make_crm_key,
)

log = structlog.get_logger("crmsync.service.apply")

#: How often one event re-reads both sides after a lost optimistic-concurrency race.
MAX_STALE_ROUNDS = 5

Outcome = Literal[
    "missing", "done-already", "noop", "created-exchange", "created-crm", "updated",
    "deleted-exchange", "deactivated-crm", "unlinked", "private-skipped", "gone",
]


Reads = tuple["CrmRecord | None", "ExchangeRecord | None"]


@dataclass(frozen=True)
class PendingCreate:
    """An Exchange create that a batch sends in one bulk request with others."""

    plan: Plan
    crm: CrmRecord


@dataclass
class SyncServices:
    """What the service needs, built once per process by the composition root."""

    store: StateStore
    crm: CrmSide
    exchange_for: Callable[[str], ExchangeSide]   # mailbox -> its Exchange side
    policy: Policy
    owner: str                                     # lease owner: host:pid
    lease_ttl_s: float = 60.0
    clock: Callable[[], datetime] = field(default=lambda: datetime.now().astimezone())
    new_account_no: Callable[[], str] | None = None
    #: Mailboxes whose every stamped contact is linked (checked once per process): a link row
    #: created just now then cannot have a contact yet, and its lookup can be skipped.
    trusted_mailboxes: set[str] = field(default_factory=set)


def apply_event(svc: SyncServices, event_id: int) -> Outcome:
    """Apply one event row. Raises LeaseTaken (retry soon), Transient (retry with back-off),
    BadRecord (dead letter); returns what it did."""
    event = svc.store.get_event(event_id)
    if event is None:
        log.warning("event.missing", event_id=event_id)
        return "missing"
    if event.status in ("applied", "dead"):
        return "done-already"
    outcome = _apply(svc, event)
    svc.store.mark_applied(event.id, outcome)
    log.info("event.applied", event_id=event.id, mailbox=event.mailbox, source=event.source,
             outcome=outcome)
    return outcome


def _apply(svc: SyncServices, event: Event) -> Outcome:
    exchange = svc.exchange_for(event.mailbox)
    crm_key = event.crm_key
    if crm_key is None:
        link = svc.store.find_link(event.mailbox, item_id=event.item_id)
        if link is not None:
            crm_key = link.crm_key
        else:
            crm_key = _key_for_unlinked_item(svc, exchange, event.item_id)
            if crm_key is None:
                return "gone"
    link = svc.store.acquire(event.mailbox, crm_key, event.item_id, svc.owner, svc.lease_ttl_s,
                             svc.clock())
    return _apply_link(svc, exchange, link)


def _apply_link(svc: SyncServices, exchange: ExchangeSide, link: Link) -> Outcome:
    """Read → reconcile → apply → commit for one leased link, re-reading after a lost race.
    Always ends with the lease committed or released."""
    committed = False
    try:
        for _ in range(MAX_STALE_ROUNDS):
            try:
                outcome, update = _sync_link(svc, exchange, link)
            except Stale as lost:
                log.info("apply.stale_reread", mailbox=link.mailbox, crm_key=link.crm_key, why=str(lost))
                continue
            crash_point("before_link_commit")
            if update is not None:
                svc.store.commit(link, update, svc.clock())
                committed = True
            return outcome
        raise Stale(f"{link.crm_key} in {link.mailbox}: still changing after {MAX_STALE_ROUNDS} re-reads")
    finally:
        if not committed:
            svc.store.release(link)


def _key_for_unlinked_item(svc: SyncServices, exchange: ExchangeSide, item_id: str | None) -> str | None:
    """An Exchange item with no link: its stamped key, or a new account key (not yet stamped)."""
    if item_id is None:
        return None
    item = exchange.read(item_id)
    if item is None or item.private:
        return None
    if item.crm_key:
        return item.crm_key
    new_no = svc.new_account_no() if svc.new_account_no else None
    if not new_no:
        raise BadRecord(f"item {item_id} in {exchange.mailbox}: no way to generate an account_no")
    return make_crm_key("account", new_no)


def _sync_link(svc: SyncServices, exchange: ExchangeSide, link: Link, first_read: Reads | None = None,
               defer_create: bool = False) -> tuple[Outcome, LinkUpdate | PendingCreate | None]:
    """One round of read → reconcile → apply. Returns the outcome and the link's new state
    (None: nothing to commit; a PendingCreate when ``defer_create`` leaves an Exchange create
    to the caller's bulk request). Raises Stale when a precondition failed (caller re-reads).
    ``first_read`` holds both sides as a batch just read them, saving the two reads."""
    kind, ident = parse_crm_key(link.crm_key)
    fields = fields_for(kind)
    if first_read is not None:
        crm, ex = first_read
    else:
        crm = svc.crm.read(link.crm_key)
        ex = exchange.read(link.item_id) if link.item_id else exchange.find_by_crm_key(link.crm_key)
    crm_live = crm is not None and crm.active
    was_synced = link.base is not None and not link.deleted

    if ex is not None and ex.private:
        return "private-skipped", None

    if link.deleted:
        if not crm_live or ex is not None:
            return "noop", None
        # A deactivated (or deleted) account came back in the CRM: treat it as a new pairing.
        link = _fresh(link)
        was_synced = False

    if not crm_live and ex is None:
        return ("gone" if not was_synced else "unlinked"), _deleted_update(link)

    if not crm_live:
        if was_synced:
            exchange.delete(ex.item_id, ex.change_key)
            crash_point("after_exchange_write")
            return "deleted-exchange", _deleted_update(link)
        if crm is not None and not crm.active:
            # Linked for the first time to an inactive account: keep both, sync nothing.
            return "noop", None
        return "created-crm", _create_crm(svc, exchange, link, kind, ident, ex, fields)

    if ex is None:
        if was_synced:
            if kind == "account":
                svc.crm.deactivate(link.crm_key, crm.version)
                crash_point("after_crm_write")
                return "deactivated-crm", _deleted_update(link)
            return "unlinked", _deleted_update(link)
        plan = plan_create_exchange(crm.record, fields)
        if defer_create:
            return "created-exchange", PendingCreate(plan, crm)
        created = exchange.create(link.crm_key, plan.to_exchange)
        crash_point("after_exchange_write")
        return "created-exchange", _update(svc, link, fields, plan.base, created, crm)

    return _merge(svc, exchange, link, fields, crm, ex)


def _create_crm(svc: SyncServices, exchange: ExchangeSide, link: Link, kind: str, ident: str,
                ex: ExchangeRecord, fields: tuple[str, ...]) -> LinkUpdate:
    if kind != "account":
        raise BadRecord(f"item {ex.item_id} in {exchange.mailbox}: stamped {link.crm_key}, "
                        "but that secondary contact no longer exists in the CRM")
    if ex.crm_key != link.crm_key:
        # Stamp first, so a crash before the CRM insert finds the same account_no again.
        ex = exchange.update(ex.item_id, {}, ex.change_key, crm_key=link.crm_key)
        crash_point("after_exchange_write")
    plan = plan_create_crm(ex.record, fields, svc.policy)
    crm = svc.crm.create_account(ident, plan.to_crm)
    crash_point("after_crm_write")
    return _update(svc, link, fields, plan.base, ex, crm)


def _merge(svc: SyncServices, exchange: ExchangeSide, link: Link, fields: tuple[str, ...],
           crm: CrmRecord, ex: ExchangeRecord) -> tuple[Outcome, LinkUpdate]:
    plan: Plan = reconcile(link.base if not link.deleted else None, crm.record, ex.record,
                           _policy(svc, link),
                           fields=fields, crm_modified_at=crm.modified_at,
                           exchange_modified_at=ex.modified_at)
    now = svc.clock()
    for c in plan.conflicts:
        svc.store.record_conflict(link.mailbox, link.crm_key, c.field, c.crm_value,
                                  c.exchange_value, c.chosen, now)
    if plan.to_exchange:
        ex = exchange.update(ex.item_id, plan.to_exchange, ex.change_key)
        crash_point("after_exchange_write")
    if plan.to_crm:
        crm = svc.crm.update(link.crm_key, plan.to_crm, crm.version)
        crash_point("after_crm_write")
    outcome: Outcome = "updated" if (plan.to_crm or plan.to_exchange) else "noop"
    return outcome, _update(svc, link, fields, plan.base, ex, crm)


def _policy(svc: SyncServices, link: Link) -> Policy:
    """Secondary contacts take their company name from the CRM account, never from Exchange."""
    kind, _ = parse_crm_key(link.crm_key)
    if kind == "contact":
        return Policy(conflict=svc.policy.conflict, region=svc.policy.region,
                      crm_readonly=svc.policy.crm_readonly | CONTACT_CRM_READONLY)
    return svc.policy


def _update(svc: SyncServices, link: Link, fields: tuple[str, ...], base: CanonicalContact,
            ex: ExchangeRecord, crm: CrmRecord) -> LinkUpdate:
    digest = content_hash(base, fields, region=svc.policy.region)
    return LinkUpdate(item_id=ex.item_id, change_key=ex.change_key, crm_version=crm.version,
                      base=base, crm_hash=digest, exchange_hash=digest)


def _deleted_update(link: Link) -> LinkUpdate:
    return LinkUpdate(item_id=link.item_id, change_key=link.change_key,
                      crm_version=link.crm_version, base=link.base, crm_hash=link.crm_hash,
                      exchange_hash=link.exchange_hash, deleted=True)


def _fresh(link: Link) -> Link:
    return replace(link, item_id=None, change_key=None, base=None, deleted=False)


# --------------------------------------------------------------------------------- batches

@dataclass(frozen=True)
class BatchResult:
    """Per event: what was done, or the error that the task maps to a retry or dead letter."""

    outcomes: dict[int, Outcome]
    errors: dict[int, BaseException]


def apply_events(svc: SyncServices, event_ids: list[int]) -> BatchResult:
    """Apply many events with few round trips: leases, reads, Exchange creates and link commits
    each go as one batch; everything else follows the single-event protocol per link. An event
    that cannot be done in the batch comes back in ``errors`` (LeaseTaken, Stale, Transient ...)
    so the caller retries it alone."""
    outcomes: dict[int, Outcome] = {}
    errors: dict[int, BaseException] = {}
    by_mailbox: dict[str, list[Event]] = {}
    found = svc.store.get_events(list(dict.fromkeys(event_ids)))
    for event_id in dict.fromkeys(event_ids):
        event = found.get(event_id)
        if event is None or event.status in ("applied", "dead"):
            outcomes[event_id] = "missing" if event is None else "done-already"
            continue
        by_mailbox.setdefault(event.mailbox, []).append(event)
    for mailbox, events in by_mailbox.items():
        try:
            _apply_mailbox_batch(svc, mailbox, events, outcomes, errors)
        except Transient as exc:   # e.g. Exchange down: every event of the batch waits
            for event in events:
                if event.id not in outcomes:
                    errors.setdefault(event.id, exc)
        except Exception:  # noqa: BLE001 - one record spoilt a bulk step: each on its own
            log.warning("events.batch_split", mailbox=mailbox, events=len(events))
            for event in events:
                if event.id not in outcomes and event.id not in errors:
                    _single(svc, event, outcomes, errors)
    done = {eid: outcome for eid, outcome in outcomes.items()
            if outcome not in ("missing", "done-already")}
    svc.store.mark_applied_many(done)
    if done:
        log.info("events.applied", count=len(done), failed=len(errors))
    return BatchResult(outcomes, errors)


def _apply_mailbox_batch(svc: SyncServices, mailbox: str, events: list[Event],
                         outcomes: dict[int, Outcome], errors: dict[int, BaseException]) -> None:
    exchange = svc.exchange_for(mailbox)
    keyed: dict[str, list[Event]] = {}
    item_of: dict[str, str | None] = {}
    for event in events:
        key = event.crm_key
        if key is None:
            link = svc.store.find_link(mailbox, item_id=event.item_id)
            if link is None:      # a contact new in Outlook: the careful single-event path
                _single(svc, event, outcomes, errors)
                continue
            key = link.crm_key
        keyed.setdefault(key, []).append(event)
        item_of.setdefault(key, event.item_id)
    if not keyed:
        return
    leased, refused, created = svc.store.acquire_many(mailbox, list(item_of.items()), svc.owner,
                                                      svc.lease_ttl_s, svc.clock())
    for key, why in refused.items():
        for event in keyed[key]:
            errors[event.id] = LeaseTaken(why)
    if not leased:
        return
    try:
        reads = _read_batch(svc, exchange, leased, created)
    except BaseException:
        svc.store.release_many(list(leased.values()))
        raise
    results: dict[str, Outcome | BaseException] = {}
    commits: list[tuple[Link, LinkUpdate]] = []
    creates: list[tuple[Link, PendingCreate]] = []
    to_release: list[Link] = []
    for key, link in leased.items():
        try:
            outcome, update = _sync_link(svc, exchange, link, reads[key], defer_create=True)
        except Stale:
            results[key] = _guarded(lambda link=link: _apply_link(svc, exchange, link))
            continue
        except Exception as exc:  # noqa: BLE001 - this link only; the batch carries on
            results[key] = exc
            to_release.append(link)
            continue
        results[key] = outcome
        if isinstance(update, PendingCreate):
            creates.append((link, update))
        elif update is None:
            to_release.append(link)
        else:
            commits.append((link, update))
    if creates:
        created = exchange.create_many([(link.crm_key, pending.plan.to_exchange)
                                        for link, pending in creates])
        crash_point("after_exchange_write")
        for (link, pending), rec in zip(creates, created, strict=True):
            if isinstance(rec, BaseException):
                results[link.crm_key] = rec
                to_release.append(link)
            else:
                fields = fields_for(parse_crm_key(link.crm_key)[0])
                commits.append((link, _update(svc, link, fields, pending.plan.base, rec, pending.crm)))
    crash_point("before_link_commit")
    failed = svc.store.commit_many(commits, svc.clock()) if commits else {}
    for key, why in failed.items():
        results[key] = Stale(why)
    svc.store.release_many(to_release)
    for key, result in results.items():
        for event in keyed[key]:
            if isinstance(result, BaseException):
                errors[event.id] = result
            else:
                outcomes[event.id] = result


def _read_batch(svc: SyncServices, exchange: ExchangeSide, leased: dict[str, Link],
                created: set[str]) -> dict[str, Reads]:
    """Both sides of every leased link, in bulk: CRM rows by key, Exchange items by id, and by
    stamped key where the link has no item yet — unless the link row was created just now in a
    mailbox whose stamped contacts are all linked: no attempt can have created its contact."""
    crm = svc.crm.read_many(list(leased))
    with_item = [link for link in leased.values() if link.item_id]
    by_item = dict(zip([link.crm_key for link in with_item],
                       exchange.read_many([link.item_id for link in with_item]), strict=True)
                   ) if with_item else {}
    without = [key for key, link in leased.items() if not link.item_id]
    if created and without and _all_stamps_linked(svc, exchange):
        without = [key for key in without if key not in created]
    by_key = exchange.find_many_by_crm_key(without) if without else {}
    return {key: (crm.get(key), by_item.get(key) if link.item_id else by_key.get(key))
            for key, link in leased.items()}


def _all_stamps_linked(svc: SyncServices, exchange: ExchangeSide) -> bool:
    mailbox = exchange.mailbox
    if mailbox not in svc.trusted_mailboxes:
        linked = sum(1 for link in svc.store.links_for_mailbox(mailbox)
                     if link.item_id and not link.deleted)
        if exchange.count_stamped() > linked:
            log.warning("exchange.unlinked_stamps", mailbox=mailbox,
                        hint="contacts carry crmsync stamps the state database does not know; "
                             "every new link is looked up in Exchange first")
            return False
        svc.trusted_mailboxes.add(mailbox)
    return True


def _single(svc: SyncServices, event: Event, outcomes: dict[int, Outcome],
            errors: dict[int, BaseException]) -> None:
    result = _guarded(lambda: _apply(svc, event))
    if isinstance(result, BaseException):
        errors[event.id] = result
    else:
        outcomes[event.id] = result


def _guarded(step: Callable[[], Outcome]) -> Outcome | BaseException:
    try:
        return step()
    except Exception as exc:  # noqa: BLE001 - reported per event by the caller
        return exc
