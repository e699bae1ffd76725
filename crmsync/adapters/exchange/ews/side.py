"""The EWS adapter of the ``ExchangeSide`` port: one mailbox's sync folder through exchangelib.

Decisions worth knowing:

* **Stamp.** Every contact crmsync creates carries the CRM key in a named extended property
  (PublicStrings, "crmsync-crm-key", String), registered on exchangelib's ``Contact`` once per
  process when the first adapter is built (never at import). ``create`` does not look the key
  up first: the worker does (``find_by_crm_key``) before deciding to create, per DESIGN §3.1.
* **Optimistic writes.** ``update`` sends only the changed fields with the expected ChangeKey
  and ``ConflictResolution=NeverOverwrite``; ErrorIrresolvableConflict is Stale. Indexed
  fields (emails, phones, addresses) are rewritten whole by exchangelib, so the update starts
  from the item as read (the copy kept from the last ``read`` when its ChangeKey is still the
  expected one, else one GetItem) to keep the user's other entries. A ChangeKey that no longer
  matches is Stale before anything is sent.
* **Gone is Stale.** Updating an item that was deleted or moved out of the folder raises Stale:
  the worker re-reads, finds None, and reconciles the delete. ``read`` returns None for such an
  item; ``delete`` of a gone item is a no-op.
* **Delete** moves to Deleted Items (recoverable), only if the item is still in this folder and,
  when a ChangeKey is given, still has it (else Stale: the user edited it, reconcile again).
* **Private.** A contact whose Sensitivity is in ``private_sensitivities`` (default {"Private"}),
  or, when ``only_categories`` is set, an unstamped contact carrying none of them, reads as
  ``private=True`` with an EMPTY record, so nothing of it reaches the CRM, the state database or
  a log line. Its ItemId, ChangeKey and our own stamp are kept. Writing to it is
  allowed (the worker's policy decides) but what is returned is still empty.
* **Records after a write** (``create``, ``update``) hold what was written (no extra GetItem)
  and ``modified_at=None``; the next ``read`` has the server's LastModifiedTime.
* **Errors** are crmsync's (see faults.py): Transient (retry_after from the server's back-off
  once exchangelib's bounded patience is exhausted), Stale, ConfigError (rights, mailbox),
  BadRecord (a value Exchange refuses).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Literal

import structlog
from exchangelib import Account, Contact, ExtendedProperty
from exchangelib.errors import ErrorFolderNotFound, ErrorItemNotFound
from exchangelib.fields import InvalidField
from exchangelib.items import HARD_DELETE, MOVE_TO_DELETED_ITEMS, NEVER_OVERWRITE

from crmsync.adapters.exchange.contact_rules import kept_out
from crmsync.adapters.exchange.ews.faults import ews_errors, translate
from crmsync.adapters.exchange.ews.mapping import (
    CONTACT_READ_FIELDS,
    EMAIL_LABELS,
    PHONE_LABELS,
    apply_changes,
    contact_kwargs,
    to_canonical,
)
from crmsync.core.matching import SearchTerms
from crmsync.errors import BadRecord, ConfigError, CrmsyncError, Stale, Transient
from crmsync.ports import Changes, ExchangeRecord
from schemas.canonical import CanonicalContact

log = structlog.get_logger(__name__)

#: The attribute name of the stamp on exchangelib's Contact.
CRM_KEY_ATTR = "crmsync_crm_key"
CRM_KEY_PROPERTY = "crmsync-crm-key"

DEFAULT_PRIVATE = frozenset({"Private"})


class CrmKeyProperty(ExtendedProperty):
    """The CRM key stamped on every contact crmsync creates (DESIGN §3: idempotent creates)."""

    distinguished_property_set_id = "PublicStrings"
    property_name = CRM_KEY_PROPERTY
    property_type = "String"


_register_lock = threading.Lock()


#: Terms (IsEqualTo) in one FindItem of ``find_similar``.
_SIMILAR_TERMS = 60


def register_crm_key_property() -> None:
    """Register the stamp on exchangelib's Contact, once per process (idempotent)."""
    with _register_lock:
        try:
            field = Contact.get_field_by_fieldname(CRM_KEY_ATTR)
        except InvalidField:
            Contact.register(CRM_KEY_ATTR, CrmKeyProperty)
            return
        cls = getattr(field, "value_cls", None)
        same = cls is not None and (
            getattr(cls, "distinguished_property_set_id", None),
            getattr(cls, "property_name", None),
            getattr(cls, "property_type", None),
        ) == ("PublicStrings", CRM_KEY_PROPERTY, "String")
        if not same:
            raise ConfigError(
                f"exchangelib Contact.{CRM_KEY_ATTR} is already registered with another definition ({cls!r}); "
                "crmsync needs it as the PublicStrings String property 'crmsync-crm-key'"
            )


