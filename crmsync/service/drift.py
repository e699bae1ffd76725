"""The periodic drift check of one mailbox (``crmsync beat``, DESIGN.md §4).

Every linked pair stores the content hash of the record as last synced (``crm_hash``,
``exchange_hash``). The check reads both sides of every live link in bulk, hashes them the way
the apply service does, and compares: nothing is written to either side. A side whose hash
differs changed without crmsync seeing it (a lost change notification, a feed reset, an edit
behind its back); for it, and only for it, an ordinary event is raised, which the workers apply
like any other. Missing records are reported, never turned into deletes (the feeds and the
delete brake own deletes).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import structlog

from crmsync.core.normalize import content_hash
from crmsync.ports import Link, NewEvent
from crmsync.service.apply import SyncServices
from schemas.canonical import fields_for, parse_crm_key

log = structlog.get_logger("crmsync.drift")


@dataclass
class DriftReport:
    """What one check found in one mailbox."""

    mailbox: str
    checked: int = 0
    crm_drift: list[str] = field(default_factory=list)       # CRM keys changed in the CRM
    exchange_drift: list[str] = field(default_factory=list)  # CRM keys whose contact changed
    missing: list[str] = field(default_factory=list)         # CRM keys with a side not found
    event_ids: list[int] = field(default_factory=list)       # the events raised now

    def summary(self) -> dict[str, object]:
        return {"mailbox": self.mailbox, "checked": self.checked, "crm_drift": len(self.crm_drift),
                "exchange_drift": len(self.exchange_drift), "missing": len(self.missing),
                "events": len(self.event_ids), "records": sorted({*self.crm_drift, *self.exchange_drift})[:20]}


def _checkable(link: Link, now: datetime) -> bool:
    """Links with both sides and a stored hash, not being applied right now (a held lease)."""
    until = link.lease_until
    if until is not None and until.tzinfo is None:     # SQLite hands back naive UTC times
        until = until.replace(tzinfo=UTC)
    leased = until is not None and until > now
    return (not link.deleted and not link.private and link.item_id is not None and link.base is not None
            and link.crm_hash is not None and link.exchange_hash is not None and not leased)


def check_drift(svc: SyncServices, mailbox: str, now: datetime,
                batch: int = 200, clock: Callable[[], datetime] | None = None) -> DriftReport:
    """Compare each link's hashes with both sides of ``mailbox``; raise events for drift only."""
    policy = svc.policy_for(mailbox) if svc.policy_for else svc.policy
    links = [link for link in svc.store.links_for_mailbox(mailbox) if _checkable(link, now)]
    report = DriftReport(mailbox, checked=len(links))
    exchange = svc.exchange_for(mailbox)
    events: list[NewEvent] = []
    for start in range(0, len(links), batch):
        chunk = links[start:start + batch]
        crm_records = svc.crm.read_many([link.crm_key for link in chunk])
        ex_records = exchange.read_many([link.item_id for link in chunk if link.item_id])
        for link, ex in zip(chunk, ex_records, strict=True):
            fields = fields_for(parse_crm_key(link.crm_key)[0])
            crm = crm_records.get(link.crm_key)
            if crm is None or ex is None or not crm.active or ex.private:
                report.missing.append(link.crm_key)   # the feeds handle deletes and privacy
                continue
            if content_hash(crm.record, fields, region=policy.region) != link.crm_hash:
                report.crm_drift.append(link.crm_key)
                events.append(NewEvent("crm", mailbox, "upsert", f"drift:crm:{mailbox}:{link.crm_key}:{crm.version}",
                                       crm_key=link.crm_key))
            if content_hash(ex.record, fields, region=policy.region) != link.exchange_hash:
                report.exchange_drift.append(link.crm_key)
                events.append(NewEvent("exchange", mailbox, "upsert",
                                       f"drift:ex:{mailbox}:{ex.item_id}:{ex.change_key}",
                                       crm_key=link.crm_key, item_id=ex.item_id))
    if events:
        report.event_ids = svc.store.add_events(events)
    log.info("drift.checked", **report.summary())
    return report
