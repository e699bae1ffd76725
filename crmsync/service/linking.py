"""Linking before the first sync: which CRM records and Exchange contacts are the same person,
links made by hand or automatically, a dry-run plan of the first sync, and the first-sync gate.

Written against the ports only. A link made here is a link row with the contact's ItemId and no
base: the worker's next reconcile of that pair is a three-way merge with an empty base (a
two-way merge by policy), never a create. Nothing is written to either side by this module.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Literal, Protocol

from crmsync.core import matching
from crmsync.core.matching import Candidate, LinkDecision, MatchPolicy, NeedsPerson
from crmsync.core.reconcile import Policy, reconcile
from crmsync.core.second_source import decide
from crmsync.errors import CrmsyncError, LeaseTaken
from crmsync.ports import CrmRecord, ExchangeRecord, ExchangeSide, Link, StateStore
from schemas.canonical import CONTACT_CRM_READONLY, CanonicalContact, fields_for, parse_crm_key

FirstSyncMode = Literal["refuse-duplicates", "link-certain", "create-all"]
#: ``[[mailbox]] first_sync``: a non-empty, never-synced folder waits for `crmsync sync
#: --approve-plan` ("approve") or does not ("auto").
FirstSyncApproval = Literal["approve", "auto"]


def approval_cursor(mailbox: str) -> str:
    """The state database cursor holding a mailbox's first-sync approval."""
    return f"first_sync_approved:{mailbox}"


def waiting_cursor(mailbox: str) -> str:
    """The state database cursor holding why a mailbox's first sync waits ("" when it does not)."""
    return f"first_sync_waiting:{mailbox}"
#: (stage, done, total): long reads report their progress through this.
Progress = Callable[[str, int, int], None]

READ_CHUNK = 200


class LinkError(CrmsyncError):
    """A link or unlink that cannot be done (which record, why, what to do)."""


# ----------------------------------------------------------------------------- ports used here

class CrmDirectory(Protocol):
    """The CRM as this service reads it: every key, then the records in batches; and the
    bounded look-ups of the Link page (a person's search, the candidates of a contact)."""

    def all_keys(self) -> list[str]: ...

    def read_many(self, keys: list[str]) -> dict[str, CrmRecord]: ...

    def search(self, terms: matching.SearchTerms, limit: int = 200,
               with_contacts: bool = True) -> dict[str, CrmRecord]: ...

    def find_similar(self, emails: list[str], last_names: list[str], limit: int = 200) -> dict[str, CrmRecord]: ...


class FolderChange(Protocol):
    @property
    def item_id(self) -> str: ...

    @property
    def op(self) -> str: ...


class FolderFeed(Protocol):
    """A mailbox folder's change feed; from no state it lists every item (SyncFolderItems)."""

    def changes(self, sync_state: str | None,
                max_changes: int = 500) -> tuple[Sequence[FolderChange], str, bool]: ...


class LinkEditor(Protocol):
    """Removes a link row that was never synced (the state store's additive admin query)."""

    def remove_unsynced_link(self, mailbox: str, crm_key: str) -> bool: ...


# ----------------------------------------------------------------------------- results

@dataclass(frozen=True)
class Snapshot:
    """What a mailbox's first sync would see: the unlinked records on both sides."""

    mailbox: str
    crm: dict[str, CrmRecord]              # unlinked CRM records, by key
    exchange: dict[str, ExchangeRecord]    # unlinked, non-private Exchange contacts, by ItemId
    links: list[Link]
    private_items: int
    crm_total: int
    folder_total: int


@dataclass(frozen=True)
class MatchReport:
    snapshot: Snapshot
    candidates: tuple[Candidate, ...]      # at or above the requested score, best first
    decision: LinkDecision                 # what ``link auto`` at that score would do


@dataclass(frozen=True)
class AutoLinkResult:
    linked: tuple[Candidate, ...]
    needs_person: tuple[NeedsPerson, ...]
    failed: tuple[tuple[Candidate, str], ...]
    dry_run: bool


@dataclass(frozen=True)
class SearchHit:
    item: ExchangeRecord
    matched: tuple[str, ...]      # name | company | email | phone
    linked_to: str | None         # the CRM key it is linked to in this mailbox


@dataclass(frozen=True)
class RebuildResult:
    linked: tuple[Candidate, ...]
    left: tuple[tuple[str, str, str], ...]   # (crm_key or "", item_id or "", why it was not linked)


Action = Literal["merge", "create in Exchange", "create in CRM", "wait for review", "nothing", "skip (private)"]


@dataclass(frozen=True)
class PlanRow:
    side: str                  # "crm" | "exchange" | "pair"
    crm_key: str | None
    item_id: str | None
    name: str
    action: Action
    note: str = ""
    #: a merge: the fields the sync writes to each side (field -> new value), as it will
    #: reconcile the pair (a two-way merge by the mailbox's policy); empty for other actions
    to_crm: dict[str, str | None] = field(default_factory=dict)
    to_exchange: dict[str, str | None] = field(default_factory=dict)


