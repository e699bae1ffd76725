"""Canonical contact <-> Microsoft Graph ``contact`` JSON: the one place that knows Graph's names.

Pure (no I/O). The same lossless rule as the EWS mapping: a value Exchange would not store as
it is (``crmsync.core.storable``) is a BadRecord naming the field, never a silent change, so a
contact written over Graph reads back the same over EWS and the other way round.

Field map (canonical -> Graph v1.0 ``contact``):

=================  ==========================================================
first_name         ``givenName``
last_name          ``surname``
company_name       ``companyName``
job_title          ``jobTitle``
department         ``department``
email / email2     ``emailAddresses[0]`` / ``[1]`` (Graph lists addresses by position, so email2
                   without email is a BadRecord: it would read back as email)
phone_business     ``businessPhones[0]`` (clearing it while the user has a second business
                   phone is a BadRecord: Graph would move the second into its place)
phone_home         ``homePhones[0]`` (likewise)
phone_mobile       ``mobilePhone``
fax                extended property ``String 0x3A24`` (PidTagBusinessFaxNumber; Graph's
                   contact has no fax property)
street .. country  ``businessAddress`` (street, city, state, postalCode, countryOrRegion)
website            ``businessHomePage``
notes              ``personalNotes`` (plain text)
=================  ==========================================================

The user's other entries (a second business phone, a third e-mail address, the home address)
are kept: a PATCH rewrites a whole list or address, so :func:`patch_body` starts from the
contact as read. ``displayName``/``fileAs`` follow the same rule as over EWS.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from crmsync.adapters.exchange.contact_rules import check_known as _check_known
from crmsync.adapters.exchange.contact_rules import derive_display_name, derive_file_as
from crmsync.adapters.exchange.contact_rules import storable as _storable
from crmsync.errors import BadRecord
from schemas.canonical import CanonicalContact

#: The crmsync stamp: the same named property as the EWS adapter's (PublicStrings, crmsync-crm-key).
CRM_KEY_ID = "String {00020329-0000-0000-C000-000000000046} Name crmsync-crm-key"
#: PidTagSensitivity; Graph's contact has no sensitivity property. 0 Normal .. 3 Confidential.
SENSITIVITY_ID = "Integer 0x0036"
#: PidTagBusinessFaxNumber: the EWS BusinessFax phone entry.
FAX_ID = "String 0x3A24"
SENSITIVITY_NAMES = ("Normal", "Personal", "Private", "Confidential")

#: ``$expand`` that reads the three extended properties crmsync needs with the contact.
EXPAND = ("singleValueExtendedProperties($filter=id eq '" + CRM_KEY_ID + "' or id eq '" + SENSITIVITY_ID
          + "' or id eq '" + FAX_ID + "')")

SIMPLE_FIELDS: dict[str, str] = {
    "first_name": "givenName",
    "last_name": "surname",
    "company_name": "companyName",
    "job_title": "jobTitle",
    "department": "department",
    "website": "businessHomePage",
    "phone_mobile": "mobilePhone",
    "notes": "personalNotes",
}
EMAIL_INDEX: dict[str, int] = {"email": 0, "email2": 1}
PHONE_LISTS: dict[str, str] = {"phone_business": "businessPhones", "phone_home": "homePhones"}
ADDRESS_PROPERTY = "businessAddress"
ADDRESS_PARTS: dict[str, str] = {
    "street": "street",
    "city": "city",
    "state": "state",
    "postal_code": "postalCode",
    "country": "countryOrRegion",
}
_UNNAMED = "(no name)"
_ONLY_EMAIL2 = ("field email2: Graph lists a contact's e-mail addresses by position, so a second address "
                "without a first one would read back as the first; fill in email, or move the address to email")


def _clean(value: Any) -> str | None:
    return str(value) if value else None


def extended(contact: Mapping[str, Any]) -> dict[str, str]:
    """The contact's expanded single-value extended properties, by lower-case id."""
    return {str(p.get("id", "")).lower(): p.get("value") for p in contact.get("singleValueExtendedProperties") or []}


def crm_key_of(contact: Mapping[str, Any]) -> str | None:
    return extended(contact).get(CRM_KEY_ID.lower()) or None


def sensitivity_of(contact: Mapping[str, Any]) -> str:
    """Normal / Personal / Private / Confidential from PidTagSensitivity (Normal when absent)."""
    raw = extended(contact).get(SENSITIVITY_ID.lower())
    try:
        return SENSITIVITY_NAMES[int(raw)] if raw is not None else "Normal"
    except (ValueError, IndexError):
        return "Normal"


# --------------------------------------------------------------------------- canonical -> Graph


def create_body(values: Mapping[str, str | None], crm_key: str) -> dict[str, Any]:
    """The POST body of a new contact holding ``values``, stamped with ``crm_key``."""
    _check_known(values)
    v = {k: _storable(k, x) for k, x in values.items()}
    body: dict[str, Any] = {attr: v[f] for f, attr in SIMPLE_FIELDS.items() if v.get(f)}
    if v.get("email2") and not v.get("email"):
        raise BadRecord(_ONLY_EMAIL2)
    emails = [v[f] for f in EMAIL_INDEX if v.get(f)]
    if emails:
        body["emailAddresses"] = [{"address": a, "name": a} for a in emails]
    for f, prop in PHONE_LISTS.items():
        if v.get(f):
            body[prop] = [v[f]]
    address = {part: v[f] for f, part in ADDRESS_PARTS.items() if v.get(f)}
    if address:
        body[ADDRESS_PROPERTY] = address
    first, last, company = v.get("first_name"), v.get("last_name"), v.get("company_name")
    body["displayName"] = derive_display_name(first, last, company) or v.get("email") or v.get("email2") or _UNNAMED
    file_as = derive_file_as(first, last, company)
    if file_as:
        body["fileAs"] = file_as
    props = [{"id": CRM_KEY_ID, "value": crm_key}]
    if v.get("fax"):
        props.append({"id": FAX_ID, "value": v["fax"]})
    body["singleValueExtendedProperties"] = props
    return body


