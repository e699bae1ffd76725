"""Canonical contact <-> exchangelib ``Contact``: the one place that knows Exchange's field names.

Pure (no I/O). exchangelib types appear here because this module lives inside the Exchange
adapter; nothing outside ``crmsync.adapters.exchange.ews`` sees them.

Values are written exactly as given or not at all: a value exchangelib would change on the way
(a character it writes as '?': C0/C1 controls other than tab/newline/CR/U+0085, U+FDD0-U+FDDF,
U+FFFE, U+FFFF) or one longer than Exchange holds is a BadRecord naming the field and the
character or limit (``crmsync.core.storable``), never a silent substitution.

Field map (canonical -> exchangelib ``Contact`` attribute):

=================  ==========================================================
first_name         ``given_name``   (EWS GivenName, at most 255 characters)
last_name          ``surname``      (EWS Surname, at most 255 characters)
company_name       ``company_name``
job_title          ``job_title``
department         ``department``
email / email2     ``email_addresses`` entries EmailAddress1 / EmailAddress2
phone_business     ``phone_numbers`` entry BusinessPhone
phone_mobile       ``phone_numbers`` entry MobilePhone
phone_home         ``phone_numbers`` entry HomePhone
fax                ``phone_numbers`` entry BusinessFax
street .. country  ``physical_addresses`` entry Business (street, city, state, zipcode, country)
website            ``business_homepage``
notes              ``body``  (written as a plain-text Body)
=================  ==========================================================

Indexed fields (email addresses, phone numbers, addresses) are lists of entries keyed by a
label. crmsync owns only the labels above: every other entry (a HomePhone2, EmailAddress3, a
Home address ...) is the user's and is kept untouched by :func:`apply_changes`. This matters
because exchangelib rewrites the whole indexed field on update (it deletes every label missing
from the list), so the list we send must contain the user's entries too.

``notes`` is written as a plain-text Body. A body read back as HTML (an Outlook-edited contact
on a real server, which answers with the "best" body type) is converted to text: block
elements and <br> become line breaks, markup is dropped. The conversion is deterministic, so an
unchanged HTML body always yields the same text and never looks like an edit; if crmsync later
writes the notes, the body becomes plain text (its formatting is lost, its text is kept).

``display_name`` and ``file_as`` are derived, never synced back: on create from the name ("First
Last", or the company); on update they follow a name change only while they still hold the value
crmsync would have derived from the old name (a display name the user typed is kept).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from exchangelib import Contact
from exchangelib.indexed_properties import EmailAddress, PhoneNumber, PhysicalAddress
from exchangelib.properties import Body, HTMLBody
from lxml import html as lxml_html

from crmsync.adapters.exchange.contact_rules import check_known as _check_known
from crmsync.adapters.exchange.contact_rules import derive_display_name, derive_file_as
from crmsync.adapters.exchange.contact_rules import storable as _storable
from schemas.canonical import CanonicalContact

#: Plain attributes: canonical field -> Contact attribute.
SIMPLE_FIELDS: dict[str, str] = {
    "first_name": "given_name",
    "last_name": "surname",
    "company_name": "company_name",
    "job_title": "job_title",
    "department": "department",
    "website": "business_homepage",
}

EMAIL_LABELS: dict[str, str] = {"email": "EmailAddress1", "email2": "EmailAddress2"}

PHONE_LABELS: dict[str, str] = {
    "phone_business": "BusinessPhone",
    "phone_mobile": "MobilePhone",
    "phone_home": "HomePhone",
    "fax": "BusinessFax",
}

ADDRESS_LABEL = "Business"
#: canonical field -> PhysicalAddress attribute of the Business entry.
ADDRESS_PARTS: dict[str, str] = {
    "street": "street",
    "city": "city",
    "state": "state",
    "postal_code": "zipcode",
    "country": "country",
}

#: Contact attributes the adapter must fetch to build a canonical record and to update one
#: without losing the user's other indexed entries.
CONTACT_READ_FIELDS: tuple[str, ...] = (
    *SIMPLE_FIELDS.values(),
    "email_addresses",
    "phone_numbers",
    "physical_addresses",
    "body",
    "display_name",
    "file_as",
)

_UNNAMED = "(no name)"


def _clean(value: str | None) -> str | None:
    """Canonical 'empty' is None; an empty string from either side means the same."""
    return value if value else None


# --------------------------------------------------------------------------- canonical -> Contact


def contact_kwargs(values: Mapping[str, str | None]) -> dict[str, object]:
    """Keyword arguments for ``Contact(...)`` holding ``values`` (canonical field -> value).

    Also sets the derived ``display_name`` (required by EWS) and ``file_as``. Raises BadRecord
    naming the field when a value cannot be stored in Exchange.
    """
    _check_known(values)
    v = {k: _storable(k, x) for k, x in values.items()}
    kwargs: dict[str, object] = {}
    for field, attr in SIMPLE_FIELDS.items():
        if v.get(field) is not None:
            kwargs[attr] = v[field]
    emails = [EmailAddress(label=label, email=v[f]) for f, label in EMAIL_LABELS.items() if v.get(f)]
    if emails:
        kwargs["email_addresses"] = emails
    phones = [PhoneNumber(label=label, phone_number=v[f]) for f, label in PHONE_LABELS.items() if v.get(f)]
    if phones:
        kwargs["phone_numbers"] = phones
    parts = {attr: v[f] for f, attr in ADDRESS_PARTS.items() if v.get(f)}
    if parts:
        kwargs["physical_addresses"] = [PhysicalAddress(label=ADDRESS_LABEL, **parts)]
    if v.get("notes") is not None:
        kwargs["body"] = Body(v["notes"])
    first, last, company = v.get("first_name"), v.get("last_name"), v.get("company_name")
    kwargs["display_name"] = (
        derive_display_name(first, last, company) or v.get("email") or v.get("email2") or _UNNAMED
    )
    file_as = derive_file_as(first, last, company)
    if file_as:
        kwargs["file_as"] = file_as
    return kwargs


@dataclass
class _Entries:
    """An indexed field's entries: crmsync's labels edited, the user's others kept in place."""

    entries: list

    def get(self, label: str):
        return next((e for e in self.entries if e.label == label), None)

    def put(self, label: str, entry) -> None:
        for i, e in enumerate(self.entries):
            if e.label == label:
                if entry is None:
                    del self.entries[i]
                else:
                    self.entries[i] = entry
                return
        if entry is not None:
            self.entries.append(entry)


