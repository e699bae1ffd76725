"""In-memory sides and state store: the ports, without servers, for the service's unit tests."""

from __future__ import annotations

import itertools
import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

from crmsync.errors import BadRecord, LeaseTaken, Stale
from crmsync.ports import CrmRecord, Event, ExchangeRecord, HeldConflict, HeldDelete, Link, LinkUpdate, NewEvent
from schemas.canonical import CanonicalContact, parse_crm_key

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)


def _roughly(terms, record: CanonicalContact) -> bool:
    """A coarse superset of ``matching.search_fields`` (what a server's search returns): some
    word of the query in the name or company, its text in an e-mail, its digits' tail in a phone."""
    digits = lambda v: "".join(ch for ch in v or "" if ch.isdigit())  # noqa: E731
    text = " ".join(v or "" for v in (record.first_name, record.last_name, record.company_name)).casefold()
    return (any(w in text for w in terms.words)
            or any(terms.text in (e or "").casefold() for e in (record.email, record.email2))
            or bool(terms.digits and any(terms.phone_tail in digits(p) for p in (
                record.phone_business, record.phone_mobile, record.phone_home, record.fax))))


def _similar(record: CanonicalContact, emails, names) -> bool:
    mails = {e.casefold() for e in emails}
    return (any((e or "").casefold() in mails for e in (record.email, record.email2) if e)
            or (record.last_name or "").casefold() in {n.casefold() for n in names})


class FakeCrm:
    def __init__(self) -> None:
        self.rows: dict[str, dict] = {}
        self.writes = 0
        self._counter = itertools.count(1)

    def put(self, key: str, active: bool = True, modified_at: datetime = NOW, account: str | None = None,
            **values) -> None:
        self.rows[key] = {"record": CanonicalContact(**values), "active": active, "v": next(self._counter),
                          "at": modified_at, "account": account}

    def read(self, key: str) -> CrmRecord | None:
        row = self.rows.get(key)
        if row is None:
            return None
        return CrmRecord(key=key, record=row["record"], version=str(row["v"]), active=row["active"],
                         modified_at=row["at"])

    def update(self, key, changes, expect):
        row = self.rows.get(key)
        if row is None or str(row["v"]) != expect:
            raise Stale(f"{key} changed")
        data = row["record"].model_dump()
        kind, _ = parse_crm_key(key)
        data.update({k: v for k, v in changes.items() if not (kind == "contact" and k == "company_name")})
        row.update(record=CanonicalContact(**data), v=next(self._counter))
        self.writes += 1
        return self.read(key)

    def read_many(self, keys):
        return {k: r for k in keys if (r := self.read(k)) is not None}

    def create_account(self, account_no, values):
        key = f"account:{account_no}"
        if key not in self.rows:
            self.put(key, **values)
            self.writes += 1
        return self.read(key)

    def deactivate(self, key, expect):
        row = self.rows.get(key)
        if row is None:
            return None
        if expect is not None and str(row["v"]) != expect:
            raise Stale(f"{key} changed")
        if key.startswith("contact:") or not row["active"]:
            return self.read(key)
        row.update(active=False, v=next(self._counter))
        self.writes += 1
        return self.read(key)

    def delete_account(self, key, expect):
        row = self.rows.get(key)
        if row is None:
            return "gone"
        if expect is not None and str(row["v"]) != expect:
            raise Stale(f"{key} changed")
        if key.startswith("contact:"):
            return "deactivated"
        contacts = [k for k, r in self.rows.items() if k.startswith("contact:") and r.get("account") == key]
        if contacts:
            row.update(active=False, v=next(self._counter))
            self.writes += 1
            return "deactivated"
        del self.rows[key]
        self.writes += 1
        return "deleted"

    def reactivate(self, key, expect):
        row = self.rows.get(key)
        if row is None or str(row["v"]) != expect:
            raise Stale(f"{key} changed")
        if key.startswith("contact:") or row["active"]:
            return self.read(key)
        row.update(active=True, v=next(self._counter))
        self.writes += 1
        return self.read(key)

    def new_account_no(self) -> str:
        return f"EX-{uuid.uuid4().hex[:10].upper()}"

    def all_keys(self, inactive: bool = False) -> list[str]:
        """Active accounts (``inactive``: all), then secondary contacts (like SqlCrm.all_keys)."""
        accounts = [k for k, r in self.rows.items() if k.startswith("account:") and (r["active"] or inactive)]
        return accounts + [k for k in self.rows if k.startswith("contact:")]


