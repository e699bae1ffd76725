"""Microsoft Graph contact / contactFolder JSON <-> the store's items and folders.

The Graph front door never writes the store's field dict itself: a Graph create becomes the
``<t:Contact>`` element an EWS CreateItem would carry (stored by ``contact_xml.parse_item``), a
PATCH becomes the ``<t:Updates>`` of an EWS UpdateItem (applied by ``item_ops.apply_updates``), and
a read goes through ``contact_xml.item_to_xml``. So a contact is one record whichever protocol
wrote it, and both read it the same way.

Ids: the store's ids are standard base64 (EWS form); Graph shows the same bytes in URL-safe base64
(``+`` -> ``-``, ``/`` -> ``_``), as Exchange Online's REST ids relate to its EWS ids.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from lxml import etree

from .contact_xml import Shape, ext_key, item_to_xml, localname, parse_item
from .registry import EwsError, t

# Graph property -> EWS element (plain text children of <t:Contact>).
TEXT_FIELDS: dict[str, str] = {
    "birthday": "Birthday", "fileAs": "FileAs", "displayName": "DisplayName", "givenName": "GivenName",
    "initials": "Initials", "middleName": "MiddleName", "nickName": "Nickname", "surname": "Surname",
    "generation": "Generation", "yomiGivenName": "PhoneticFirstName", "yomiSurname": "PhoneticLastName",
    "jobTitle": "JobTitle", "companyName": "CompanyName", "department": "Department",
    "officeLocation": "OfficeLocation", "profession": "Profession", "businessHomePage": "BusinessHomePage",
    "assistantName": "AssistantName", "manager": "Manager", "spouseName": "SpouseName",
}
FIELD_URI_PREFIX = {"Body": "item", "Categories": "item", "Sensitivity": "item"}   # others: contacts
STRING_LISTS = {"categories": "Categories", "children": "Children"}
PHONES = {"businessPhones": ("BusinessPhone", "BusinessPhone2"), "homePhones": ("HomePhone", "HomePhone2")}
ADDRESSES = {"businessAddress": "Business", "homeAddress": "Home", "otherAddress": "Other"}
ADDRESS_PARTS = {"street": "Street", "city": "City", "state": "State", "countryOrRegion": "CountryOrRegion",
                 "postalCode": "PostalCode"}
EMAIL_KEYS = ("EmailAddress1", "EmailAddress2", "EmailAddress3")
IM_KEYS = ("ImAddress1", "ImAddress2", "ImAddress3")
READ_ONLY = {"id", "changeKey", "createdDateTime", "lastModifiedDateTime", "parentFolderId"}
# Accepted on input but not stored (the EWS contact has no writable counterpart).
IGNORED = {"title", "yomiCompanyName", "photo"}
# Every property of the v1.0 contact resource, in the order Graph returns them.
CONTACT_PROPERTIES = [
    "id", "createdDateTime", "lastModifiedDateTime", "changeKey", "categories", "parentFolderId", "birthday",
    "fileAs", "displayName", "givenName", "initials", "middleName", "nickName", "surname", "title",
    "yomiGivenName", "yomiSurname", "yomiCompanyName", "generation", "imAddresses", "jobTitle", "companyName",
    "department", "officeLocation", "profession", "businessHomePage", "assistantName", "manager",
    "homePhones", "mobilePhone", "businessPhones", "spouseName", "personalNotes", "children",
    "emailAddresses", "homeAddress", "businessAddress", "otherAddress",
]
CONTACT_NAVIGATION = {"singleValueExtendedProperties", "multiValueExtendedProperties", "extensions", "photo"}
FOLDER_PROPERTIES = ["id", "displayName", "parentFolderId"]

SENSITIVITY_NAMES = ["Normal", "Personal", "Private", "Confidential"]   # PidTagSensitivity 0..3
SENSITIVITY_TAG = 0x0036
# PidTagBusinessFaxNumber: on Exchange the same MAPI property as the EWS BusinessFax phone entry.
BUSINESS_FAX_TAG = 0x3A24
# Distinguished property sets by GUID (MS-OXPROPS); Graph names sets by GUID only.
PROPERTY_SETS = {
    "00020329-0000-0000-c000-000000000046": "PublicStrings",
    "00062008-0000-0000-c000-000000000046": "Common",
    "00062004-0000-0000-c000-000000000046": "Address",
    "00020386-0000-0000-c000-000000000046": "InternetHeaders",
    "00062002-0000-0000-c000-000000000046": "Appointment",
    "6ed8da90-450b-101b-98da-00aa003f1305": "Meeting",
    "00062003-0000-0000-c000-000000000046": "Task",
    "4442858e-a9e3-4e80-b900-317a210cc15b": "UnifiedMessaging",
    "00062040-0000-0000-c000-000000000046": "Sharing",
}
SET_GUIDS = {v: k for k, v in PROPERTY_SETS.items()}
PROPERTY_TYPES = {n.lower(): n for n in ("String", "Integer", "Boolean", "SystemTime", "Binary", "Double",
                                         "Long", "Short", "Float", "Currency", "CLSID", "ApplicationTime",
                                         "Object")}
_GUID = re.compile(r"^\{?([0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12})\}?$")


class GraphError(Exception):
    """A Graph error answer: HTTP status, error code and message."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}