def _put_labelled(contact: Contact, attr: str, labels: Mapping[str, str],
                  ch: Mapping[str, str | None], make, updated: list[str]) -> None:
    """Set the labelled entries (EmailAddress1, BusinessPhone, ...) crmsync owns in one
    indexed list field, keeping the user's other entries."""
    if not any(f in ch for f in labels):
        return
    entries = _Entries(list(getattr(contact, attr) or []))
    for f, label in labels.items():
        if f in ch:
            entries.put(label, make(label, ch[f]) if ch[f] else None)
    setattr(contact, attr, entries.entries or None)
    updated.append(attr)


def apply_changes(contact: Contact, changes: Mapping[str, str | None]) -> list[str]:
    """Set ``changes`` (canonical field -> value, None clears) on ``contact``.

    Returns the exchangelib field names to pass to ``save(update_fields=...)``. Indexed fields
    keep every entry whose label crmsync does not own. ``contact`` must hold the indexed fields
    as read from Exchange (see CONTACT_READ_FIELDS), otherwise the user's entries are lost.
    """
    _check_known(changes)
    ch = {k: _storable(k, x) for k, x in changes.items()}
    updated: list[str] = []

    old_name = (contact.given_name, contact.surname, contact.company_name)
    for field, attr in SIMPLE_FIELDS.items():
        if field in ch:
            setattr(contact, attr, ch[field])
            updated.append(attr)

    _put_labelled(contact, "email_addresses", EMAIL_LABELS, ch,
                  lambda label, value: EmailAddress(label=label, email=value), updated)
    _put_labelled(contact, "phone_numbers", PHONE_LABELS, ch,
                  lambda label, value: PhoneNumber(label=label, phone_number=value), updated)

    if any(f in ch for f in ADDRESS_PARTS):
        addresses = _Entries(list(contact.physical_addresses or []))
        current = addresses.get(ADDRESS_LABEL)
        parts = {attr: (_clean(getattr(current, attr)) if current else None) for attr in ADDRESS_PARTS.values()}
        for f, attr in ADDRESS_PARTS.items():
            if f in ch:
                parts[attr] = ch[f]
        kept = {k: x for k, x in parts.items() if x}
        addresses.put(ADDRESS_LABEL, PhysicalAddress(label=ADDRESS_LABEL, **kept) if kept else None)
        contact.physical_addresses = addresses.entries or None
        updated.append("physical_addresses")

    if "notes" in ch:
        contact.body = Body(ch["notes"]) if ch["notes"] is not None else None
        updated.append("body")

    new_name = (contact.given_name, contact.surname, contact.company_name)
    if new_name != old_name:
        for attr, derive in (("display_name", derive_display_name), ("file_as", derive_file_as)):
            current, was, now = getattr(contact, attr), derive(*old_name), derive(*new_name)
            # Follow the name only while the field still holds what we would have derived;
            # never clear display_name (EWS requires it).
            if now and now != current and (not current or current == was):
                setattr(contact, attr, now)
                updated.append(attr)
    return updated


