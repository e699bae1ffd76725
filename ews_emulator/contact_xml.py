"""Converting items and folders between EWS XML and the store's field dicts.

Used by items_ops/folder_ops here and by sync_ops/notify_ops (``item_to_xml``, ``folder_to_xml``,
``parse_shape``). An item's ``data`` is a JSON-able dict that round-trips exactly what the client
sent:

- ``tag``: element local name (``Contact``),
- ``t``: {element: text} for plain text children (GivenName, CompanyName, ...),
- ``x``: {element: serialized XML} for structured children (Body, Categories, Birthday attrs, ...),
- ``idx``: {"EmailAddresses"|"PhoneNumbers"|"PhysicalAddresses"|"ImAddresses":
  {Key: {"a": {attributes}, "v": text, "s": {subfield: text}}}},
- ``ext``: {key: {"u": ExtendedFieldURI attributes, "v": text | None, "vs": [text] | None}}.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from datetime import UTC, datetime

from lxml import etree

from .registry import NS_T, EwsError, t

TNSMAP = {"t": NS_T}
INDEXED = ("EmailAddresses", "PhoneNumbers", "PhysicalAddresses", "ImAddresses")
# FieldURI base names (contacts:X) whose element is a differently named indexed collection.
URI_ALIASES = {"EmailAddress": "EmailAddresses", "PhysicalAddress": "PhysicalAddresses",
               "PhoneNumber": "PhoneNumbers", "ImAddress": "ImAddresses"}
COMPUTED = ("ParentFolderId", "ItemClass", "DateTimeReceived", "Size", "DateTimeCreated",
            "LastModifiedTime", "HasAttachments", "IsAssociated")
ITEM_CLASS_BY_TAG = {"Contact": "IPM.Contact", "DistributionList": "IPM.DistList", "Message": "IPM.Note",
                     "Item": "IPM.Item", "Task": "IPM.Task", "CalendarItem": "IPM.Appointment"}
FOLDER_TAG_BY_CLASS = {"IPF.Contact": "ContactsFolder", "IPF.Appointment": "CalendarFolder",
                       "IPF.Task": "TasksFolder"}

# -- Exchange's limits on text properties (see the README's limits table) -------------------------
# Lengths are counted as Exchange (.NET) counts them: in UTF-16 code units, so a character outside
# the Basic Multilingual Plane (an emoji) counts twice.
#
# Refused when longer: exchangelib declares these CharField(max_length=255), and its own suite,
# run against Exchange Online (tests/test_items/test_basics.py, test_text_field_settings), sees
# UpdateItem answer ErrorPropertyUpdate when one is set to 4000 characters, for these three
# fields only. On UpdateItem Exchange turns the store's PropertyValidationException raised while
# applying the changes into ErrorPropertyUpdate. CreateItem has no such wrapper: there the store
# reports the invalid value when the new item is saved, which EWS answers with
# ErrorItemSavePropertyError ("attempts to save the item or folder fail because of invalid
# property values", ResponseCode reference); ErrorPropertyValidationFailure is documented as "not
# used" by EWS. So: ErrorPropertyUpdate on UpdateItem, ErrorItemSavePropertyError on CreateItem.
REFUSED_OVER: dict[str, int] = {"GivenName": 255, "MiddleName": 255, "Surname": 255}
# Cut to the limit on save, without an error: "The subject is limited to 255 characters" (EWS
# reference, Subject element); exchangelib's live suite reads back exactly 255 characters after
# setting 4000. No other contact text field has a documented limit; they are stored whole.
TRUNCATED_AT: dict[str, int] = {"Subject": 255}
# FindItem "returns only the first 512 bytes of any streamable property. For Unicode, it returns
# the first 255 characters ... It does not return any of the message body formats" (FindItem
# operation reference). GetItem returns the whole value.
FIND_TEXT_LIMIT = 255
FIND_OMITTED = ("Body", "UniqueBody", "TextBody", "NormalizedBody", "MimeContent")
# Typed simple properties that Exchange stores as values, not text: a client may send xs:boolean
# as 1/0 (exchangelib does) and xs:dateTime with any offset; Exchange answers true/false and UTC
# with a Z suffix.
BOOLEAN_PROPS = frozenset({"ReminderIsSet", "IsRead", "IsReadReceiptRequested", "IsDeliveryReceiptRequested",
                           "IsResponseRequested", "IsAllDayEvent", "IsComplete", "IsTeamTask",
                           "AllowNewTimeProposal", "IsOnlineMeeting"})
DATETIME_PROPS = frozenset({"ReminderDueBy", "Birthday", "WeddingAnniversary", "Start", "End", "DueDate",
                            "StartDate", "CompleteDate"})


def utf16_len(text: str) -> int:
    """The length of ``text`` as Exchange counts it (UTF-16 code units)."""
    return len(text) + sum(1 for ch in text if ord(ch) > 0xFFFF)


def utf16_cut(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` UTF-16 code units, never inside a surrogate pair."""
    if utf16_len(text) <= limit:
        return text
    out, used = [], 0
    for ch in text:
        used += 2 if ord(ch) > 0xFFFF else 1
        if used > limit:
            break
        out.append(ch)
    return "".join(out)