class FakeExchange:
    mailbox = "alice@example.com"

    def __init__(self) -> None:
        self.items: dict[str, dict] = {}
        self.trash: dict[str, dict] = {}
        self.writes = 0
        self.folder_gone = False   # the sync folder was deleted (every read then finds nothing)

    def folder_state(self):
        if self.folder_gone:
            return "missing"
        return "ok" if self.items else "empty"

    def put(self, private: bool = False, crm_key: str | None = None, modified_at: datetime = NOW, **values) -> str:
        item_id = f"item-{uuid.uuid4().hex[:12]}"
        self.items[item_id] = {"record": CanonicalContact(**values), "ck": uuid.uuid4().hex,
                               "crm_key": crm_key, "private": private, "at": modified_at}
        return item_id

    def _rec(self, item_id: str, where: dict | None = None) -> ExchangeRecord:
        it = (self.items if where is None else where)[item_id]
        return ExchangeRecord(item_id=item_id, change_key=it["ck"],
                              record=CanonicalContact() if it["private"] else it["record"],
                              crm_key=it["crm_key"], private=it["private"], modified_at=it.get("at", NOW))

    def read(self, item_id):
        return self._rec(item_id) if item_id in self.items else None

    def find_by_crm_key(self, crm_key):
        return next((self._rec(i) for i, it in self.items.items() if it["crm_key"] == crm_key), None)

    def read_many(self, item_ids):
        self.batch_calls = getattr(self, "batch_calls", 0) + 1
        return [self.read(i) for i in item_ids]

    def find_many_by_crm_key(self, crm_keys):
        self.batch_calls = getattr(self, "batch_calls", 0) + 1
        if self.folder_gone:
            raise BadRecord(f"mailbox {self.mailbox}: looking up stamped contacts: ErrorFolderNotFound")
        return {k: r for k in crm_keys if (r := self.find_by_crm_key(k)) is not None}

    def find_deleted_by_crm_key(self, crm_key):
        return next((self._rec(i, self.trash) for i, it in self.trash.items() if it["crm_key"] == crm_key), None)

    def restore(self, item_id):
        if item_id not in self.trash:
            raise Stale(f"{item_id} is not in Deleted Items")
        new_id = f"item-{uuid.uuid4().hex[:12]}"   # Exchange gives a moved item a new id
        self.items[new_id] = {**self.trash.pop(item_id), "ck": uuid.uuid4().hex}
        self.writes += 1
        return self._rec(new_id)

    def create_many(self, entries):
        self.batch_calls = getattr(self, "batch_calls", 0) + 1
        return [self.create(key, values) for key, values in entries]

    def create(self, crm_key, values):
        item_id = self.put(crm_key=crm_key, **values)
        self.writes += 1
        return self._rec(item_id)

    def update(self, item_id, changes, expect_change_key, crm_key=None):
        it = self.items.get(item_id)
        if it is None or it["ck"] != expect_change_key:
            raise Stale(f"{item_id} changed")
        data = it["record"].model_dump()
        data.update(changes)
        it.update(record=CanonicalContact(**data), ck=uuid.uuid4().hex)
        if crm_key is not None:
            it["crm_key"] = crm_key
        self.writes += 1
        return self._rec(item_id)

    def changes(self, sync_state, max_changes=500):
        """The folder's feed from no state: every item as an upsert (like ExchangeFeed)."""
        if sync_state is not None:
            return [], sync_state, False
        return ([SimpleNamespace(item_id=i, change_key=it["ck"], op="upsert") for i, it in self.items.items()],
                "listed", False)

    def delete(self, item_id, change_key, hard=False):
        if item_id not in self.items:
            return
        if self.items[item_id]["ck"] != change_key:
            raise Stale(f"{item_id} changed")
        gone = self.items.pop(item_id)
        if not hard:
            self.trash[item_id] = gone
        self.writes += 1