# --------------------------------------------------------------------------- Contact -> canonical


_BLOCK_TAGS = frozenset({"p", "div", "li", "tr", "h1", "h2", "h3", "h4", "h5", "h6", "pre", "blockquote"})


def html_to_text(markup: str) -> str:
    """Plain text of an HTML body: <br> and block ends become newlines, markup is dropped."""
    doc = lxml_html.document_fromstring(markup)
    for bad in doc.xpath("//script|//style|//head"):
        bad.drop_tree()
    for br in doc.iter("br"):
        br.tail = "\n" + (br.tail or "")
    for el in doc.iter(*_BLOCK_TAGS):
        el.tail = "\n" + (el.tail or "")
    text = doc.text_content().replace("\xa0", " ")
    lines = [line.rstrip() for line in text.splitlines()]
    return "\n".join(lines).strip("\n")


def body_text(body: str | None) -> str | None:
    """The notes held in an item body: a text Body as is, an HTMLBody converted to text."""
    if not body:
        return None
    if isinstance(body, HTMLBody):
        return _clean(html_to_text(body))
    return str(body)


def to_canonical(contact: Contact) -> CanonicalContact:
    """The canonical record of ``contact``; empty values become None."""
    values: dict[str, str | None] = {f: _clean(getattr(contact, attr)) for f, attr in SIMPLE_FIELDS.items()}
    emails = _Entries(list(contact.email_addresses or []))
    for f, label in EMAIL_LABELS.items():
        e = emails.get(label)
        values[f] = _clean(e.email) if e else None
    phones = _Entries(list(contact.phone_numbers or []))
    for f, label in PHONE_LABELS.items():
        p = phones.get(label)
        values[f] = _clean(p.phone_number) if p else None
    address = _Entries(list(contact.physical_addresses or [])).get(ADDRESS_LABEL)
    for f, attr in ADDRESS_PARTS.items():
        values[f] = _clean(getattr(address, attr)) if address else None
    values["notes"] = body_text(contact.body)
    return CanonicalContact(**{k: (str(x) if x is not None else None) for k, x in values.items()})