@dataclass(frozen=True)
class FirstSyncPlan:
    mailbox: str
    mode: FirstSyncMode
    rows: tuple[PlanRow, ...]
    warnings: tuple[str, ...]
    held: str | None            # why the first sync would be refused now, or None

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for row in self.rows:
            out[row.action] = out.get(row.action, 0) + 1
        return out


def display_name(record: CanonicalContact) -> str:
    name = " ".join(p for p in (record.first_name, record.last_name) if p)
    company = record.company_name or ""
    if name and company:
        return f"{name} ({company})"
    return name or company or record.email or "(no name)"


def is_email_certain(cand: Candidate) -> bool:
    """A stamp, or the same e-mail address that no two people share on a side."""
    return cand.certain or any(ev.signal == "email" and not ev.note for ev in cand.agree)


def one_to_one(cands: Iterable[Candidate]) -> list[Candidate]:
    """The candidates whose CRM record and contact appear in no other candidate of the set."""
    cands = list(cands)
    crm_count: dict[str, int] = {}
    ex_count: dict[str, int] = {}
    for c in cands:
        crm_count[c.crm_key] = crm_count.get(c.crm_key, 0) + 1
        ex_count[c.exchange_key] = ex_count.get(c.exchange_key, 0) + 1
    return [c for c in cands if crm_count[c.crm_key] == 1 and ex_count[c.exchange_key] == 1]


def _similar(a: CanonicalContact, b: CanonicalContact) -> bool:
    """Whether the sync's look-up of a new record's candidates (``find_similar``: an e-mail
    address, any case, or the last name) would find ``b`` for ``a``."""
    def emails(r: CanonicalContact) -> set[str]:
        return {e.strip().lower() for e in (r.email, r.email2) if e and e.strip()}

    def last(r: CanonicalContact) -> str:
        return (r.last_name or "").strip().lower()
    return bool(emails(a) & emails(b)) or (last(a) != "" and last(a) == last(b))


# ----------------------------------------------------------------------------- the service