class SearchCrm(FakeCrm):
    """FakeCrm with the bounded look-ups of the Link page (kept out of FakeCrm: the apply
    service's review of new records turns on when a side has ``find_similar``)."""

    def search(self, terms, limit=200, with_contacts=True):
        self.searches = getattr(self, "searches", 0) + 1
        keys = [k for k, row in self.rows.items() if row["active"] and (with_contacts or k.startswith("account:"))]
        return {k: r for k in keys if _roughly(terms, (r := self.read(k)).record)}

    def find_similar(self, emails, last_names, limit=200):
        return {k: r for k, row in self.rows.items() if k.startswith("account:") and row["active"]
                and _similar((r := self.read(k)).record, emails, last_names)}


class SearchExchange(FakeExchange):
    """FakeExchange with the folder's bounded look-ups (see SearchCrm)."""

    def search(self, terms, limit=200):
        """Private contacts match on their hidden fields, as on a server, and come back empty."""
        self.searches = getattr(self, "searches", 0) + 1
        return [self._rec(i) for i, it in self.items.items() if _roughly(terms, it["record"])][:limit]

    def find_similar(self, emails, surnames, limit=200):
        return [self._rec(i) for i, it in self.items.items() if _similar(it["record"], emails, surnames)][:limit]


class FakeStore:
    def __init__(self) -> None:
        self.events: dict[int, dict] = {}
        self.links: dict[int, Link] = {}
        self.conflicts: list[tuple] = []
        self._ids = itertools.count(1)
        self._lease: dict[int, tuple[str, datetime]] = {}
        self.cursors: dict[str, str] = {}

    # events
    def add_events(self, events: list[NewEvent], cursor=None) -> list[int]:
        if cursor is not None:
            self.cursors[cursor[0]] = cursor[1]
        ids = []
        for e in events:
            if any(x["dedup_key"] == e.dedup_key for x in self.events.values()):
                continue
            i = next(self._ids)
            self.events[i] = {**e.__dict__, "id": i, "status": "pending", "attempts": 0, "last_error": None}
            ids.append(i)
        return ids

    def get_cursor(self, name: str) -> str | None:
        return self.cursors.get(name)

    def event(self, **kw) -> int:
        kw.setdefault("dedup_key", uuid.uuid4().hex)
        kw.setdefault("mailbox", FakeExchange.mailbox)
        return self.add_events([NewEvent(**kw)])[0]

    def get_event(self, event_id):
        e = self.events.get(event_id)
        if e is None:
            return None
        return Event(id=e["id"], source=e["source"], mailbox=e["mailbox"], op=e["op"],
                     crm_key=e["crm_key"], item_id=e["item_id"], status=e["status"],
                     attempts=e["attempts"], last_error=e["last_error"], created_at=NOW)

    def get_events(self, event_ids):
        return {i: e for i in event_ids if (e := self.get_event(i)) is not None}

    def mark_applied(self, event_id, outcome=None):
        self.events[event_id].update(status="applied", outcome=outcome)

    def record_attempt(self, event_id, error):
        self.events[event_id]["attempts"] += 1
        self.events[event_id]["last_error"] = error
        return self.events[event_id]["attempts"]

    def mark_dead(self, event_id, error):
        self.events[event_id].update(status="dead", last_error=error)

    # links
    def find_link(self, mailbox, *, crm_key=None, item_id=None):
        for link in self.links.values():
            if link.mailbox == mailbox and ((crm_key and link.crm_key == crm_key)
                                            or (item_id and link.item_id == item_id)):
                return link
        return None

    def links_for_mailbox(self, mailbox):
        return [link for link in self.links.values() if link.mailbox == mailbox]

    def acquire(self, mailbox, crm_key, item_id, owner, ttl_seconds, now):
        link = self.find_link(mailbox, crm_key=crm_key)
        if link is None:
            if item_id and self.find_link(mailbox, item_id=item_id):
                raise LeaseTaken("item linked concurrently")
            link = Link(id=len(self.links) + 1, mailbox=mailbox, crm_key=crm_key, item_id=item_id,
                        change_key=None, crm_version=None, base=None, crm_hash=None, exchange_hash=None)
        held = self._lease.get(link.id)
        if held and held[1] > now:
            raise LeaseTaken(f"{crm_key} leased")
        token, until = uuid.uuid4().hex, now + timedelta(seconds=ttl_seconds)
        self._lease[link.id] = (token, until)
        self.links[link.id] = replace(link, lease_token=None, lease_until=None, fence=link.fence + 1)
        return replace(self.links[link.id], lease_token=token, lease_until=until)

    def renew_many(self, links, ttl_seconds, now):
        out = {}
        for link in links:
            held = self._lease.get(link.id)
            if held and held[0] == link.lease_token:
                self._lease[link.id] = (held[0], now + timedelta(seconds=ttl_seconds))
                out[link.crm_key] = replace(self.links[link.id], lease_token=held[0],
                                            lease_until=self._lease[link.id][1])
        return out

    def commit(self, link, update: LinkUpdate, now):
        held = self._lease.get(link.id)
        if held is None or held[0] != link.lease_token:
            raise Stale("lease lost")
        if update.item_id and any(other.item_id == update.item_id and other.id != link.id
                                  and other.mailbox == link.mailbox for other in self.links.values()):
            raise Stale(f"Exchange item {update.item_id} is already linked to another record")
        del self._lease[link.id]
        values = {k: v for k, v in update.__dict__.items()
                  if k not in ("conflicts", "writes", "action", "event_ids")}   # not link columns
        self.links[link.id] = replace(self.links[link.id], **values, synced_at=now)
        if update.private:
            self.conflicts = [c for c in self.conflicts if (c[0], c[1]) != (link.mailbox, link.crm_key)]
        self.conflicts.extend((link.mailbox, link.crm_key, c.field, c.crm_value, c.exchange_value, c.chosen, now)
                              for c in update.conflicts)
        return self.links[link.id]

    def release(self, link):
        held = self._lease.get(link.id)
        if held and held[0] == link.lease_token:
            del self._lease[link.id]

    def acquire_many(self, mailbox, wanted, owner, ttl_seconds, now):
        leased, refused = {}, {}
        for key, item_id in wanted:
            try:
                leased[key] = self.acquire(mailbox, key, item_id, owner, ttl_seconds, now)
            except LeaseTaken as exc:
                refused[key] = str(exc)
        return leased, refused

    def commit_many(self, commits, now):
        failed = {}
        for link, update in commits:
            try:
                self.commit(link, update, now)
            except Stale as exc:
                failed[link.crm_key] = str(exc)
        return failed

    def release_many(self, links):
        for link in links:
            self.release(link)

    def mark_applied_many(self, outcomes):
        for event_id, outcome in outcomes.items():
            self.mark_applied(event_id, outcome)

    def remove_unsynced_link(self, mailbox, crm_key):
        link = self.find_link(mailbox, crm_key=crm_key)
        lease = self._lease.get(link.id) if link is not None else None
        if (link is None or link.base is not None or link.synced_at is not None
                or (lease is not None and lease[1] > datetime.now(UTC))):
            return False
        del self.links[link.id]
        return True

    def mark_retrying(self, event_ids, now, due_at=None):
        for event_id in event_ids:
            if self.events[event_id]["status"] not in ("applied", "dead"):
                self.events[event_id].update(published_at=now, due_at=due_at or now)