#: Everything a read needs: the mapped fields, the stamp, privacy, folder and time.
FETCH_FIELDS: tuple[str, ...] = (
    *CONTACT_READ_FIELDS,
    CRM_KEY_ATTR,
    "sensitivity",
    "categories",
    "last_modified_time",
    "parent_folder_id",
)

def _utc(moment: datetime | None) -> datetime | None:
    """Exchange's LastModifiedTime (an exchangelib EWSDateTime) as a plain aware UTC datetime."""
    if moment is None:
        return None
    return datetime.fromisoformat(moment.isoformat()).astimezone(UTC)


_CACHE_SIZE = 512
_CHUNK = 100  # items per CreateItem / GetItem request (exchangelib's default chunk size)


class EwsExchange:
    """``ExchangeSide`` for one mailbox's sync folder (an exchangelib Account + ContactsFolder)."""

    def __init__(self, account: Account, folder, *, private_sensitivities: Iterable[str] = DEFAULT_PRIVATE,
                 chunk_size: int = _CHUNK, categories: Iterable[str] = (),
                 only_categories: Iterable[str] = (), mailbox: str | None = None) -> None:
        register_crm_key_property()
        self.account = account
        self.folder = folder
        #: The [[mailbox]] served (errors and MailboxUnavailable name it): the account's own
        #: address unless the folder is another mailbox's (``folder_owner``).
        self.mailbox: str = mailbox or account.primary_smtp_address
        self.private_sensitivities = frozenset(private_sensitivities)
        #: Exchange -> CRM: when set, an unstamped contact carrying none of these reads as private.
        self.only_categories = frozenset(only_categories)
        self.chunk_size = chunk_size
        #: Outlook categories stamped on every contact crmsync creates. Updates never touch
        #: categories, so the ones a user adds (and ours) stay.
        self.categories = tuple(categories)
        # Contacts as last read, by ItemId: lets update() skip a GetItem when the ChangeKey still matches.
        self._cache: OrderedDict[str, Contact] = OrderedDict()
        self._cache_lock = threading.Lock()

    # ------------------------------------------------------------------------- helpers

    def _in_folder(self, item: Contact) -> bool:
        parent = item.parent_folder_id
        return parent is None or parent.id == self.folder.id

    def _kept_out(self, item: Contact) -> bool:
        return kept_out(item.sensitivity, item.categories, bool(getattr(item, CRM_KEY_ATTR, None)),
                        self.private_sensitivities, self.only_categories)

    def _record(self, item: Contact) -> ExchangeRecord:
        private = self._kept_out(item)
        return ExchangeRecord(
            item_id=item.id,
            change_key=item.changekey,
            record=CanonicalContact() if private else to_canonical(item),
            crm_key=getattr(item, CRM_KEY_ATTR, None) or None,
            private=private,
            modified_at=_utc(item.last_modified_time),
        )

    def _remember(self, item: Contact) -> None:
        if self._kept_out(item):
            return
        with self._cache_lock:
            self._cache[item.id] = item
            self._cache.move_to_end(item.id)
            while len(self._cache) > _CACHE_SIZE:
                self._cache.popitem(last=False)

    def _take(self, item_id: str) -> Contact | None:
        with self._cache_lock:
            return self._cache.pop(item_id, None)

    def _fetch(self, item_ids: Sequence[str], doing: str) -> list[Contact | None]:
        """GetItem in chunks; None for an item that is gone or no longer in this folder."""
        out: list[Contact | None] = []
        with ews_errors(self.mailbox, doing):
            results = self.account.fetch(ids=[(i, None) for i in item_ids], folder=self.folder,
                                         only_fields=list(FETCH_FIELDS), chunk_size=self.chunk_size)
            for item_id, res in zip(item_ids, results, strict=True):
                if isinstance(res, ErrorItemNotFound):
                    out.append(None)
                elif isinstance(res, Exception):
                    raise translate(res, self.mailbox, f"{doing}: item {item_id}")
                elif not isinstance(res, Contact) or not self._in_folder(res):
                    out.append(None)
                else:
                    out.append(res)
        return out

    # ------------------------------------------------------------------------- the port

    def read(self, item_id: str) -> ExchangeRecord | None:
        """The contact now, or None when it is gone or no longer in the sync folder."""
        (item,) = self._fetch([item_id], f"reading item {item_id}")
        if item is None:
            return None
        self._remember(item)
        return self._record(item)

    def read_many(self, item_ids: Sequence[str]) -> list[ExchangeRecord | None]:
        """``read`` for many items in few GetItem requests; results in the order of ``item_ids``."""
        items = self._fetch(list(item_ids), f"reading {len(item_ids)} items")
        out: list[ExchangeRecord | None] = []
        for item in items:
            if item is not None:
                self._remember(item)
            out.append(self._record(item) if item is not None else None)
        return out

    def find_by_crm_key(self, crm_key: str) -> ExchangeRecord | None:
        """The contact in this folder stamped with ``crm_key`` (FindItem on the extended property)."""
        with ews_errors(self.mailbox, f"looking up {crm_key}"):
            ids = list(self.folder.filter(**{CRM_KEY_ATTR: crm_key}).values_list("id", "changekey"))
        if not ids:
            return None
        if len(ids) > 1:
            # Should never happen (creates are looked up first); report, and use a stable choice.
            log.warning("exchange.duplicate_stamp", mailbox=self.mailbox, crm_key=crm_key, count=len(ids))
            ids.sort()
        for item_id, _ck in ids:
            rec = self.read(item_id)
            if rec is not None:
                return rec
        return None

    def find_many_by_crm_key(self, crm_keys: Sequence[str], chunk: int | None = None) -> dict[str, ExchangeRecord]:
        """``find_by_crm_key`` for a batch: one FindItem per ``chunk`` keys (an Or of
        IsEqualTo on the stamp; default ``chunk_size``, so a worker's batch of creates is looked
        up in one request: each FindItem scans the whole folder), then one GetItem per
        ``chunk_size`` found contacts."""
        keys = list(dict.fromkeys(crm_keys))
        found: dict[str, str] = {}
        chunk = chunk or self.chunk_size
        for start in range(0, len(keys), chunk):
            part = keys[start:start + chunk]
            with ews_errors(self.mailbox, f"looking up {len(part)} stamped contacts"):
                rows = self.folder.filter(**{f"{CRM_KEY_ATTR}__in": part}).values_list("id", CRM_KEY_ATTR)
                for item_id, key in sorted(rows):
                    found.setdefault(key, item_id)
        records = self.read_many(list(found.values())) if found else []
        return {key: rec for key, rec in zip(found, records, strict=True) if rec is not None}

    def find_similar(self, emails: Sequence[str], surnames: Sequence[str], limit: int = 200) -> list[ExchangeRecord]:
        """Contacts of this folder carrying one of ``emails`` (any of the three addresses) or
        one of ``surnames``, case-insensitive: the candidates of new CRM records (FindItem with a
        flat Or of IsEqualTo per chunk of terms, then GetItem), at most ``limit``, those found by
        e-mail first."""
        from exchangelib import Q

        terms = [Q(**{f"email_addresses__EmailAddress{n}": e}) for e in dict.fromkeys(emails) if e for n in (1, 2, 3)]
        terms += [Q(surname=s) for s in dict.fromkeys(surnames) if s]
        ids: dict[str, None] = {}
        for start in range(0, len(terms), _SIMILAR_TERMS):   # a flat Or per FindItem, in chunks
            query = Q(*terms[start:start + _SIMILAR_TERMS], conn_type=Q.OR)
            with ews_errors(self.mailbox, "looking up similar contacts"):
                ids.update(dict.fromkeys(self.folder.filter(query).values_list("id", flat=True)))
            if len(ids) >= limit:
                break
        found = list(ids)[:limit]     # e-mail matches first: a cut drops surname-only ones
        return [rec for rec in self.read_many(found) if rec is not None] if found else []

    def search(self, terms: SearchTerms, limit: int = 200) -> list[ExchangeRecord]:
        """Contacts of this folder whose first or last name holds every word of ``terms`` (or
        whose company holds them), whose e-mail holds its text, or whose phone holds the query as
        typed or the last four digits of its number, case-insensitive: one FindItem with a
        Contains restriction, at most ``limit`` items, then GetItem. The Contains ignore case and
        accents (ContainmentComparison IgnoreCaseAndNonSpacingCharacters: "zoe" finds "Zoë" and
        "zoë" finds "Zoe"); letters that are not a base letter plus a mark (ø, ł) stay themselves.
        Private contacts come back as such (empty); ``matching.search_fields`` decides on the rest."""
        Q = _loose_q()

        if not terms.text:
            return []
        parts: list[Q] = []
        if terms.words:
            parts.append(Q(*[Q(given_name__icontains=w) | Q(surname__icontains=w) for w in terms.words]))
            parts.append(Q(*[Q(company_name__icontains=w) for w in terms.words]))
        parts += [Q(**{f"email_addresses__{label}__icontains": terms.text}) for label in EMAIL_LABELS.values()]
        if terms.digits:
            for label in PHONE_LABELS.values():
                parts.append(Q(**{f"phone_numbers__{label}__icontains": terms.text}))
                parts.append(Q(**{f"phone_numbers__{label}__contains": terms.digits[-4:]}))
        query = Q(*parts, conn_type=Q.OR)
        with ews_errors(self.mailbox, "searching the folder"):
            found = self.folder.filter(query).values_list("id", flat=True)
            found.page_size = limit     # one FindItem: each page would scan the folder again
            ids = list(found[:limit])
        return [rec for rec in self.read_many(ids) if rec is not None] if ids else []

    def find_deleted_by_crm_key(self, crm_key: str) -> ExchangeRecord | None:
        """The contact stamped with ``crm_key`` in the mailbox's Deleted Items (where crmsync's
        deletes put it), for a record re-activated in the CRM."""
        with ews_errors(self.mailbox, f"looking up {crm_key} in Deleted Items"):
            trash = self.account.trash
            rows = sorted(trash.filter(**{CRM_KEY_ATTR: crm_key}).values_list("id", "changekey"))
            if not rows:
                return None
            (item,) = self.account.fetch(ids=[rows[0]], only_fields=list(FETCH_FIELDS))
        if isinstance(item, Exception):
            return None
        return self._record(item)

    def restore(self, item_id: str) -> ExchangeRecord:
        """Move a contact from Deleted Items back into the sync folder; Exchange may give it a
        new ItemId, so it is read again by its stamp."""
        where = f"restoring item {item_id} from Deleted Items"
        with ews_errors(self.mailbox, where):
            (item,) = self.account.fetch(ids=[(item_id, None)], only_fields=["id", "changekey", CRM_KEY_ATTR])
            if isinstance(item, Exception):
                raise Stale(f"mailbox {self.mailbox}: {where}: the item is gone")
            crm_key = getattr(item, CRM_KEY_ATTR, None)
            (moved,) = self.account.bulk_move(ids=[(item.id, item.changekey)], to_folder=self.folder)
        if isinstance(moved, Exception):
            raise translate(moved, self.mailbox, where)
        new_id = moved[0] if isinstance(moved, tuple) else None   # (ItemId, ChangeKey), or None
        rec = self.read(new_id) if new_id else None
        if rec is None and crm_key:
            rec = self.find_by_crm_key(crm_key)
        if rec is None:
            raise Stale(f"mailbox {self.mailbox}: {where}: not found in the sync folder after the move")
        return rec

    def stamped_items(self) -> dict[str, tuple[str, str]]:
        """crm_key -> (item_id, change_key) for every stamped contact in the folder (rebuilding links)."""
        out: dict[str, tuple[str, str]] = {}
        with ews_errors(self.mailbox, "listing stamped contacts"):
            qs = self.folder.filter(**{f"{CRM_KEY_ATTR}__exists": True}).only(CRM_KEY_ATTR)
            for item in qs:
                key = getattr(item, CRM_KEY_ATTR, None)
                if key and key not in out:
                    out[key] = (item.id, item.changekey)
        return out

    def _new_contact(self, crm_key: str, values: Changes) -> Contact:
        try:
            kwargs = contact_kwargs(values)
        except BadRecord as e:
            raise BadRecord(f"mailbox {self.mailbox}: {crm_key}: {e}") from None
        kwargs[CRM_KEY_ATTR] = crm_key
        if self.categories:
            kwargs["categories"] = list(self.categories)
        return Contact(account=self.account, folder=self.folder, **kwargs)

    def _created(self, contact: Contact, item_id: str, change_key: str, crm_key: str) -> ExchangeRecord:
        # The server returns only the new ids; the record is what we wrote (no extra GetItem).
        return ExchangeRecord(item_id=item_id, change_key=change_key, record=to_canonical(contact), crm_key=crm_key)

    def create(self, crm_key: str, values: Changes) -> ExchangeRecord:
        """Create a contact stamped with ``crm_key`` in the sync folder."""
        (res,) = self.create_many([(crm_key, values)])
        if isinstance(res, BaseException):
            raise res
        return res

    def create_many(self, entries: Sequence[tuple[str, Changes]]) -> list[ExchangeRecord | CrmsyncError]:
        """Bulk create (CreateItem, ``chunk_size`` contacts per request), stamped.

        Returns, in input order, an ExchangeRecord or the error for that entry (BadRecord for a
        value Exchange cannot hold, Transient for a chunk the server did not take). Never raises
        for one entry. A chunk refused as a whole for a non-transient reason is retried one
        contact per request so only the bad entry fails; once a chunk fails transiently, the
        remaining chunks are not sent and carry the same Transient, so the caller knows exactly
        which entries to retry (look them up by their stamp first: a lost reply may hide a create).
        """
        results: list[ExchangeRecord | CrmsyncError | None] = [None] * len(entries)
        pending: list[tuple[int, str, Contact]] = []
        for i, (crm_key, values) in enumerate(entries):
            try:
                pending.append((i, crm_key, self._new_contact(crm_key, values)))
            except CrmsyncError as e:
                results[i] = e
        failed: Transient | None = None
        for start in range(0, len(pending), self.chunk_size):
            chunk = pending[start:start + self.chunk_size]
            if failed is None:
                try:
                    self._create_chunk(chunk, results)
                except Transient as e:
                    failed = e
                except CrmsyncError as e:
                    if len(chunk) == 1:
                        results[chunk[0][0]] = e
                        continue
                    # The request as a whole was refused (e.g. a schema error in one value):
                    # send the contacts one by one so the bad one alone carries the error.
                    for one in chunk:
                        try:
                            self._create_chunk([one], results)
                        except Transient as e:
                            failed = e
                            break
                        except CrmsyncError as e:
                            results[one[0]] = e
            if failed is not None:
                for i, _, _ in chunk:
                    if results[i] is None:
                        results[i] = failed
        return results  # type: ignore[return-value]

    def _create_chunk(self, chunk: list[tuple[int, str, Contact]],
                      results: list[ExchangeRecord | CrmsyncError | None]) -> None:
        """One CreateItem request; per-item outcomes go into ``results``, request errors raise."""
        doing = f"creating {len(chunk)} contact(s)" + (f" ({chunk[0][1]})" if len(chunk) == 1 else "")
        with ews_errors(self.mailbox, doing):
            try:
                created = self.account.bulk_create(folder=self.folder, items=[c for _, _, c in chunk],
                                                   chunk_size=self.chunk_size)
            except (ValueError, TypeError) as e:  # exchangelib's own validation of a value
                raise BadRecord(f"mailbox {self.mailbox}: {doing}: {e}") from None
        for (i, crm_key, contact), res in zip(chunk, created, strict=True):
            if isinstance(res, Exception):
                err = translate(res, self.mailbox, f"creating {crm_key}")
                results[i] = err if isinstance(err, CrmsyncError) else BadRecord(
                    f"mailbox {self.mailbox}: creating {crm_key}: {type(res).__name__}: {res}")
            else:
                results[i] = self._created(contact, res.id, res.changekey, crm_key)

    def update(self, item_id: str, changes: Changes, expect_change_key: str,
               crm_key: str | None = None) -> ExchangeRecord:
        """Write only ``changes`` if the item still has ``expect_change_key``; else Stale.

        A non-None ``crm_key`` also (re)stamps the extended property. An item that is gone or
        moved out of the folder is Stale too (re-read: the worker sees the delete).
        """
        where = f"updating item {item_id}" + (f" ({crm_key})" if crm_key else "")
        contact = self._take(item_id)
        if contact is None or contact.changekey != expect_change_key:
            (contact,) = self._fetch([item_id], where)
        if contact is None:
            raise Stale(f"mailbox {self.mailbox}: {where}: the item was deleted or moved out of the sync folder")
        if contact.changekey != expect_change_key:
            raise Stale(f"mailbox {self.mailbox}: {where}: ChangeKey changed since it was read")
        try:
            fields = apply_changes(contact, changes)
        except BadRecord as e:
            raise BadRecord(f"mailbox {self.mailbox}: {where}: {e}") from None
        if crm_key is not None and getattr(contact, CRM_KEY_ATTR, None) != crm_key:
            setattr(contact, CRM_KEY_ATTR, crm_key)
            fields.append(CRM_KEY_ATTR)
        if fields:
            with ews_errors(self.mailbox, where):
                try:
                    contact.save(update_fields=fields, conflict_resolution=NEVER_OVERWRITE)
                except ErrorItemNotFound:
                    raise Stale(f"mailbox {self.mailbox}: {where}: the item was deleted meanwhile") from None
            # LastModifiedTime is the server's; unknown until the next read.
            contact.last_modified_time = None
        self._remember(contact)
        return self._record(contact)

    def delete(self, item_id: str, change_key: str, hard: bool = False) -> None:
        """Move the contact to Deleted Items (recoverable; ``hard``: HardDelete, gone for good).
        Gone or moved away: nothing to do.

        Stale when the item has changed since ``change_key`` was read (someone edited it).
        """
        where = f"deleting item {item_id}"
        self._take(item_id)
        (item,) = self._fetch([item_id], where)
        if item is None:
            return
        if item.changekey != change_key:
            raise Stale(f"mailbox {self.mailbox}: {where}: the contact changed since it was read")
        with ews_errors(self.mailbox, where):
            (res,) = self.account.bulk_delete(ids=[(item.id, item.changekey)],
                                              delete_type=HARD_DELETE if hard else MOVE_TO_DELETED_ITEMS)
        if isinstance(res, ErrorItemNotFound):
            return
        if isinstance(res, Exception):
            raise translate(res, self.mailbox, where)


    def folder_state(self) -> Literal["ok", "empty", "missing"]:
        """One FindItem for at most one item of the sync folder: "missing" when the folder is
        gone (ErrorFolderNotFound: deleted, or emptied out of Deleted Items), else whether it
        holds any item (the empty-folder guard asks this before deletes cross)."""
        with ews_errors(self.mailbox, "checking the sync folder"):
            try:
                return "ok" if list(self.folder.all().values_list("id")[:1]) else "empty"
            except (ErrorFolderNotFound, ErrorItemNotFound):
                return "missing"


_LOOSE_Q: type | None = None


def _loose_q() -> type:
    """exchangelib's Q, except that its case-insensitive lookups (``__icontains`` and the like)
    ask Exchange to ignore non-spacing characters too (ContainmentComparison
    IgnoreCaseAndNonSpacingCharacters, where exchangelib always sends IgnoreCase). Built on first
    use (exchangelib is imported lazily). A query must keep at least two terms at its top: a lone
    term is copied into a plain Q by the QuerySet (and asks IgnoreCase again)."""
    global _LOOSE_Q
    if _LOOSE_Q is None:
        from exchangelib import Q

        class LooseQ(Q):
            __slots__ = ()

            @classmethod
            def _op_to_xml(cls, op):  # type: ignore[no-untyped-def]
                elem = super()._op_to_xml(op)
                if elem.get("ContainmentComparison") == "IgnoreCase":
                    elem.set("ContainmentComparison", "IgnoreCaseAndNonSpacingCharacters")
                return elem

        _LOOSE_Q = LooseQ
    return _LOOSE_Q