@dataclass
class LinkingService:
    store: StateStore
    crm: CrmDirectory
    exchange_for: Callable[[str], ExchangeSide]
    folder_for: Callable[[str], FolderFeed]
    editor: LinkEditor
    policy: MatchPolicy = field(default_factory=MatchPolicy)
    #: mailbox -> whether its secondary contacts are synced ([[mailbox]] secondary_contacts)
    with_contacts: Callable[[str], bool] = lambda _mailbox: True
    clock: Callable[[], datetime] = field(default=lambda: datetime.now().astimezone())
    #: mailbox -> its sync policy (conflicts, directions): the plan's merge diffs are reconciled
    #: with it, as the sync does; None: the default policy in the matcher's phone region
    sync_policy_for: Callable[[str], Policy] | None = None

    # ------------------------------------------------------------------ reading
    def snapshot(self, mailbox: str, progress: Progress | None = None) -> Snapshot:
        """Every unlinked CRM record and every unlinked Exchange contact of the mailbox's folder.
        Reads only: the folder is listed from no sync state, nothing is stored."""
        links = self.store.links_for_mailbox(mailbox)
        linked_keys = {link.crm_key for link in links}
        linked_items = {link.item_id for link in links if link.item_id}
        keys = [k for k in self.crm.all_keys()
                if self.with_contacts(mailbox) or not k.startswith("contact:")]
        crm: dict[str, CrmRecord] = {}
        todo = [k for k in keys if k not in linked_keys]
        for start in range(0, len(todo), READ_CHUNK):
            crm.update(self.crm.read_many(todo[start:start + READ_CHUNK]))
            if progress:
                progress("reading the CRM", min(start + READ_CHUNK, len(todo)), len(todo))
        crm = {k: r for k, r in crm.items() if r.active}

        item_ids = self._list_folder(mailbox)
        side = self.exchange_for(mailbox)
        exchange: dict[str, ExchangeRecord] = {}
        private = 0
        todo = [i for i in item_ids if i not in linked_items]
        for start in range(0, len(todo), READ_CHUNK):
            for rec in side.read_many(todo[start:start + READ_CHUNK]):
                if rec is None:
                    continue
                if rec.private:
                    private += 1
                else:
                    exchange[rec.item_id] = rec
            if progress:
                progress("reading the Exchange folder", min(start + READ_CHUNK, len(todo)), len(todo))
        return Snapshot(mailbox, crm, exchange, links, private, len(keys), len(item_ids))

    def _list_folder(self, mailbox: str) -> list[str]:
        feed = self.folder_for(mailbox)
        state: str | None = None
        ids: dict[str, None] = {}
        while True:
            changes, state, more = feed.changes(state, 500)
            for change in changes:
                if change.op == "delete":
                    ids.pop(change.item_id, None)
                else:
                    ids[change.item_id] = None
            if not more:
                return list(ids)

    def _candidates(self, snap: Snapshot) -> tuple[Candidate, ...]:
        found = matching.find_candidates(
            [matching.CrmRecord(k, r.record) for k, r in snap.crm.items()],
            [matching.ExchangeRecord(i, r.record, r.crm_key) for i, r in snap.exchange.items()],
            self.policy)
        return found.candidates

    # ------------------------------------------------------------------ match
    def match(self, mailbox: str, min_score: float = matching.DEFAULT_MIN_SCORE,
              progress: Progress | None = None, snap: Snapshot | None = None) -> MatchReport:
        """Candidate pairs scoring ``min_score`` or more, best first, and what automatic
        linking at that score would do with them."""
        snap = snap or self.snapshot(mailbox, progress)
        cands = self._candidates(snap)
        decision = matching.auto_links(cands, min_score)
        shown = sorted((c for c in cands if c.score >= min_score),
                       key=lambda c: (not c.certain, -c.score, c.crm_key, c.exchange_key))
        return MatchReport(snap, tuple(shown), decision)

    # ------------------------------------------------------------------ links by hand
    def link(self, mailbox: str, crm_key: str, item_id: str, *, crm: CrmRecord | None = None,
             item: ExchangeRecord | None = None) -> Link:
        """Link a CRM record and an Exchange contact; the next sync merges the two.
        Refuses (LinkError) when either is already linked, the contact is private, or either
        does not exist. ``crm`` / ``item`` are the records when just read (no second read)."""
        try:
            kind, _ = parse_crm_key(crm_key)
        except ValueError as exc:
            raise LinkError(str(exc)) from None
        if kind == "contact" and not self.with_contacts(mailbox):
            raise LinkError(f"{crm_key}: mailbox {mailbox} does not sync secondary contacts "
                            "(secondary_contacts = false)")
        crm = crm or self.crm.read_many([crm_key]).get(crm_key)
        if crm is None:
            raise LinkError(f"{crm_key}: no such record in the CRM")
        if not crm.active:
            raise LinkError(f"{crm_key}: the account is inactive; re-activate it in the CRM first")
        item = item or self.exchange_for(mailbox).read(item_id)
        if item is None:
            raise LinkError(f"item {item_id}: no such contact in the sync folder of {mailbox}")
        if item.private:
            raise LinkError(f"item {item_id} in {mailbox} is private: private contacts are never "
                            "synced to the CRM and cannot be linked")
        if item.crm_key and item.crm_key != crm_key:
            raise LinkError(f"item {item_id} in {mailbox} is already stamped with {item.crm_key}; "
                            f"it belongs to that record, not to {crm_key}")
        taken = self.store.find_link(mailbox, crm_key=crm_key)
        if taken is not None:
            raise LinkError(f"{crm_key} is already linked in {mailbox} "
                            f"(to item {taken.item_id or 'not created yet'}); "
                            f"`crmsync link remove {crm_key}` first if that link is wrong")
        taken = self.store.find_link(mailbox, item_id=item_id)
        if taken is not None:
            raise LinkError(f"item {item_id} is already linked in {mailbox} to {taken.crm_key}")
        owner = f"link-{uuid.uuid4().hex}"
        try:
            held = self.store.acquire(mailbox, crm_key, item_id, owner, 30.0, self.clock())
        except (LeaseTaken, CrmsyncError) as exc:
            raise LinkError(f"{crm_key} / item {item_id} in {mailbox}: {exc}") from None
        self.store.release(held)
        if held.item_id != item_id:
            raise LinkError(f"{crm_key} was linked in {mailbox} by a running sync meanwhile "
                            f"(to item {held.item_id or 'not created yet'}); nothing changed")
        return held

    def unlink(self, mailbox: str, key_or_item: str) -> Link:
        """Remove a link made before the first sync (by hand or automatically). A pair that
        was synced is refused: both sides hold the merged record already."""
        link = (self.store.find_link(mailbox, crm_key=key_or_item)
                or self.store.find_link(mailbox, item_id=key_or_item))
        if link is None:
            raise LinkError(f"{key_or_item}: no link in {mailbox} names this CRM key or item id")
        if link.base is not None or link.synced_at is not None:
            raise LinkError(f"{link.crm_key} and item {link.item_id} in {mailbox} were synced "
                            f"(at {link.synced_at or 'an earlier sync'}): both hold the merged "
                            "record now, and unlinking them would make the next change a second copy")
        if not self.editor.remove_unsynced_link(mailbox, link.crm_key):
            raise LinkError(f"{link.crm_key} in {mailbox}: the link is being synced right now; "
                            "nothing changed")
        return link

    def auto_link(self, mailbox: str, min_score: float = matching.DEFAULT_MIN_SCORE,
                  dry_run: bool = False, progress: Progress | None = None,
                  snap: Snapshot | None = None) -> AutoLinkResult:
        """Link every unambiguous pair scoring ``min_score`` or more (one-to-one only);
        ambiguous candidates come back for a person."""
        report = self.match(mailbox, min_score, progress, snap)
        return self._link_all(report.snapshot, report.decision.links, report.decision.needs_person, dry_run,
                              progress)

    def _link_all(self, snap: Snapshot, pairs: Sequence[Candidate], needs: Sequence[NeedsPerson],
                  dry_run: bool, progress: Progress | None = None) -> AutoLinkResult:
        linked: list[Candidate] = []
        failed: list[tuple[Candidate, str]] = []
        for n, cand in enumerate(pairs, 1):
            if progress:
                progress("linking", n, len(pairs))
            if dry_run:
                linked.append(cand)
                continue
            try:
                self.link(snap.mailbox, cand.crm_key, cand.exchange_key, crm=snap.crm.get(cand.crm_key),
                          item=snap.exchange.get(cand.exchange_key))
            except LinkError as exc:
                failed.append((cand, str(exc)))
            else:
                linked.append(cand)
        return AutoLinkResult(tuple(linked), tuple(needs), tuple(failed), dry_run)

    # ------------------------------------------------------------------ suggestions for one record
    #: The Link page's and `crmsync link search`'s look-ups are bounded: at most this many records
    #: are asked of either side per search (and per candidate look-up), whatever the sizes of the
    #: CRM and the folder.
    SEARCH_LIMIT = 200

    def _terms(self, text: str) -> matching.SearchTerms:
        if not text.strip():
            raise LinkError("search: give a name, company, e-mail address or phone number to look for")
        return matching.search_terms(text)

    def _unlinked_records(self, mailbox: str, found: dict[str, CrmRecord]) -> dict[str, CrmRecord]:
        return {k: r for k, r in found.items() if r.active and self.store.find_link(mailbox, crm_key=k) is None
                and (self.with_contacts(mailbox) or not k.startswith("contact:"))}

    def _unlinked_items(self, mailbox: str, found: Iterable[ExchangeRecord]) -> dict[str, ExchangeRecord]:
        return {r.item_id: r for r in found
                if not r.private and self.store.find_link(mailbox, item_id=r.item_id) is None}

    def suggest_for(self, mailbox: str, text: str, progress: Progress | None = None
                    ) -> list[tuple[str, CrmRecord, tuple[tuple[Candidate, ExchangeRecord], ...]]]:
        """The unlinked CRM records whose name, company, e-mail or phone match ``text``, each with
        its candidate Outlook contacts (unlinked, private ones never) and their records, best first.
        Bounded: the records come from the CRM's search (``SEARCH_LIMIT``), their candidates from
        one look-up of the folder by their e-mail addresses and last names (``find_similar``),
        scored by the matcher; neither side is read whole."""
        terms = self._terms(text)
        found = self.crm.search(terms, self.SEARCH_LIMIT, self.with_contacts(mailbox))
        picked = {k: r for k, r in self._unlinked_records(mailbox, found).items()
                  if matching.search_fields(text, r.record, self.policy.region)}
        emails = sorted({e for r in picked.values() for e in (r.record.email, r.record.email2) if e})
        surnames = sorted({r.record.last_name for r in picked.values() if r.record.last_name})
        side = self.exchange_for(mailbox)
        items = self._unlinked_items(mailbox, side.find_similar(emails, surnames, self.SEARCH_LIMIT)
                                     if picked else [])
        cands = matching.find_candidates(
            [matching.CrmRecord(k, r.record) for k, r in picked.items()],
            [matching.ExchangeRecord(i, r.record, r.crm_key) for i, r in items.items()], self.policy)
        per: dict[str, list[Candidate]] = {k: [] for k in picked}
        for cand in cands.candidates:
            per[cand.crm_key].append(cand)
        order = sorted(picked, key=lambda k: (display_name(picked[k].record).casefold(), k))
        return [(k, picked[k], tuple((c, items[c.exchange_key]) for c in sorted(per[k], key=lambda c: -c.score)))
                for k in order]

    def suggest_for_contacts(self, mailbox: str, text: str, progress: Progress | None = None,
                             hits: Sequence[SearchHit] | None = None
                             ) -> list[tuple[str, ExchangeRecord, tuple[tuple[Candidate, CrmRecord], ...]]]:
        """The same from the Outlook side: the unlinked contacts whose name, company, e-mail or
        phone match ``text`` (private ones never; the folder's bounded search, or ``hits``, what
        :meth:`search` answered for ``text`` just before), each with its candidate CRM records
        (one look-up by e-mail and last name, ``find_similar``), best first."""
        terms = self._terms(text)
        found = ([h.item for h in hits] if hits is not None
                 else self.exchange_for(mailbox).search(terms, self.SEARCH_LIMIT))
        picked = {i: r for i, r in self._unlinked_items(mailbox, found).items()
                  if matching.search_fields(text, r.record, self.policy.region)}
        emails = sorted({e for r in picked.values() for e in (r.record.email, r.record.email2) if e})
        surnames = sorted({r.record.last_name for r in picked.values() if r.record.last_name})
        records = self._unlinked_records(mailbox, self.crm.find_similar(emails, surnames, self.SEARCH_LIMIT)
                                         if picked else {})
        found = matching.find_candidates(
            [matching.CrmRecord(k, r.record) for k, r in records.items()],
            [matching.ExchangeRecord(i, r.record, r.crm_key) for i, r in picked.items()], self.policy)
        per: dict[str, list[Candidate]] = {i: [] for i in picked}
        for cand in found.candidates:
            per[cand.exchange_key].append(cand)
        order = sorted(picked, key=lambda i: (display_name(picked[i].record).casefold(), i))
        return [(i, picked[i], tuple((c, records[c.crm_key]) for c in sorted(per[i], key=lambda c: -c.score)))
                for i in order]

    # ------------------------------------------------------------------ search
    def search(self, mailbox: str, text: str, progress: Progress | None = None) -> list[SearchHit]:
        """The contacts of the mailbox's sync folder whose name, company, e-mail or phone match
        ``text`` (``matching.search_fields``), linked or not; private contacts are never shown.
        Bounded: the folder's own search (``ExchangeSide.search``, at most ``SEARCH_LIMIT``
        contacts) finds them, the matcher's rule decides; the folder is never read whole."""
        terms = self._terms(text)
        hits: list[SearchHit] = []
        for rec in self.exchange_for(mailbox).search(terms, self.SEARCH_LIMIT):
            if rec.private:
                continue
            found = matching.search_fields(text, rec.record, self.policy.region)
            if found:
                link = self.store.find_link(mailbox, item_id=rec.item_id)
                linked = link.crm_key if link is not None and not link.deleted and not link.private else None
                hits.append(SearchHit(rec, found, linked))
        if progress:
            progress("searching the Exchange folder", len(hits), len(hits))
        return sorted(hits, key=lambda h: (display_name(h.item.record).casefold(), h.item.item_id))

    # ------------------------------------------------------------------ rebuild
    def rebuild(self, mailbox: str, progress: Progress | None = None) -> RebuildResult:
        """After a lost state database (or a re-created mailbox): link again every pair that is
        certain: a contact stamped with a CRM key that exists, or the same e-mail address that no
        one else shares on either side, one-to-one. The links carry no base, so the next sync is
        a merge of two equal records: it writes nothing. Everything else is reported, unlinked."""
        snap = self.snapshot(mailbox, progress)
        cands = self._candidates(snap)
        certain = [c for c in cands if is_email_certain(c)]
        pairs = one_to_one(c for c in certain if c.certain)          # a stamp outranks an e-mail match
        stamped = {c.crm_key for c in pairs} | {c.exchange_key for c in pairs}
        pairs += one_to_one(c for c in certain if not c.certain
                            and c.crm_key not in stamped and c.exchange_key not in stamped)
        chosen = {(c.crm_key, c.exchange_key) for c in pairs}
        result = self._link_all(snap, pairs, (), dry_run=False, progress=progress)
        linked_crm = {c.crm_key for c in result.linked}
        linked_ex = {c.exchange_key for c in result.linked}
        left: list[tuple[str, str, str]] = []       # (crm_key or "", item_id or "", why)
        for cand, why in result.failed:
            left.append((cand.crm_key, cand.exchange_key, why))
        partner = {c.exchange_key: c.crm_key for c in result.linked} | {c.crm_key: c.exchange_key for c in result.linked}
        for cand in certain:
            if (cand.crm_key, cand.exchange_key) in chosen:
                continue
            if cand.exchange_key in partner:
                why = f"its e-mail match, item {cand.exchange_key}, was linked to {partner[cand.exchange_key]} by its stamp"
            elif cand.crm_key in partner:
                why = f"its e-mail match {cand.crm_key} was linked to item {partner[cand.crm_key]} by a stamp"
            else:
                why = "ambiguous: this record or contact has more than one certain match; link it by hand"
            left.append((cand.crm_key, cand.exchange_key, why))
        taken_crm = {c.crm_key for c in certain} | linked_crm
        taken_ex = {c.exchange_key for c in certain} | linked_ex
        for item_id, item in sorted(snap.exchange.items()):
            if item_id in taken_ex:
                continue
            if item.crm_key:
                why = (f"stamped {item.crm_key}, which is not an active record of the CRM (or is linked already): "
                       "the next sync creates it in the CRM")
            else:
                why = "no stamp and no exact e-mail match: the next sync creates it in the CRM"
            left.append(("", item_id, why))
        left.extend((key, "", "no stamped contact and no exact e-mail match: the next sync creates it in Exchange")
                    for key in sorted(snap.crm) if key not in taken_crm)
        return RebuildResult(result.linked, tuple(left))

    # ------------------------------------------------------------------ the first sync
    def probable_duplicates(self, cands: Iterable[Candidate], min_score: float) -> list[Candidate]:
        """Pairs a first sync would create twice: not proven by a stamp (the worker pairs those
        itself), scoring ``min_score`` or more."""
        return [c for c in cands if not c.certain and c.score >= min_score]

    def plan(self, mailbox: str, mode: FirstSyncMode = "refuse-duplicates",
             min_score: float = matching.DEFAULT_MIN_SCORE, progress: Progress | None = None) -> FirstSyncPlan:
        """A dry run of the mailbox's first sync: per record what it would do. Reads only.

        Matched pairs are counted as merges the way ``mode`` would treat them: with
        "refuse-duplicates" the pairs ``link auto`` links (needed before the sync may start),
        with "link-certain" the stamp / exact e-mail pairs, with "create-all" none."""
        snap = self.snapshot(mailbox, progress)
        cands = self._candidates(snap)
        rows: list[PlanRow] = []
        warnings: list[str] = []
        crm_all = {**snap.crm}
        pending = [link for link in snap.links if not (link.deleted or link.private or link.item_id is None)]
        linked = self.crm.read_many([link.crm_key for link in pending]) if pending else {}
        for link in pending:
            rec = linked.get(link.crm_key)
            name = display_name(rec.record) if rec is not None else link.crm_key
            if link.base is None:
                rows.append(PlanRow("pair", link.crm_key, link.item_id, name, "merge", "linked, not synced yet"))
            else:
                rows.append(PlanRow("pair", link.crm_key, link.item_id, name, "nothing",
                                    "synced before; later changes sync as usual"))

        stamps = [c for c in cands if c.certain]
        if mode == "create-all":
            merges, how = one_to_one(stamps), "stamped with this CRM key"
            decision_needs: tuple[NeedsPerson, ...] = ()
        elif mode == "link-certain":
            merges, how = one_to_one(c for c in cands if is_email_certain(c)), "linked by first_sync = link-certain"
            decision_needs = ()
        else:
            decision = matching.auto_links(cands, min_score)
            merges, how = list(decision.links), "linked by `crmsync link auto`"
            decision_needs = decision.needs_person
        merged_crm = {c.crm_key for c in merges}
        merged_ex = {c.exchange_key for c in merges}
        for c in merges:
            note = "stamped with this CRM key" if c.certain else f"{how} (score {c.score:.4f})"
            rows.append(PlanRow("pair", c.crm_key, c.exchange_key,
                                display_name(crm_all[c.crm_key].record), "merge", note))
        if mode == "create-all":
            # nothing is linked before the sync, but the sync treats each unlinked record as new
            # ([sync] on_new_record): a strong unambiguous pair is linked, not created twice
            links, waits = self._second_source(mailbox, [c for c in cands if not c.certain
                                                         and c.crm_key not in merged_crm
                                                         and c.exchange_key not in merged_ex
                                                         and _similar(snap.crm[c.crm_key].record,
                                                                      snap.exchange[c.exchange_key].record)])
            for c in links:
                rows.append(PlanRow("pair", c.crm_key, c.exchange_key, display_name(crm_all[c.crm_key].record),
                                    "merge", f"second source: linked instead of created (score {c.score:.4f})"))
            merged_crm |= {c.crm_key for c in links}
            merged_ex |= {c.exchange_key for c in links}
            for side, key, why in waits:
                if side == "crm":
                    rows.append(PlanRow("crm", key, None, display_name(snap.crm[key].record), "wait for review", why))
                    merged_crm.add(key)
                else:
                    rows.append(PlanRow("exchange", None, key, display_name(snap.exchange[key].record),
                                        "wait for review", why))
                    merged_ex.add(key)
        dup_by_crm: dict[str, Candidate] = {}
        dup_by_ex: dict[str, Candidate] = {}
        dups = [c for c in self.probable_duplicates(cands, min_score)
                if c.crm_key not in merged_crm and c.exchange_key not in merged_ex]
        for c in dups:
            dup_by_crm.setdefault(c.crm_key, c)
            dup_by_ex.setdefault(c.exchange_key, c)
        for key, rec in sorted(snap.crm.items()):
            if key in merged_crm:
                continue
            dup = dup_by_crm.get(key)
            note = f"probable duplicate of item {dup.exchange_key} (score {dup.score:.4f})" if dup else ""
            rows.append(PlanRow("crm", key, None, display_name(rec.record), "create in Exchange", note))
        for item_id, item in sorted(snap.exchange.items()):
            if item_id in merged_ex:
                continue
            dup = dup_by_ex.get(item_id)
            note = f"probable duplicate of {dup.crm_key} (score {dup.score:.4f})" if dup else ""
            if item.crm_key:
                note = f"stamped {item.crm_key}, not in the CRM: the account is created again" + (
                    f"; {note}" if note else "")
            rows.append(PlanRow("exchange", None, item_id, display_name(item.record), "create in CRM", note))
        if snap.private_items:
            rows.extend(PlanRow("exchange", None, None, "(private)", "skip (private)", "never read into the CRM")
                        for _ in range(snap.private_items))
        for c in dups:
            warnings.append(f"probable duplicate: {c.crm_key} ({display_name(crm_all[c.crm_key].record)}) and "
                            f"item {c.exchange_key} score {c.score:.4f}: both would be created on the other side")
        for need in decision_needs:
            if need.side == "crm":
                warnings.append(f"needs a person: {need.key}: {need.detail}")
        rows = self._with_diffs(mailbox, snap, pending, linked, rows)
        held = None
        unlinked_dups = self.probable_duplicates(cands, min_score)   # the gate's view: nothing linked yet
        if mode == "refuse-duplicates" and unlinked_dups and snap.crm and snap.exchange:
            held = self._held_message(mailbox, unlinked_dups)
        return FirstSyncPlan(mailbox, mode, tuple(rows), tuple(warnings), held)

    def _second_source(self, mailbox: str, cands: list[Candidate]
                       ) -> tuple[list[Candidate], list[tuple[str, str, str]]]:
        """What the sync's handling of new records (crmsync.core.second_source, as the apply
        service runs it) does with these candidate pairs: the pairs it links (each record's
        best, both ways, no rival) and the records it holds for review (side, key, why)."""
        mode = (self.sync_policy_for(mailbox) if self.sync_policy_for is not None else Policy()).on_new_record
        if mode == "create" or not cands:
            return [], []
        by_crm: dict[str, list[Candidate]] = {}
        by_ex: dict[str, list[Candidate]] = {}
        for c in cands:
            by_crm.setdefault(c.crm_key, []).append(c)
            by_ex.setdefault(c.exchange_key, []).append(c)
        crm_dec = {k: decide("crm", cs, mode) for k, cs in by_crm.items()}
        ex_dec = {i: decide("exchange", cs, mode) for i, cs in by_ex.items()}
        claimed_by_crm: dict[str, int] = {}
        claimed_by_ex: dict[str, int] = {}
        for d in crm_dec.values():
            if d.chosen is not None:
                claimed_by_crm[d.chosen.exchange_key] = claimed_by_crm.get(d.chosen.exchange_key, 0) + 1
        for d in ex_dec.values():
            if d.chosen is not None:
                claimed_by_ex[d.chosen.crm_key] = claimed_by_ex.get(d.chosen.crm_key, 0) + 1
        links: list[Candidate] = []
        linked_items: set[str] = set()
        for key, d in sorted(crm_dec.items()):
            c = d.chosen
            if c is None or claimed_by_crm[c.exchange_key] > 1:
                continue
            back = ex_dec.get(c.exchange_key)
            if back is not None and back.chosen is not None and back.chosen.crm_key == key \
                    and claimed_by_ex[key] == 1:
                links.append(c)
                linked_items.add(c.exchange_key)
        linked_keys = {c.crm_key for c in links}
        waits: list[tuple[str, str, str]] = []
        for key, d in sorted(crm_dec.items()):
            if key not in linked_keys and (d.action == "review" or d.chosen is not None):
                waits.append(("crm", key, f"review queue: {d.reason or 'its best match is contested'}"))
        for item, d in sorted(ex_dec.items()):
            if item not in linked_items and (d.action == "review" or d.chosen is not None):
                waits.append(("exchange", item, f"review queue: {d.reason or 'its best match is contested'}"))
        return links, waits

    def _with_diffs(self, mailbox: str, snap: Snapshot, pending: list[Link], linked: dict[str, CrmRecord],
                    rows: list[PlanRow]) -> list[PlanRow]:
        """Each merge row with the field writes the sync's reconcile would make (base: none yet)."""
        merges = [r for r in rows if r.action == "merge" and r.crm_key and r.item_id]
        if not merges:
            return rows
        policy = (self.sync_policy_for(mailbox) if self.sync_policy_for is not None
                  else Policy(region=self.policy.region))
        crm_recs: dict[str, CrmRecord] = {**snap.crm, **linked}
        ex_recs: dict[str, ExchangeRecord] = dict(snap.exchange)
        todo = [link.item_id for link in pending if link.base is None and link.item_id not in ex_recs]
        side = self.exchange_for(mailbox)
        for start in range(0, len(todo), READ_CHUNK):
            ex_recs.update((r.item_id, r) for r in side.read_many(todo[start:start + READ_CHUNK]) if r is not None)
        out = []
        for row in rows:
            crm, ex = crm_recs.get(row.crm_key or ""), ex_recs.get(row.item_id or "")
            if row.action != "merge" or crm is None or ex is None:
                out.append(row)
                continue
            kind = parse_crm_key(crm.key)[0]
            own = policy if kind == "account" else replace(
                policy, crm_readonly=policy.crm_readonly | CONTACT_CRM_READONLY)
            plan = reconcile(None, crm.record, ex.record, own, fields=fields_for(kind),
                             crm_modified_at=crm.modified_at, exchange_modified_at=ex.modified_at)
            out.append(replace(row, to_crm=dict(plan.to_crm), to_exchange=dict(plan.to_exchange)))
        return out

    def first_sync_gate(self, mailbox: str, mode: FirstSyncMode, approval: FirstSyncApproval = "approve",
                        min_score: float = matching.DEFAULT_MIN_SCORE) -> str | None:
        """Before a mailbox's first sync: None to go ahead, or why it must wait; the answer is
        kept in the state database for `crmsync status`.

        A folder that is not empty, of a mailbox no pair of which was ever synced, waits for
        `crmsync sync --approve-plan` (unless ``approval`` is "auto"). Then, per ``mode``:
        "link-certain" links the stamp / exact e-mail pairs (one-to-one) first,
        "refuse-duplicates" waits while probable duplicates are unlinked."""
        why = self._first_sync_hold(mailbox, mode, approval, min_score)
        self.store.add_events([], cursor=(waiting_cursor(mailbox), why or ""))
        return why

    def approved(self, mailbox: str) -> bool:
        return bool(self.store.get_cursor(approval_cursor(mailbox)))

    def waiting(self, mailbox: str) -> str | None:
        """Why the producer last held the mailbox's first sync, or None."""
        return self.store.get_cursor(waiting_cursor(mailbox)) or None

    def approve_first_sync(self, mailbox: str, mode: FirstSyncMode,
                           min_score: float = matching.DEFAULT_MIN_SCORE) -> FirstSyncPlan:
        """Record that a person looked at the mailbox's plan and lets its first sync start.
        Refused while the plan itself is held (probable duplicates, "refuse-duplicates")."""
        plan = self.plan(mailbox, mode, min_score)
        if plan.held:
            raise LinkError(f"{plan.held}\nNothing was approved.")
        self.store.add_events([], cursor=(approval_cursor(mailbox), "approved"))
        return plan

    def _first_sync_hold(self, mailbox: str, mode: FirstSyncMode, approval: FirstSyncApproval,
                         min_score: float) -> str | None:
        if approval == "approve" and not self.approved(mailbox):
            synced = any(link.base is not None for link in self.store.links_for_mailbox(mailbox))
            items = 0 if synced else len(self._list_folder(mailbox))
            if not items:   # nothing of the owner's to look at; contacts added later sync as usual
                self.store.add_events([], cursor=(approval_cursor(mailbox), "empty folder"))
            else:
                return (f"mailbox {mailbox}: first sync waiting for approval: its folder holds {items} item(s) "
                        f"and it was never synced. Review `crmsync plan --mailbox {mailbox}`, then "
                        f"`crmsync sync --mailbox {mailbox} --approve-plan` (or set first_sync = \"auto\" "
                        "in its [[mailbox]] section).")
        if mode == "create-all":
            return None
        snap = self.snapshot(mailbox)
        if not snap.crm or not snap.exchange:
            return None
        cands = self._candidates(snap)
        if mode == "link-certain":
            self._link_all(snap, one_to_one(c for c in cands if is_email_certain(c) and not c.certain),
                           (), dry_run=False)
            return None
        dups = self.probable_duplicates(cands, min_score)
        return self._held_message(mailbox, dups) if dups else None

    @staticmethod
    def _held_message(mailbox: str, dups: list[Candidate]) -> str:
        example = dups[0]
        return (f"mailbox {mailbox}: first sync held: {len(dups)} pair(s) of an unlinked CRM record and an "
                f"Outlook contact look like the same person (e.g. {example.crm_key} and item "
                f"{example.exchange_key}, score {example.score:.4f}); a first sync now would create each "
                f"twice. Review them with `crmsync plan --mailbox {mailbox}` and `crmsync link suggest --mailbox "
                f"{mailbox}`, link them with `crmsync link auto --mailbox {mailbox} --min-score "
                f"{matching.DEFAULT_MIN_SCORE}` (or by hand: `crmsync link add CRM_KEY ITEM_ID`), or set "
                "[sync] first_sync = \"link-certain\" or "
                "\"create-all\" to proceed anyway.")


__all__ = ["AutoLinkResult", "FirstSyncApproval", "FirstSyncMode", "FirstSyncPlan", "LinkError", "LinkingService", "MatchReport",
           "PlanRow", "RebuildResult", "SearchHit", "Snapshot", "approval_cursor", "display_name",
           "waiting_cursor"]