class FakeHeldDeletes:
    """``HeldDeletes`` in memory; counts links in the FakeStore it is given."""

    COUNTED = ("passed", "held")

    def __init__(self, store: FakeStore) -> None:
        self.store = store
        self.rows: list[HeldDelete] = []

    def note(self, mailbox, entries, status, now, reason=None):
        out = []
        for key, side in entries:
            row = HeldDelete(len(self.rows) + 1, mailbox, key, side, status, now, reason)
            self.rows.append(row)
            out.append(row.id)
        return out

    def count_since(self, mailbox, since):
        return sum(1 for r in self.rows if r.mailbox == mailbox and r.noted_at >= since and r.status in self.COUNTED)

    def latest(self, mailbox, crm_keys):
        wanted = set(crm_keys)
        return {r.crm_key: r for r in self.rows if r.mailbox == mailbox and r.crm_key in wanted}

    def find(self, mailbox=None, statuses=("held",)):
        return [r for r in self.rows if r.status in statuses and (mailbox is None or r.mailbox == mailbox)]

    def set_status(self, ids, status, now, *, only_from=()):
        moved = []
        for i, r in enumerate(self.rows):
            if r.id in ids and (not only_from or r.status in only_from):
                self.rows[i] = replace(r, status=status)
                moved.append(r.id)
        return sorted(moved)

    def synced_links(self, mailbox):
        return sum(1 for link in self.store.links.values()
                   if link.mailbox == mailbox and link.base is not None and not link.deleted)