def bad_request(message: str, code: str = "BadRequest") -> GraphError:
    return GraphError(400, code, message)


# -- ids ----------------------------------------------------------------------------------------
def to_graph_id(store_id: str) -> str:
    return store_id.replace("+", "-").replace("/", "_")


def from_graph_id(graph_id: str) -> str:
    return graph_id.replace("-", "+").replace("_", "/")


def etag(change_key: str) -> str:
    return f'W/"{change_key}"'


# -- extended property ids ----------------------------------------------------------------------
@dataclass(frozen=True)
class ExtId:
    """A parsed Graph extended-property id (``String {guid} Name x``, ``Integer {guid} Id 0x8005``
    or ``Integer 0x0036``)."""

    type: str
    guid: str | None = None
    name: str | None = None
    num: int | None = None
    tag: int | None = None

    @property
    def canonical(self) -> str:
        """Comparison form: type and GUID case-insensitive, name case-sensitive (as Graph filters)."""
        if self.tag is not None:
            return f"{self.type.lower()} 0x{self.tag:04x}"
        if self.name is not None:
            return f"{self.type.lower()} {{{self.guid}}} name {self.name}"
        return f"{self.type.lower()} {{{self.guid}}} id 0x{self.num:04x}"

    @property
    def graph(self) -> str:
        """The id as the emulator shows it (GUID in lower case, tags as 0x%04x)."""
        if self.tag is not None:
            return f"{self.type} 0x{self.tag:04x}"
        if self.name is not None:
            return f"{self.type} {{{self.guid}}} Name {self.name}"
        return f"{self.type} {{{self.guid}}} Id 0x{self.num:04x}"

    @property
    def is_sensitivity(self) -> bool:
        return self.tag == SENSITIVITY_TAG

    @property
    def is_business_fax(self) -> bool:
        return self.tag == BUSINESS_FAX_TAG

    def uri_candidates(self) -> list[dict[str, str]]:
        """The EWS ExtendedFieldURI attribute sets naming this property; the first is the one a
        new value is written with (exchangelib's form: DistinguishedPropertySetId when the GUID is a
        distinguished set)."""
        if self.tag is not None:
            return [{"PropertyTag": f"0x{self.tag:04x}", "PropertyType": self.type}]
        key = {"PropertyName": self.name} if self.name is not None else {"PropertyId": str(self.num)}
        out = []
        dist = PROPERTY_SETS.get(self.guid or "")
        if dist:
            out.append({"DistinguishedPropertySetId": dist, **key, "PropertyType": self.type})
        out.append({"PropertySetId": self.guid, **key, "PropertyType": self.type})
        return out


def parse_ext_id(text: str) -> ExtId:
    """Parse a Graph extended-property id; GraphError 400 ErrorInvalidProperty when malformed."""
    def invalid() -> GraphError:
        return bad_request(f"The extended property id '{text}' is not valid. Use '<type> <guid> Name <name>',"
                           f" '<type> <guid> Id <number>' or '<type> <proptag>'.", "ErrorInvalidProperty")

    parts = (text or "").strip().split(" ", 3)
    if len(parts) < 2 or parts[0].lower() not in PROPERTY_TYPES:
        raise invalid()
    ptype = PROPERTY_TYPES[parts[0].lower()]
    if len(parts) == 2:
        try:
            tag = int(parts[1], 16) if parts[1].lower().startswith("0x") else int(parts[1])
        except ValueError:
            raise invalid() from None
        return ExtId(ptype, tag=tag)
    m = _GUID.match(parts[1])
    if not m or len(parts) != 4 or parts[2].lower() not in ("name", "id") or not parts[3]:
        raise invalid()
    guid = m.group(1).lower()
    if parts[2].lower() == "name":
        return ExtId(ptype, guid=guid, name=parts[3])
    try:
        num = int(parts[3], 16) if parts[3].lower().startswith("0x") else int(parts[3])
    except ValueError:
        raise invalid() from None
    return ExtId(ptype, guid=guid, num=num)


