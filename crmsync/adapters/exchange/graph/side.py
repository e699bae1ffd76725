"""The Microsoft Graph adapter of the ``ExchangeSide`` port: one mailbox's sync folder.

Decisions worth knowing (the EWS adapter's, in Graph's terms):

* **Ids.** Immutable ids (``Prefer: IdType="ImmutableId"`` on every request). An id in EWS form
  (a link made before the mailbox moved to Graph) is sent in its URL-safe REST form; the records
  returned carry Graph's ids, so the links re-learn them. The port's ChangeKey is Graph's
  ``changeKey``; the ETag Graph checks is ``W/"<changeKey>"``.
* **Stamp.** The CRM key is the named extended property EWS uses
  (``String {00020329-0000-0000-C000-000000000046} Name crmsync-crm-key``), so a contact stamped
  over EWS is found over Graph. Lookups are ``$filter=singleValueExtendedProperties/Any(...)``;
  reads ``$expand`` the stamp, PidTagSensitivity and the fax.
* **Optimistic writes.** PATCH and DELETE carry ``If-Match``; 412 is Stale. ``update`` reads
  the contact first (to keep the user's other list entries, and to say Stale before sending
  when the ChangeKey already moved on).
* **Delete** is Graph's DELETE, which moves a contact to Deleted Items (``permanentDelete`` would
  not): recoverable by the user, as over EWS.
* **Deleted Items.** Graph v1.0 cannot list or search the contacts in Deleted Items (it is a
  mail folder; contacts are only reachable by id there), so ``find_deleted_by_crm_key`` answers
  None and the service creates the contact again. ``restore(item_id)`` re-creates the contact
  from its deleted copy (GET by id works in any folder) in the sync folder and removes the copy;
  Graph v1.0 has no move action for contacts.
* **Private.** PidTagSensitivity (``Integer 0x0036``) in ``private_sensitivities``, or (when
  ``only_categories`` is set) an unstamped contact carrying none of those categories, reads as
  ``private=True`` with an empty record, exactly as over EWS.
* **Search** (the Link page, ``link search``) sends only the ``$filter`` shapes Graph runs on
  contacts: ``startswith`` on names and company, ``emailAddresses/any(a: a/address eq ...)`` for a
  whole address, ``startswith(mobilePhone, ...)``. A part of an address and the business and home
  phones are not searchable over Graph (see ``search``).
* **Batches.** ``read_many``, ``find_many_by_crm_key`` and ``create_many`` use ``$batch``
  (20 requests per batch).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any, Literal
from urllib.parse import quote

import structlog

from crmsync.adapters.exchange.contact_rules import kept_out
from crmsync.adapters.exchange.graph import mapping
from crmsync.adapters.exchange.graph.client import GraphClient, error_code, translate
from crmsync.adapters.exchange.graph.connect import user_path
from crmsync.core.matching import SearchTerms
from crmsync.errors import BadRecord, ConfigError, CrmsyncError, Stale, Transient
from crmsync.ports import Changes, ExchangeRecord
from schemas.canonical import CanonicalContact

log = structlog.get_logger(__name__)

DEFAULT_PRIVATE = frozenset({"Private"})
_PAGE = 100


_WHOLE_ADDRESS = re.compile(r"[^@\s]+@[^@\s]+")   # what Graph can look up: eq on a whole address


def _odata_string(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def stamp_filter(crm_key: str) -> str:
    return (f"singleValueExtendedProperties/Any(ep: ep/id eq {_odata_string(mapping.CRM_KEY_ID)}"
            f" and ep/value eq {_odata_string(crm_key)})")


def rest_id(item_id: str) -> str:
    """The Graph (REST) form of an item id. An EWS ItemId (standard base64, as links made over EWS
    hold) becomes its URL-safe REST form, which Graph accepts; a Graph id is unchanged."""
    return item_id.replace("+", "-").replace("/", "_")


def _when(value: Any) -> datetime | None:
    if not value:
        return None
    try:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None


class GraphExchange:
    """``ExchangeSide`` for one mailbox's sync folder over Microsoft Graph."""

    def __init__(self, client: GraphClient, mailbox: str, folder_id: str, *,
                 private_sensitivities: Iterable[str] = DEFAULT_PRIVATE, only_categories: Iterable[str] = ()) -> None:
        self.client = client
        self.mailbox = mailbox
        self.folder_id = folder_id
        self.private_sensitivities = frozenset(private_sensitivities)
        self.only_categories = frozenset(only_categories)
        self._user = user_path(mailbox)
        self._folder = f"{self._user}/contactFolders/{quote(folder_id, safe='')}"

    # ------------------------------------------------------------------------- helpers

    def _contact_url(self, item_id: str) -> str:
        return f"{self._folder}/contacts/{quote(rest_id(item_id), safe='')}"

    def _where(self, doing: str) -> str:
        return f"mailbox {self.mailbox}: {doing}"

    def _record(self, contact: dict, crm_key: str | None = None) -> ExchangeRecord:
        stamp = crm_key if crm_key is not None else mapping.crm_key_of(contact)
        private = kept_out(mapping.sensitivity_of(contact), contact.get("categories"), bool(stamp),
                           self.private_sensitivities, self.only_categories)
        return ExchangeRecord(
            item_id=contact["id"], change_key=contact.get("changeKey") or "",
            record=CanonicalContact() if private else mapping.to_canonical(contact),
            crm_key=crm_key if crm_key is not None else mapping.crm_key_of(contact),
            private=private, modified_at=_when(contact.get("lastModifiedDateTime")),
        )

    def _get(self, item_id: str, doing: str) -> dict | None:
        resp = self.client.request("GET", self._contact_url(item_id), where=self._where(doing), mailbox=self.mailbox,
                                   params={"$expand": mapping.EXPAND}, allow=(400, 404))
        if resp.status_code == 404 or (resp.status_code == 400 and error_code(resp.json()) == "ErrorInvalidIdMalformed"):
            return None
        if resp.status_code >= 400:
            raise translate(resp.status_code, resp.headers, resp.json(), self._where(doing), self.mailbox)
        return resp.json()

    def _get_many(self, item_ids: Sequence[str], doing: str) -> list[dict | None]:
        answers = self.client.batch(
            [{"method": "GET", "url": f"{self._contact_url(i)}?$expand={quote(mapping.EXPAND, safe='$=()')}"}
             for i in item_ids], where=self._where(doing), mailbox=self.mailbox)
        out: list[dict | None] = []
        for item_id, (status, headers, body) in zip(item_ids, answers, strict=True):
            if status == 404 or (status == 400 and error_code(body) == "ErrorInvalidIdMalformed"):
                out.append(None)
            elif status >= 400:
                raise translate(status, headers, body, self._where(f"{doing}: item {item_id}"), self.mailbox)
            else:
                out.append(body)
        return out

    def _list(self, url: str, params: dict[str, str], doing: str) -> list[dict]:
        out: list[dict] = []
        next_url: str | None = url
        query: dict[str, str] | None = params
        while next_url:
            body = self.client.request("GET", next_url, where=self._where(doing), mailbox=self.mailbox,
                                       params=query).json()
            out.extend(body.get("value", []))
            next_url, query = body.get("@odata.nextLink"), None
        return out

    # ------------------------------------------------------------------------- the port

    def read(self, item_id: str) -> ExchangeRecord | None:
        """The contact now, or None when it is gone or no longer in the sync folder."""
        contact = self._get(item_id, f"reading item {item_id}")
        return self._record(contact) if contact is not None else None

    def read_many(self, item_ids: Sequence[str]) -> list[ExchangeRecord | None]:
        """``read`` for many items in ``$batch`` requests; results in the order of ``item_ids``."""
        if not item_ids:
            return []
        contacts = self._get_many(list(item_ids), f"reading {len(item_ids)} items")
        return [self._record(c) if c is not None else None for c in contacts]

    def find_by_crm_key(self, crm_key: str) -> ExchangeRecord | None:
        """The contact in the sync folder stamped with ``crm_key`` ($filter on the stamp)."""
        found = self._list(f"{self._folder}/contacts",
                           {"$filter": stamp_filter(crm_key), "$expand": mapping.EXPAND, "$top": str(_PAGE)},
                           f"looking up {crm_key}")
        if not found:
            return None
        if len(found) > 1:
            log.warning("exchange.duplicate_stamp", mailbox=self.mailbox, crm_key=crm_key, count=len(found))
            found.sort(key=lambda c: c["id"])
        return self._record(found[0])

    def find_many_by_crm_key(self, crm_keys: Sequence[str]) -> dict[str, ExchangeRecord]:
        """``find_by_crm_key`` for a batch: one filtered GET per key, 20 per ``$batch``."""
        keys = list(dict.fromkeys(crm_keys))
        if not keys:
            return {}
        parts = [{"method": "GET", "url": f"{self._folder}/contacts?$filter={quote(stamp_filter(k), safe='')}"
                                          f"&$expand={quote(mapping.EXPAND, safe='')}&$top={_PAGE}"}
                 for k in keys]
        answers = self.client.batch(parts, where=self._where(f"looking up {len(keys)} stamped contacts"),
                                    mailbox=self.mailbox)
        out: dict[str, ExchangeRecord] = {}
        for key, (status, headers, body) in zip(keys, answers, strict=True):
            if status >= 400:
                raise translate(status, headers, body, self._where(f"looking up {key}"), self.mailbox)
            values = sorted(body.get("value", []), key=lambda c: c["id"])
            if values:
                out[key] = self._record(values[0])
        return out

    def find_similar(self, emails: Sequence[str], surnames: Sequence[str], limit: int = 200) -> list[ExchangeRecord]:
        """Contacts of the sync folder carrying one of ``emails`` or one of ``surnames`` (one
        filtered GET): the candidates of a new CRM record, at most ``limit``."""
        terms = [f"emailAddresses/any(a: a/address eq {_odata_string(e)})" for e in dict.fromkeys(emails) if e]
        terms += [f"surname eq {_odata_string(s)}" for s in dict.fromkeys(surnames) if s]
        found: dict[str, dict] = {}
        for start in range(0, len(terms), 20):   # a bounded $filter per GET
            for c in self._list(f"{self._folder}/contacts",
                                {"$filter": " or ".join(terms[start:start + 20]), "$expand": mapping.EXPAND,
                                 "$top": str(_PAGE)}, "looking up similar contacts"):
                found.setdefault(c["id"], c)
            if len(found) >= limit:
                break
        return [self._record(c) for c in list(found.values())[:limit]]   # e-mail matches first

    def search(self, terms: SearchTerms, limit: int = 200) -> list[ExchangeRecord]:
        """Contacts of the sync folder whose first or last name begins with every word of
        ``terms``, whose company begins with its first word, that carry its text as a whole e-mail
        address, or whose mobile phone begins with the query as typed: one filtered GET, pages
        followed only up to ``limit``. Private contacts come back as such (empty);
        ``matching.search_fields`` decides on the rest.

        Graph's limits, narrower than EWS's Contains restriction (user-list-contacts, "Optional
        query parameters"): ``emailAddresses`` is filtered only with ``any(a: a/address eq '...')``,
        so a text with an ``@`` is looked up as a whole address and a part of an address is not
        searched on the server at all; no function runs inside a lambda over ``businessPhones`` or
        ``homePhones``, so only the mobile phone (a plain string, ``startswith``) is searched by
        number. The address is sent as ``terms`` holds it (lowercased): Exchange compares
        strings case-insensitively, and so does the emulator; Microsoft's reference does not say
        so for ``emailAddresses`` explicitly."""
        if not terms.text:
            return []
        parts: list[str] = []
        if terms.words:
            parts.append(" and ".join(f"(startswith(givenName,{_odata_string(w)}) or "
                                      f"startswith(surname,{_odata_string(w)}))" for w in terms.words))
            parts.append(f"startswith(companyName,{_odata_string(terms.words[0])})")
        if _WHOLE_ADDRESS.fullmatch(terms.text):
            parts.append(f"emailAddresses/any(a: a/address eq {_odata_string(terms.text)})")
        if terms.digits:
            parts.append(f"startswith(mobilePhone,{_odata_string(terms.text)})")
        params: dict[str, str] | None = {"$filter": " or ".join(f"({p})" for p in parts),
                                         "$expand": mapping.EXPAND, "$top": str(min(limit, _PAGE))}
        found: dict[str, dict] = {}
        url: str | None = f"{self._folder}/contacts"
        while url and len(found) < limit:
            body = self.client.request("GET", url, where=self._where("searching the folder"), mailbox=self.mailbox,
                                       params=params).json()
            for c in body.get("value", []):
                found.setdefault(c["id"], c)
            url, params = body.get("@odata.nextLink"), None
        return [self._record(c) for c in list(found.values())[:limit]]

    def find_deleted_by_crm_key(self, crm_key: str) -> ExchangeRecord | None:
        """Always None: Graph v1.0 cannot list the contacts in Deleted Items (see the module doc);
        the service then creates the contact again."""
        return None

    def restore(self, item_id: str) -> ExchangeRecord:
        """Bring a contact back from Deleted Items into the sync folder: Graph v1.0 has no move
        for contacts, so the deleted copy is read by id, created again (stamp included) in the
        sync folder, and the copy deleted. The new contact has a new id. Idempotent: a contact
        already carrying the copy's stamp in the sync folder is returned instead."""
        where = f"restoring item {item_id} from Deleted Items"
        resp = self.client.request("GET", f"{self._user}/contacts/{quote(rest_id(item_id), safe='')}",
                                   where=self._where(where), mailbox=self.mailbox,
                                   params={"$expand": "singleValueExtendedProperties"}, allow=(404,))
        if resp.status_code == 404:
            raise Stale(self._where(f"{where}: the item is gone"))
        old = resp.json()
        if old.get("parentFolderId") == self.folder_id:
            return self._record(old)            # already back (e.g. a retried restore)
        stamp = mapping.crm_key_of(old)
        again = self.find_by_crm_key(stamp) if stamp else None
        if again is not None:
            return again                        # restored before (a crash after the create): no duplicate
        body = {k: v for k, v in old.items() if not k.startswith("@") and k not in (
            "id", "changeKey", "createdDateTime", "lastModifiedDateTime", "parentFolderId")}
        body = {k: v for k, v in body.items() if v not in (None, [], {})}
        new = self.client.request("POST", f"{self._folder}/contacts", where=self._where(where), mailbox=self.mailbox,
                                  json=body).json()
        self.client.request("DELETE", f"{self._user}/contacts/{quote(rest_id(item_id), safe='')}",
                            where=self._where(where), mailbox=self.mailbox, allow=(404,))
        rec = self.read(new["id"])
        if rec is None:
            raise Stale(self._where(f"{where}: not found in the sync folder after the restore"))
        return rec

    def stamped_items(self) -> dict[str, tuple[str, str]]:
        """crm_key -> (item_id, change_key) for every stamped contact in the folder (rebuilding links)."""
        flt = f"singleValueExtendedProperties/Any(ep: ep/id eq {_odata_string(mapping.CRM_KEY_ID)} and ep/value ne '')"
        out: dict[str, tuple[str, str]] = {}
        for c in self._list(f"{self._folder}/contacts", {"$filter": flt, "$select": "changeKey",
                                                          "$expand": mapping.EXPAND, "$top": str(_PAGE)},
                            "listing stamped contacts"):
            key = mapping.crm_key_of(c)
            if key and key not in out:
                out[key] = (c["id"], c.get("changeKey") or "")
        return out

    def create(self, crm_key: str, values: Changes) -> ExchangeRecord:
        """Create a contact stamped with ``crm_key`` in the sync folder."""
        (res,) = self.create_many([(crm_key, values)])
        if isinstance(res, BaseException):
            raise res
        return res

    def create_many(self, entries: Sequence[tuple[str, Changes]]) -> list[ExchangeRecord | CrmsyncError]:
        """Bulk create in ``$batch`` requests (20 contacts each), stamped. Per entry, in order, the
        record or that entry's error (BadRecord for a value Graph refuses, Transient for one it did
        not take: throttled beyond ``max_wait_s``). Never raises for one entry; a batch request
        that fails as a whole marks its entries and the later ones with that error."""
        results: list[ExchangeRecord | CrmsyncError | None] = [None] * len(entries)
        parts: list[tuple[int, str, dict]] = []
        for i, (crm_key, values) in enumerate(entries):
            try:
                parts.append((i, crm_key, mapping.create_body(values, crm_key)))
            except BadRecord as e:
                results[i] = BadRecord(self._where(f"{crm_key}: {e}"))
        if parts:
            try:
                answers = self.client.batch(
                    [{"method": "POST", "url": f"{self._folder}/contacts", "body": b} for _, _, b in parts],
                    where=self._where(f"creating {len(parts)} contact(s)"), mailbox=self.mailbox)
            except Transient as e:
                answers = [e] * len(parts)
            for (i, crm_key, body), answer in zip(parts, answers, strict=True):
                if isinstance(answer, CrmsyncError):
                    results[i] = answer
                    continue
                status, headers, resp = answer
                if status >= 400:
                    results[i] = translate(status, headers, resp, self._where(f"creating {crm_key}"), self.mailbox)
                else:
                    created = mapping.apply_patch(resp, {"singleValueExtendedProperties":
                                                         body["singleValueExtendedProperties"]})
                    results[i] = self._record_written(created)
        return results  # type: ignore[return-value]

    def update(self, item_id: str, changes: Changes, expect_change_key: str,
               crm_key: str | None = None) -> ExchangeRecord:
        """PATCH only ``changes`` with ``If-Match`` on the expected ChangeKey; Stale when it moved on
        or the contact is gone. A non-None ``crm_key`` also (re)stamps the extended property."""
        where = f"updating item {item_id}" + (f" ({crm_key})" if crm_key else "")
        current = self._get(item_id, where)
        if current is None:
            raise Stale(self._where(f"{where}: the item was deleted or moved out of the sync folder"))
        if current.get("changeKey") != expect_change_key:
            raise Stale(self._where(f"{where}: ChangeKey changed since it was read"))
        try:
            body = mapping.patch_body(current, changes)
        except BadRecord as e:
            raise BadRecord(self._where(f"{where}: {e}")) from None
        if crm_key is not None and mapping.crm_key_of(current) != crm_key:
            body.setdefault("singleValueExtendedProperties", []).append(mapping.stamp_property(crm_key))
        if not body:
            return self._record(current)
        resp = self.client.request("PATCH", self._contact_url(item_id), where=self._where(where),
                                   mailbox=self.mailbox, json=body, allow=(404,),
                                   headers={"If-Match": f'W/"{expect_change_key}"'})
        if resp.status_code == 404:
            raise Stale(self._where(f"{where}: the item was deleted meanwhile"))
        after = mapping.apply_patch({**current, **{k: v for k, v in resp.json().items() if not k.startswith("@")}},
                                    {"singleValueExtendedProperties": body.get("singleValueExtendedProperties", [])})
        return self._record_written(after)

    def _record_written(self, contact: dict) -> ExchangeRecord:
        rec = self._record(contact)
        # What was written; the server's LastModifiedTime is known on the next read (as over EWS).
        return ExchangeRecord(item_id=rec.item_id, change_key=rec.change_key, record=rec.record,
                              crm_key=rec.crm_key, private=rec.private, modified_at=None)

    def delete(self, item_id: str, change_key: str, hard: bool = False) -> None:
        """DELETE with ``If-Match`` (Graph moves the contact to Deleted Items). Gone or moved away:
        nothing to do. Stale when the contact changed since ``change_key`` was read. ``hard``
        (on_crm_delete = "hard-delete") is EWS only: the configuration refuses it for Graph."""
        if hard:
            raise ConfigError(self._where("on_crm_delete = 'hard-delete' is not supported over Graph; "
                                          "use move-to-deleted-items"))
        where = f"deleting item {item_id}"
        resp = self.client.request("DELETE", self._contact_url(item_id), where=self._where(where),
                                   mailbox=self.mailbox, allow=(404, 400),
                                   headers={"If-Match": f'W/"{change_key}"'})
        if resp.status_code == 400 and error_code(resp.json()) != "ErrorInvalidIdMalformed":
            raise translate(400, resp.headers, resp.json(), self._where(where), self.mailbox)

    def folder_state(self) -> Literal["ok", "empty", "missing"]:
        """One GET of at most one contact of the sync folder: "missing" on 404 (the folder is
        gone), else whether it holds any contact (asked by the empty-folder guard)."""
        resp = self.client.request("GET", f"{self._folder}/contacts?$top=1&$select=id",
                                   where=self._where("checking the sync folder"), mailbox=self.mailbox, allow=(404,))
        if resp.status_code == 404:
            return "missing"
        return "ok" if resp.json().get("value") else "empty"