def patch_body(current: Mapping[str, Any], changes: Mapping[str, str | None]) -> dict[str, Any]:
    """The PATCH body writing ``changes`` onto ``current`` (the contact as read, expanded): only
    the properties that change, lists and the address rewritten whole with the user's other
    entries kept."""
    _check_known(changes)
    ch = {k: _storable(k, x) for k, x in changes.items()}
    body: dict[str, Any] = {}
    for f, attr in SIMPLE_FIELDS.items():
        if f in ch and _clean(current.get(attr)) != ch[f]:
            body[attr] = ch[f]
    if any(f in ch for f in EMAIL_INDEX):
        entries = [dict(e) for e in current.get("emailAddresses") or []]
        slots: list[dict | None] = list(entries) + [None] * max(0, 2 - len(entries))
        for f, i in EMAIL_INDEX.items():
            if f in ch:
                slots[i] = {"address": ch[f], "name": ch[f]} if ch[f] else None
        if slots[1] and not slots[0]:
            raise BadRecord(_ONLY_EMAIL2)
        new = [e for e in slots if e]
        if new != entries:
            body["emailAddresses"] = new
    for f, prop in PHONE_LISTS.items():
        if f in ch:
            phones = list(current.get(prop) or [])
            if ch[f]:
                new_phones = [ch[f], *phones[1:]]
            elif len(phones) > 1:
                raise BadRecord(f"field {f}: Graph lists {prop} by position, so clearing the first would move the "
                                f"user's second number into its place; clear it in Outlook, or keep a value")
            else:
                new_phones = []
            if new_phones != phones:
                body[prop] = new_phones
    if any(f in ch for f in ADDRESS_PARTS):
        address = {k: x for k, x in dict(current.get(ADDRESS_PROPERTY) or {}).items() if x and not k.startswith("@")}
        for f, part in ADDRESS_PARTS.items():
            if f in ch:
                address.pop(part, None)
                if ch[f]:
                    address[part] = ch[f]
        if address != {k: x for k, x in dict(current.get(ADDRESS_PROPERTY) or {}).items() if x and not k.startswith("@")}:
            body[ADDRESS_PROPERTY] = {part: address.get(part) for part in ADDRESS_PARTS.values()}
    if "fax" in ch and (extended(current).get(FAX_ID.lower()) or None) != ch["fax"]:
        body.setdefault("singleValueExtendedProperties", []).append({"id": FAX_ID, "value": ch["fax"]})
    old = tuple(_clean(current.get(SIMPLE_FIELDS[f])) for f in ("first_name", "last_name", "company_name"))
    new = tuple(ch[f] if f in ch else old[i] for i, f in enumerate(("first_name", "last_name", "company_name")))
    if new != old:
        for attr, derive in (("displayName", derive_display_name), ("fileAs", derive_file_as)):
            have, was, now = _clean(current.get(attr)), derive(*old), derive(*new)
            if now and now != have and (not have or have == was):
                body[attr] = now
    return body


def stamp_property(crm_key: str) -> dict[str, str]:
    return {"id": CRM_KEY_ID, "value": crm_key}


# --------------------------------------------------------------------------- Graph -> canonical


def to_canonical(contact: Mapping[str, Any]) -> CanonicalContact:
    """The canonical record of a Graph contact (read with :data:`EXPAND` for the fax)."""
    values: dict[str, str | None] = {f: _clean(contact.get(attr)) for f, attr in SIMPLE_FIELDS.items()}
    emails = [e for e in contact.get("emailAddresses") or [] if isinstance(e, dict)]
    for f, i in EMAIL_INDEX.items():
        values[f] = _clean(emails[i].get("address")) if i < len(emails) else None
    for f, prop in PHONE_LISTS.items():
        phones = contact.get(prop) or []
        values[f] = _clean(phones[0]) if phones else None
    address = contact.get(ADDRESS_PROPERTY) or {}
    for f, part in ADDRESS_PARTS.items():
        values[f] = _clean(address.get(part))
    values["fax"] = _clean(extended(contact).get(FAX_ID.lower()))
    return CanonicalContact(**values)


def apply_patch(contact: Mapping[str, Any], body: Mapping[str, Any]) -> dict[str, Any]:
    """``contact`` as it is after ``body`` was PATCHed onto it (for the record a write returns)."""
    out = dict(contact)
    props = {str(p["id"]).lower(): p for p in contact.get("singleValueExtendedProperties") or []}
    for key, value in body.items():
        if key == "singleValueExtendedProperties":
            for p in value:
                props[str(p["id"]).lower()] = p
        else:
            out[key] = value
    out["singleValueExtendedProperties"] = list(props.values())
    return out
