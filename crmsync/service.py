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

from crmsync.errors import BadRecord, Stale
from crmsync.normalize import content_hash
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
from crmsync.reconcile import Plan, Policy, plan_create_crm, plan_create_exchange, reconcile
from crmsync.testhooks import crash_point
from schemas.canonical import (
    CONTACT_CRM_READONLY,
    CanonicalContact,
    crm_key as make_crm_key,
    fields_for,
    parse_crm_key,
)

log = structlog.get_logger("crmsync.service")

#: How often one event re-reads both sides after a lost optimistic-concurrency race.
MAX_STALE_ROUNDS = 5

Outcome = Literal[
    "missing", "done-already", "noop", "created-exchange", "created-crm", "updated",
    "deleted-exchange", "deactivated-crm", "unlinked", "private-skipped", "gone",
]


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
    item_id = event.item_id
    if crm_key is None:
        link = svc.store.find_link(event.mailbox, item_id=item_id)
        if link is not None:
            crm_key = link.crm_key
        else:
            crm_key = _key_for_unlinked_item(svc, exchange, item_id)
            if crm_key is None:
                return "gone"
    link = svc.store.acquire(event.mailbox, crm_key, item_id, svc.owner, svc.lease_ttl_s, svc.clock())
    committed = False
    try:
        for _ in range(MAX_STALE_ROUNDS):
            try:
                outcome, update = _sync_link(svc, exchange, link)
            except Stale as lost:
                log.info("apply.stale_reread", mailbox=event.mailbox, crm_key=crm_key, why=str(lost))
                continue
            crash_point("before_link_commit")
            if update is None:
                break
            svc.store.commit(link, update, svc.clock())
            committed = True
            return outcome
        else:
            raise Stale(f"{crm_key} in {event.mailbox}: still changing after {MAX_STALE_ROUNDS} re-reads")
        return outcome
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


def _sync_link(svc: SyncServices, exchange: ExchangeSide, link: Link) -> tuple[Outcome, LinkUpdate | None]:
    """One round of read → reconcile → apply. Returns the outcome and the link's new state
    (None: nothing to commit). Raises Stale when a precondition failed (caller re-reads)."""
    kind, ident = parse_crm_key(link.crm_key)
    fields = fields_for(kind)
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