def ext_id_of_uri(uri: dict[str, str]) -> ExtId | None:
    """The Graph id of a stored EWS ExtendedFieldURI (None for forms Graph cannot name)."""
    ptype = PROPERTY_TYPES.get((uri.get("PropertyType") or "String").lower(), uri.get("PropertyType", "String"))
    if "PropertyTag" in uri:
        try:
            return ExtId(ptype, tag=int(uri["PropertyTag"], 0))
        except ValueError:
            return None
    guid = uri.get("PropertySetId")
    if guid is None and uri.get("DistinguishedPropertySetId"):
        guid = SET_GUIDS.get(uri["DistinguishedPropertySetId"])
    if guid is None:
        return None
    guid = guid.strip("{}").lower()
    if "PropertyName" in uri:
        return ExtId(ptype, guid=guid, name=uri["PropertyName"])
    if "PropertyId" in uri:
        try:
            return ExtId(ptype, guid=guid, num=int(uri["PropertyId"], 0))
        except ValueError:
            return None
    return None


# -- reading ------------------------------------------------------------------------------------
def sensitivity_of(item: dict, fields: dict | None = None) -> str:
    """PidTagSensitivity (0-3, as text) of a stored item, from its EWS Sensitivity (0 when unset)."""
    if fields is not None:
        name = fields.get("Sensitivity")
    else:
        name = item_to_xml(item, Shape(base="IdOnly", fields={"Sensitivity"})).findtext(t("Sensitivity"))
    return str(SENSITIVITY_NAMES.index(name)) if name in SENSITIVITY_NAMES else "0"


def business_fax_of(item: dict, fields: dict | None = None) -> str | None:
    """PidTagBusinessFaxNumber of a stored contact: its EWS BusinessFax phone entry (None when unset)."""
    f = fields if fields is not None else read_fields(item)
    entry = f.get("PhoneNumbers", {}).get("BusinessFax")
    return entry["text"] if entry and entry["text"] else None


def ext_properties(item: dict, fields: dict | None = None) -> list[tuple[ExtId, str]]:
    """Every single-value extended property of a stored item as (id, value), including
    PidTagSensitivity (Integer 0x0036) from the EWS Sensitivity."""
    out = [(ExtId("Integer", tag=SENSITIVITY_TAG), sensitivity_of(item, fields))]
    fax = business_fax_of(item, fields)
    if fax:
        out.append((ExtId("String", tag=BUSINESS_FAX_TAG), fax))
    for rec in item["data"].get("ext", {}).values():
        if "v" not in rec:
            continue
        eid = ext_id_of_uri(rec.get("u") or {})
        if eid is None or eid.is_sensitivity or eid.is_business_fax:
            continue
        out.append((eid, rec.get("v", "")))
    return out


def read_ext(item: dict, eid: ExtId, fields: dict | None = None) -> str | None:
    """The value of one extended property of a stored item, or None if it has none."""
    if eid.is_sensitivity:
        return sensitivity_of(item, fields)
    if eid.is_business_fax:
        return business_fax_of(item, fields)
    stored = item["data"].get("ext", {})
    for uri in eid.uri_candidates():
        rec = stored.get(ext_key(uri))
        if rec is not None and "v" in rec:
            return rec["v"]
    return None


def _text(el: etree._Element) -> str:
    return el.text or ""