def canonical_boolean(text: str) -> str:
    v = text.strip().lower()
    if v in ("1", "true"):
        return "true"
    if v in ("0", "false"):
        return "false"
    raise EwsError("ErrorSchemaValidation", f"The request failed schema validation: '{text}' is not a valid"
                                            f" Boolean value.")


def canonical_datetime(text: str) -> str:
    """xs:dateTime with an offset -> the same instant in UTC with a Z suffix (as Exchange answers);
    a value without an offset is kept as sent."""
    v = text.strip()
    if v.endswith("Z"):
        return v
    try:
        dt = datetime.fromisoformat(v)
    except ValueError:
        raise EwsError("ErrorSchemaValidation", f"The request failed schema validation: '{text}' is not a valid"
                                                f" DateTime value.") from None
    if dt.tzinfo is None:
        return v
    return dt.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S") + "Z"


def canonical_ext_value(prop_type: str | None, text: str) -> str:
    if prop_type in ("Boolean", "BooleanArray"):
        return canonical_boolean(text)
    if prop_type in ("SystemTime", "SystemTimeArray"):
        return canonical_datetime(text)
    return text


def check_limits(data: dict, names: set[str] | None, code: str) -> None:
    """Refuse a value over its limit (REFUSED_OVER) with ``code``; cut TRUNCATED_AT values. Only
    the fields in ``names`` are looked at (None: every field)."""
    texts = data.get("t", {})
    for name, limit in REFUSED_OVER.items():
        if (names is None or name in names) and name in texts and utf16_len(texts[name]) > limit:
            raise EwsError(code, "An object within a change description contains an invalid property value"
                           if code == "ErrorPropertyUpdate" else
                           "The item could not be saved because of invalid property values.")
    for name, limit in TRUNCATED_AT.items():
        if (names is None or name in names) and name in texts:
            texts[name] = utf16_cut(texts[name], limit)
_T_PREFIX = "{" + NS_T + "}"
_T_LEN = len(_T_PREFIX)


def localname(tag: str) -> str:
    return tag[tag.index("}") + 1:] if tag[0] == "{" else tag


def uri_to_element(uri: str) -> str:
    """'contacts:PhysicalAddress:Street' -> 'PhysicalAddresses', 'item:Body' -> 'Body'."""
    parts = uri.split(":")
    name = parts[1] if len(parts) > 1 else parts[0]
    return URI_ALIASES.get(name, name)


def ext_key(uri_attrs: dict) -> str:
    """Canonical identity of an extended property (property set + name/id/tag, case-insensitive
    set ids; type excluded, as in Exchange)."""
    a = {k: v for k, v in uri_attrs.items() if k != "PropertyType"}
    if "PropertySetId" in a:
        a["PropertySetId"] = a["PropertySetId"].lower()
    if "PropertyTag" in a:
        try:
            a["PropertyTag"] = hex(int(a["PropertyTag"], 0))
        except ValueError:
            pass
    return "|".join(f"{k}={a[k]}" for k in sorted(a))