class FakeHeldConflicts:
    """``HeldConflicts`` in memory."""

    def __init__(self) -> None:
        self.rows: list[HeldConflict] = []

    def hold(self, mailbox, crm_key, fields, now):
        for name, crm_value, exchange_value, base_value in fields:
            values = {"crm_value": crm_value, "exchange_value": exchange_value, "base_value": base_value}
            for i, r in enumerate(self.rows):
                if (r.mailbox, r.crm_key, r.field, r.status) == (mailbox, crm_key, name, "held"):
                    self.rows[i] = replace(r, **values)
                    break
            else:
                self.rows.append(HeldConflict(len(self.rows) + 1, mailbox, crm_key, name, status="held",
                                              held_at=now, **values))

    def open_for(self, mailbox, crm_key):
        return {r.field: r for r in self.rows
                if r.mailbox == mailbox and r.crm_key == crm_key and r.status in ("held", "resolved")}

    def get(self, conflict_id):
        return next((r for r in self.rows if r.id == conflict_id), None)

    def find(self, mailbox=None, statuses=("held",)):
        return [r for r in self.rows if r.status in statuses and (mailbox is None or r.mailbox == mailbox)]

    def resolve(self, conflict_id, value, decided_by, now):
        for i, r in enumerate(self.rows):
            if r.id == conflict_id and r.status == "held":
                self.rows[i] = replace(r, status="resolved", value=value, decided_by=decided_by)
                return True
        return False

    def forget(self, mailbox, crm_key):
        self.rows = [r for r in self.rows if (r.mailbox, r.crm_key) != (mailbox, crm_key)]

    def mark_applied(self, ids, now):
        for i, r in enumerate(self.rows):
            if r.id in ids and r.status == "resolved":
                self.rows[i] = replace(r, status="applied")


class FakeReviewQueue:
    """The review queue of new records (crmsync.ports.ReviewQueue), in memory."""

    def __init__(self) -> None:
        from crmsync.ports import ReviewItem

        self._cls = ReviewItem
        self.rows: dict[int, ReviewItem] = {}
        self._ids = itertools.count(1)

    def hold(self, mailbox, side, record_key, name, candidates, reason, now):
        row = self.for_record(mailbox, side, record_key)
        if row is None:
            row = self._cls(id=next(self._ids), mailbox=mailbox, side=side, record_key=record_key, name=name,
                            candidates=tuple(candidates), reason=reason, status="open", held_at=now)
        elif row.status == "open":
            row = replace(row, name=name, candidates=tuple(candidates), reason=reason)
        self.rows[row.id] = row
        return row

    def for_record(self, mailbox, side, record_key):
        return next((r for r in self.rows.values()
                     if (r.mailbox, r.side, r.record_key) == (mailbox, side, record_key)), None)

    def get(self, item_id):
        return self.rows.get(item_id)

    def find(self, mailbox=None, statuses=("open",)):
        return [r for r in self.rows.values() if r.status in statuses and mailbox in (None, r.mailbox)]

    def decide(self, item_id, status, chosen, decided_by, now):
        row = self.rows.get(item_id)
        if row is None or row.status != "open":
            return False
        self.rows[item_id] = replace(row, status=status, chosen=chosen, decided_by=decided_by)
        return True

    def counts(self):
        out: dict[str, int] = {}
        for r in self.rows.values():
            if r.status == "open":
                out[r.mailbox] = out.get(r.mailbox, 0) + 1
        return out