def read_fields(item: dict) -> dict:
    """The EWS view of a stored contact: {element: text | [strings] | {Key: entry}} via item_to_xml."""
    root = item_to_xml(item, None)
    out: dict = {}
    for child in root:
        if not isinstance(child.tag, str):
            continue
        name = localname(child.tag)
        if name in ("EmailAddresses", "PhoneNumbers", "PhysicalAddresses", "ImAddresses"):
            entries = {}
            for e in child:
                if not isinstance(e.tag, str):
                    continue
                subs = {localname(s.tag): _text(s) for s in e if isinstance(s.tag, str)}
                entries[e.get("Key")] = {"attrs": dict(e.attrib), "text": _text(e), "subs": subs}
            out[name] = entries
        elif name in ("Categories", "Children"):
            out[name] = [_text(s) for s in child if isinstance(s.tag, str)]
        elif name == "Body":
            if (child.get("BodyType") or "Text").lower() == "html":
                import lxml.html
                try:
                    out[name] = lxml.html.fromstring(child.text or "<p></p>").text_content()
                except (etree.ParserError, ValueError):
                    out[name] = child.text or ""
            else:
                out[name] = child.text or ""
        elif len(child) == 0:
            out[name] = _text(child)
    return out


def _address(entries: dict, key: str) -> dict:
    rec = entries.get(key)
    if rec is None:
        return {}
    return {g: rec["subs"][e] for g, e in ADDRESS_PARTS.items() if rec["subs"].get(e)}


def contact_json(item: dict, fields: dict | None = None) -> dict:
    """The full Graph contact resource for a stored item (every property, null/[] when unset)."""
    f = fields if fields is not None else read_fields(item)
    phones = f.get("PhoneNumbers", {})
    emails = f.get("EmailAddresses", {})
    ims = f.get("ImAddresses", {})
    addrs = f.get("PhysicalAddresses", {})
    out: dict = {"@odata.etag": etag(item["change_key"]), "id": to_graph_id(item["id"]),
                 "createdDateTime": item["created"], "lastModifiedDateTime": item["modified"],
                 "changeKey": item["change_key"], "categories": f.get("Categories", []),
                 "parentFolderId": to_graph_id(item["folder_id"])}
    for prop in CONTACT_PROPERTIES:
        if prop in out:
            continue
        if prop in TEXT_FIELDS:
            out[prop] = f.get(TEXT_FIELDS[prop]) or None
        elif prop in PHONES:
            out[prop] = [phones[k]["text"] for k in PHONES[prop] if k in phones and phones[k]["text"]]
        elif prop == "mobilePhone":
            out[prop] = phones["MobilePhone"]["text"] or None if "MobilePhone" in phones else None
        elif prop == "emailAddresses":
            out[prop] = [{"name": emails[k]["attrs"].get("Name") or emails[k]["text"], "address": emails[k]["text"]}
                         for k in EMAIL_KEYS if k in emails and emails[k]["text"]]
        elif prop == "imAddresses":
            out[prop] = [ims[k]["text"] for k in IM_KEYS if k in ims and ims[k]["text"]]
        elif prop in ADDRESSES:
            out[prop] = _address(addrs, ADDRESSES[prop])
        elif prop == "personalNotes":
            out[prop] = f.get("Body") or None
        elif prop == "children":
            out[prop] = f.get("Children", [])
        else:
            out[prop] = None
    return out


def folder_json(folder: dict) -> dict:
    return {"id": to_graph_id(folder["id"]), "displayName": folder["display_name"],
            "parentFolderId": to_graph_id(folder["parent_id"]) if folder.get("parent_id") else None}


# -- writing ------------------------------------------------------------------------------------
def _uri(field: str) -> str:
    return f"{FIELD_URI_PREFIX.get(field, 'contacts')}:{field}"