def _fragment(elem: etree._Element) -> str:
    c = copy.deepcopy(elem)
    etree.cleanup_namespaces(c)
    return etree.tostring(c, encoding="unicode")


def parse_extended(elem: etree._Element) -> tuple[str, dict]:
    """<t:ExtendedProperty> -> (key, stored dict)."""
    uri = elem.find(t("ExtendedFieldURI"))
    attrs = dict(uri.attrib) if uri is not None else {}
    value = elem.find(t("Value"))
    values = elem.find(t("Values"))
    rec: dict = {"u": attrs}
    ptype = attrs.get("PropertyType")
    if values is not None:
        rec["vs"] = [canonical_ext_value(ptype, v.text or "") for v in values]
    else:
        rec["v"] = canonical_ext_value(ptype, value.text or "") if value is not None else ""
    return ext_key(attrs), rec


def parse_entry(elem: etree._Element) -> tuple[str, dict]:
    """<t:Entry Key=..> -> (key, {"a": attrs, "v": text, "s": {sub: text}})."""
    attrs = {k: v for k, v in elem.attrib.items() if k != "Key"}
    rec: dict = {}
    if attrs:
        rec["a"] = attrs
    if len(elem):
        rec["s"] = {localname(c.tag): c.text or "" for c in elem}
    else:
        rec["v"] = elem.text or ""
    return elem.get("Key"), rec


def apply_child(data: dict, child: etree._Element, merge_indexed: bool = False) -> None:
    """Store one child of an item element into ``data`` (replacing that field). With
    ``merge_indexed``, indexed entries/subfields are merged into existing ones (SetItemField on
    one IndexedFieldURI) instead of replacing the whole collection."""
    name = child.tag[_T_LEN:] if child.tag.startswith(_T_PREFIX) else localname(child.tag)
    if name == "ExtendedProperty":
        key, rec = parse_extended(child)
        data.setdefault("ext", {})[key] = rec
    elif name in INDEXED:
        idx = data.setdefault("idx", {})
        coll = idx.setdefault(name, {}) if merge_indexed else {}
        for entry in child:
            key, rec = parse_entry(entry)
            if merge_indexed and key in coll and "s" in rec:
                old = coll[key]
                old.setdefault("s", {}).update(rec["s"])
                if "a" in rec:
                    old.setdefault("a", {}).update(rec["a"])
            else:
                coll[key] = rec
        idx[name] = coll
    elif name in ("ItemId", *COMPUTED):
        return  # read-only, server-maintained
    elif len(child) == 0 and not child.attrib:
        text = child.text or ""
        if name in BOOLEAN_PROPS:
            text = canonical_boolean(text)
        elif name in DATETIME_PROPS:
            text = canonical_datetime(text)
        data.setdefault("t", {})[name] = text
        data.get("x", {}).pop(name, None)
    else:
        data.setdefault("x", {})[name] = _fragment(child)
        data.get("t", {}).pop(name, None)


def parse_item(elem: etree._Element) -> dict:
    """A request's <t:Contact> (or other item) element -> stored data dict."""
    data: dict = {"tag": localname(elem.tag), "t": {}, "x": {}, "idx": {}, "ext": {}}
    for child in elem:
        if isinstance(child.tag, str):
            apply_child(data, child)
    return data


def field_value(item: dict, uri_elem: etree._Element) -> str | list[str] | None:
    """The comparable value of a FieldURI/IndexedFieldURI/ExtendedFieldURI for restrictions and
    sorting (text; lists for multi-valued; None when absent)."""
    data = item["data"]
    kind = localname(uri_elem.tag)
    if kind == "ExtendedFieldURI":
        rec = data.get("ext", {}).get(ext_key(dict(uri_elem.attrib)))
        if rec is None:
            return None
        return rec.get("vs") if "vs" in rec else rec.get("v")
    uri = uri_elem.get("FieldURI", "")
    name = uri_to_element(uri)
    if kind == "IndexedFieldURI":
        rec = data.get("idx", {}).get(name, {}).get(uri_elem.get("FieldIndex"))
        if rec is None:
            return None
        parts = uri.split(":")
        if len(parts) > 2:
            return rec.get("s", {}).get(parts[2])
        return rec.get("v")
    if name == "ItemId":
        return item["id"]
    if name == "ItemClass":
        return item["item_class"]
    if name in ("DateTimeCreated", "DateTimeReceived"):
        return item["created"]
    if name == "LastModifiedTime":
        return item["modified"]
    if name == "ParentFolderId":
        return item["folder_id"]
    text = data.get("t", {}).get(name)
    if text is not None:
        return text
    frag = data.get("x", {}).get(name)
    if frag is None:
        return None
    el = etree.fromstring(frag)
    if len(el):
        return [c.text or "" for c in el]
    return el.text or ""


@dataclass
class Shape:
    """A parsed ItemShape/FolderShape."""

    base: str = "AllProperties"
    fields: set[str] = field(default_factory=set)
    ext: list[dict] = field(default_factory=list)

    @property
    def all(self) -> bool:
        return self.base != "IdOnly"


def parse_shape(shape: etree._Element | Shape | None) -> Shape:
    """<m:ItemShape>/<m:FolderShape> -> Shape (None means AllProperties)."""
    if isinstance(shape, Shape):
        return shape
    if shape is None:
        return Shape()
    base = shape.findtext(t("BaseShape")) or "Default"
    out = Shape(base=base)
    props = shape.find(t("AdditionalProperties"))
    if props is not None:
        for p in props:
            kind = localname(p.tag)
            if kind == "ExtendedFieldURI":
                out.ext.append(dict(p.attrib))
            elif kind in ("FieldURI", "IndexedFieldURI"):
                out.fields.add(uri_to_element(p.get("FieldURI", "")))
    return out


def _id_elem(parent: etree._Element, tag: str, id_: str, ck: str | None) -> None:
    e = etree.SubElement(parent, t(tag), Id=id_)
    if ck:
        e.set("ChangeKey", ck)


def _cut_tree(elem: etree._Element) -> etree._Element:
    """Every text in ``elem`` cut to FindItem's limit (a list property's values one by one)."""
    for e in elem.iter():
        if e.text:
            e.text = utf16_cut(e.text, FIND_TEXT_LIMIT)
    return elem


def item_to_xml(item: dict, shape: etree._Element | Shape | None, find: bool = False) -> etree._Element:
    """The response element (<t:Contact> etc.) for a stored item under ``shape`` (an
    <m:ItemShape> element, a parsed ``Shape``, or None = AllProperties). Extended properties appear
    only when requested in AdditionalProperties, as in Exchange. With ``find`` (FindItem), text
    values are cut to their first 255 characters and no body is returned, as in Exchange."""
    sh = parse_shape(shape)
    cut = (lambda text: utf16_cut(text, FIND_TEXT_LIMIT)) if find else (lambda text: text)
    data = item["data"]
    root = etree.Element(t(data.get("tag", "Contact")), nsmap=TNSMAP)
    _id_elem(root, "ItemId", item["id"], item["change_key"])
    every = sh.all
    wanted = sh.fields

    def want(name: str) -> bool:
        if find and name in FIND_OMITTED:
            return False
        return every or name in wanted

    if want("ParentFolderId"):
        _id_elem(root, "ParentFolderId", item["folder_id"], None)
    if want("ItemClass"):
        etree.SubElement(root, t("ItemClass")).text = item["item_class"]
    for name, text in data.get("t", {}).items():
        if want(name):
            etree.SubElement(root, t(name)).text = cut(text)
    for name, frag in data.get("x", {}).items():
        if want(name):
            root.append(_cut_tree(etree.fromstring(frag)) if find else etree.fromstring(frag))
    if want("DateTimeReceived"):
        etree.SubElement(root, t("DateTimeReceived")).text = item["created"]
    if want("Size"):
        etree.SubElement(root, t("Size")).text = str(len(str(data)))
    if want("DateTimeCreated"):
        etree.SubElement(root, t("DateTimeCreated")).text = item["created"]
    if want("LastModifiedTime"):
        etree.SubElement(root, t("LastModifiedTime")).text = item["modified"]
    if want("HasAttachments"):
        etree.SubElement(root, t("HasAttachments")).text = "false"
    if want("IsAssociated"):
        etree.SubElement(root, t("IsAssociated")).text = "false"
    stored_ext = data.get("ext", {})
    for uri in sh.ext:
        rec = stored_ext.get(ext_key(uri))
        if rec is None:
            continue
        ep = etree.SubElement(root, t("ExtendedProperty"))
        etree.SubElement(ep, t("ExtendedFieldURI"), rec["u"] or uri)
        if "vs" in rec:
            vs = etree.SubElement(ep, t("Values"))
            for v in rec["vs"]:
                etree.SubElement(vs, t("Value")).text = cut(v)
        else:
            etree.SubElement(ep, t("Value")).text = cut(rec.get("v", ""))
    for name, coll in data.get("idx", {}).items():
        if not coll or not want(name):
            continue
        ce = etree.SubElement(root, t(name))
        for key, rec in coll.items():
            entry = etree.SubElement(ce, t("Entry"), Key=key)
            for k, v in rec.get("a", {}).items():
                entry.set(k, v)
            if "s" in rec:
                for k, v in rec["s"].items():
                    etree.SubElement(entry, t(k)).text = cut(v)
            else:
                entry.text = cut(rec.get("v", ""))
    return root