def _str(value, prop: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise bad_request(f"Cannot convert the literal '{value}' to the expected type 'Edm.String' of"
                          f" property '{prop}'.", "RequestBodyRead")
    return value


def _str_list(value, prop: str, max_len: int | None = None) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise bad_request(f"The property '{prop}' expects a collection of strings.", "RequestBodyRead")
    values = [v for v in value if v]
    if max_len is not None and len(values) > max_len:
        raise bad_request(f"The property '{prop}' can hold at most {max_len} values.", "ErrorInvalidArgument")
    return values


class _Change:
    """One EWS-shaped change: set (an element) or delete, on a FieldURI / IndexedFieldURI /
    ExtendedFieldURI."""

    def __init__(self, uri_tag: str, uri_attrs: dict[str, str], value: etree._Element | None) -> None:
        self.uri_tag, self.uri_attrs, self.value = uri_tag, uri_attrs, value


def _elem(name: str, text: str | None = None, **attrs: str) -> etree._Element:
    e = etree.Element(t(name), {k: v for k, v in attrs.items() if v is not None})
    if text is not None:
        e.text = text
    return e


def _entry_coll(coll: str, key: str, text: str | None = None, subs: dict[str, str] | None = None,
                **attrs: str) -> etree._Element:
    c = _elem(coll)
    e = etree.SubElement(c, t("Entry"), {"Key": key, **{k: v for k, v in attrs.items() if v}})
    if subs is not None:
        for k, v in subs.items():
            etree.SubElement(e, t(k)).text = v
    else:
        e.text = text or ""
    return c


def contact_changes(body: dict, item: dict | None) -> list[_Change]:
    """Translate a Graph contact body into EWS changes. ``item`` is the stored contact for a PATCH
    (None on create, where deletions are pointless and skipped)."""
    if not isinstance(body, dict):
        raise bad_request("The request body must be a JSON object.", "RequestBodyRead")
    changes: list[_Change] = []
    patch = item is not None

    def set_field(field: str, value: etree._Element | None) -> None:
        if value is None:
            if patch:
                changes.append(_Change("FieldURI", {"FieldURI": _uri(field)}, None))
        else:
            changes.append(_Change("FieldURI", {"FieldURI": _uri(field)}, value))

    def set_entry(uri: str, key: str, coll: etree._Element | None) -> None:
        if coll is None:
            if patch:
                changes.append(_Change("IndexedFieldURI", {"FieldURI": uri, "FieldIndex": key}, None))
        else:
            changes.append(_Change("IndexedFieldURI", {"FieldURI": uri, "FieldIndex": key}, coll))

    for prop, value in body.items():
        if prop.startswith("@odata.") or prop in READ_ONLY or prop in IGNORED:
            continue
        if prop in TEXT_FIELDS:
            v = _str(value, prop)
            set_field(TEXT_FIELDS[prop], _elem(TEXT_FIELDS[prop], v) if v else None)
        elif prop == "personalNotes":
            v = _str(value, prop)
            set_field("Body", _elem("Body", v, BodyType="Text") if v else None)
        elif prop in STRING_LISTS:
            values = _str_list(value, prop)
            el = None
            if values:
                el = _elem(STRING_LISTS[prop])
                for v in values:
                    etree.SubElement(el, t("String")).text = v
            set_field(STRING_LISTS[prop], el)
        elif prop in PHONES or prop == "mobilePhone":
            keys = PHONES.get(prop, ("MobilePhone",))
            values = _str_list(value, prop, len(keys)) if prop in PHONES else \
                ([v] if (v := _str(value, prop)) else [])
            for i, key in enumerate(keys):
                set_entry("contacts:PhoneNumber", key,
                          _entry_coll("PhoneNumbers", key, values[i]) if i < len(values) else None)
        elif prop == "imAddresses":
            values = _str_list(value, prop, 3)
            for i, key in enumerate(IM_KEYS):
                set_entry("contacts:ImAddress", key,
                          _entry_coll("ImAddresses", key, values[i]) if i < len(values) else None)
        elif prop == "emailAddresses":
            if value is None:
                value = []
            if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
                raise bad_request("The property 'emailAddresses' expects a collection of emailAddress.",
                                  "RequestBodyRead")
            if len(value) > 3:
                raise bad_request("A contact can hold at most 3 e-mail addresses.", "ErrorInvalidArgument")
            for i, key in enumerate(EMAIL_KEYS):
                coll = None
                if i < len(value):
                    addr = _str(value[i].get("address"), "address") or ""
                    name = _str(value[i].get("name"), "name")
                    coll = _entry_coll("EmailAddresses", key, addr, Name=name) if addr or name else None
                set_entry("contacts:EmailAddress", key, coll)
        elif prop in ADDRESSES:
            key = ADDRESSES[prop]
            if value is None:
                value = {}
            if not isinstance(value, dict):
                raise bad_request(f"The property '{prop}' expects a physicalAddress object.", "RequestBodyRead")
            unknown = set(value) - set(ADDRESS_PARTS) - {"@odata.type"}
            if unknown:
                raise bad_request(f"The property '{sorted(unknown)[0]}' does not exist on type"
                                  f" 'microsoft.graph.physicalAddress'.", "RequestBodyRead")
            for gpart, epart in ADDRESS_PARTS.items():
                v = _str(value.get(gpart), gpart)
                set_entry(f"contacts:PhysicalAddress:{epart}", key,
                          _entry_coll("PhysicalAddresses", key, subs={epart: v}) if v else None)
        elif prop == "singleValueExtendedProperties":
            if not isinstance(value, list):
                raise bad_request("singleValueExtendedProperties expects a collection.", "RequestBodyRead")
            for ep in value:
                if not isinstance(ep, dict) or "id" not in ep:
                    raise bad_request("Each singleValueExtendedProperty needs an id and a value.", "RequestBodyRead")
                changes.extend(_ext_changes(parse_ext_id(str(ep["id"])), ep.get("value"), item))
        elif prop in CONTACT_NAVIGATION:
            raise bad_request(f"The emulator does not support writing '{prop}'.", "ErrorInvalidProperty")
        else:
            raise bad_request(f"The property '{prop}' does not exist on type 'microsoft.graph.contact'. Make sure"
                              f" to only use property names that are defined by the type or mark the type as open"
                              f" type.", "RequestBodyRead")
    return changes


def _ext_changes(eid: ExtId, value, item: dict | None) -> list[_Change]:
    if value is not None and not isinstance(value, str):
        value = str(value).lower() if isinstance(value, bool) else str(value)
    if eid.is_sensitivity:
        if value is None:
            return [_Change("FieldURI", {"FieldURI": "item:Sensitivity"}, None)] if item is not None else []
        try:
            name = SENSITIVITY_NAMES[int(value)]
        except (ValueError, IndexError):
            raise bad_request(f"PidTagSensitivity (Integer 0x0036) takes 0-3, not '{value}'.",
                              "ErrorInvalidPropertyValue") from None
        return [_Change("FieldURI", {"FieldURI": "item:Sensitivity"}, _elem("Sensitivity", name))]
    if eid.is_business_fax:
        uri = {"FieldURI": "contacts:PhoneNumber", "FieldIndex": "BusinessFax"}
        if not value:
            return [_Change("IndexedFieldURI", uri, None)] if item is not None else []
        return [_Change("IndexedFieldURI", uri, _entry_coll("PhoneNumbers", "BusinessFax", value))]
    candidates = eid.uri_candidates()
    stored = (item or {}).get("data", {}).get("ext", {})
    existing = [u for u in candidates if ext_key(u) in stored]
    out = [_Change("ExtendedFieldURI", u, None) for u in existing[1:]]   # one copy only
    target = existing[0] if existing else candidates[0]
    if existing and "PropertyType" not in stored[ext_key(target)].get("u", {}):
        target = {k: v for k, v in target.items() if k != "PropertyType"}
    if value is None:
        if existing:
            out.append(_Change("ExtendedFieldURI", target, None))
        return out
    ep = _elem("ExtendedProperty")
    etree.SubElement(ep, t("ExtendedFieldURI"), target)
    etree.SubElement(ep, t("Value")).text = value
    out.append(_Change("ExtendedFieldURI", target, ep))
    return out


def new_contact_data(body: dict) -> dict:
    """The store's data dict for a contact created from a Graph body (what CreateItem would store)."""
    contact = _elem("Contact")
    for ch in contact_changes(body, None):
        if ch.value is None:
            continue
        if ch.uri_tag == "IndexedFieldURI":
            coll_name = localname(ch.value.tag)
            existing = contact.find(t(coll_name))
            if existing is None:
                contact.append(ch.value)
            else:
                entry = ch.value[0]
                same = next((e for e in existing if e.get("Key") == entry.get("Key")), None)
                if same is not None and len(entry):
                    for sub in list(entry):
                        same.append(sub)
                else:
                    existing.append(entry)
        else:
            contact.append(ch.value)
    try:
        return parse_item(contact)
    except EwsError as e:
        raise bad_request(e.text, "ErrorInvalidProperty") from None


def updates_element(changes: list[_Change]) -> etree._Element:
    """The <t:Updates> of an EWS UpdateItem that applies ``changes``."""
    updates = _elem("Updates")
    for ch in changes:
        if ch.value is None:
            op = etree.SubElement(updates, t("DeleteItemField"))
            etree.SubElement(op, t(ch.uri_tag), ch.uri_attrs)
            continue
        op = etree.SubElement(updates, t("SetItemField"))
        etree.SubElement(op, t(ch.uri_tag), ch.uri_attrs)
        holder = etree.SubElement(op, t("Contact"))
        holder.append(ch.value)
    return updates