def folder_tag(folder_class: str | None) -> str:
    """The element Exchange answers a folder with: by its FolderClass, where a class derived from
    a known one (IPF.Contact.MOC.QuickContacts, IPF.Appointment.Birthday) counts as that one."""
    cls = folder_class or ""
    for base, tag in FOLDER_TAG_BY_CLASS.items():
        if cls == base or cls.startswith(base + "."):
            return tag
    return "Folder"


def folder_to_xml(folder: dict, shape: etree._Element | Shape | None,
                  counts: tuple[int, int] | None = None, ext: dict | None = None,
                  unread: int | None = None) -> etree._Element:
    """The response element (<t:ContactsFolder>/<t:Folder>/...) for a stored folder. ``counts`` is
    (TotalCount, ChildFolderCount) when the caller has them (omitted otherwise); ``ext`` the
    folder's stored extended properties (returned when requested, as for items); ``unread`` its
    UnreadCount (0 when not given)."""
    sh = parse_shape(shape)
    tag = folder_tag(folder.get("folder_class"))
    root = etree.Element(t(tag), nsmap=TNSMAP)
    _id_elem(root, "FolderId", folder["id"], folder["change_key"])
    every = sh.all
    wanted = sh.fields
    if folder.get("parent_id") and (every or "ParentFolderId" in wanted):
        _id_elem(root, "ParentFolderId", folder["parent_id"], None)
    if folder.get("folder_class") and (every or "FolderClass" in wanted):
        etree.SubElement(root, t("FolderClass")).text = folder["folder_class"]
    if every or "DisplayName" in wanted:
        etree.SubElement(root, t("DisplayName")).text = folder["display_name"]
    if counts is not None:
        if every or "TotalCount" in wanted:
            etree.SubElement(root, t("TotalCount")).text = str(counts[0])
        if every or "ChildFolderCount" in wanted:
            etree.SubElement(root, t("ChildFolderCount")).text = str(counts[1])
    for uri in sh.ext:
        rec = (ext or {}).get(ext_key(uri))
        if rec is None:
            continue
        ep = etree.SubElement(root, t("ExtendedProperty"))
        etree.SubElement(ep, t("ExtendedFieldURI"), rec["u"] or uri)
        if "vs" in rec:
            vs = etree.SubElement(ep, t("Values"))
            for v in rec["vs"]:
                etree.SubElement(vs, t("Value")).text = v
        else:
            etree.SubElement(ep, t("Value")).text = rec.get("v", "")
    # Schema order: BaseFolderType's ExtendedProperty ... DistinguishedFolderId, then FolderType's
    # UnreadCount.
    if folder.get("distinguished") and "DistinguishedFolderId" in wanted:
        etree.SubElement(root, t("DistinguishedFolderId")).text = folder["distinguished"]
    if counts is not None and tag == "Folder" and (every or "UnreadCount" in wanted):
        etree.SubElement(root, t("UnreadCount")).text = str(unread or 0)
    return root
