"""A text index of the items' properties, so that a FindItem restriction made of Contains
expressions is answered without decoding every item of the folder.

Every write of an item (``store.WriteTx``) stores, in the same transaction, one row per item in
the table ``item_text``: the text values a restriction can read of it (what
``contact_xml.field_value`` gives for a FieldURI, IndexedFieldURI or ExtendedFieldURI), folded by
:func:`loose` (case folded, non-spacing marks dropped), as one text of segments
``<RS>key<US>value<GS>value...<RS>``. A restriction made of Contains (under And and Or) becomes
one SQL condition on that text, which SQLite evaluates over the folder's rows: the items whose
folded property holds the folded constant, a superset of the items the restriction matches (see
:func:`candidates`). The restriction itself is then evaluated as before on those items only, so
results are exactly those of a full scan.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterator

from lxml import etree

from .contact_xml import COMPUTED, ext_key, localname, uri_to_element

#: FieldURIs that field_value answers from the item's row, not its data: never indexed.
_ROW_FIELDS = frozenset({"ItemId", *COMPUTED})

#: The form of the index a store holds (meta ``item_text``); another is rebuilt on open.
VERSION = "2"

SCHEMA = """
CREATE TABLE IF NOT EXISTS item_text (
    item_id TEXT PRIMARY KEY,
    folder_id TEXT NOT NULL,
    doc TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS item_text_folder ON item_text(folder_id);
"""

#: Separators of the indexed text (ASCII RS, US, GS): a key or constant holding one is not indexed,
#: and in values they are written as GS (a constant without them cannot match across them).
RS, US, GS = "\x1e", "\x1f", "\x1d"
_SEPARATORS = str.maketrans({RS: GS, US: GS})


def strip_marks(text: str) -> str:
    """``text`` without its non-spacing characters: decomposed (NFD), every combining mark
    (category Mn, or any non-zero canonical combining class) dropped. "Zoë" -> "Zoe"."""
    return "".join(ch for ch in unicodedata.normalize("NFD", text)
                   if unicodedata.category(ch) != "Mn" and not unicodedata.combining(ch))


def loose(text: str) -> str:
    """Case folded, then without non-spacing characters: what IgnoreCaseAndNonSpacingCharacters
    compares. Folding keeps containment (a substring folds to a substring of the folded text:
    each step works character by character, and the marks canonical reordering moves are all
    dropped), which is what makes the index a superset for Exact and IgnoreCase too."""
    if text.isascii():
        return text.lower()          # the same, without the per-character work
    return strip_marks(text.casefold())


def field_key(uri: etree._Element) -> str | None:
    """The index's name for the property a FieldURI/IndexedFieldURI/ExtendedFieldURI names;
    None for properties read from the item's row (ItemId, ItemClass, dates), never indexed."""
    kind = localname(uri.tag)
    if kind == "ExtendedFieldURI":
        return "e:" + ext_key(dict(uri.attrib))
    name_uri = uri.get("FieldURI", "")
    name = uri_to_element(name_uri)
    if kind == "IndexedFieldURI":
        parts = name_uri.split(":")
        return f"i:{name}:{uri.get('FieldIndex')}:{parts[2] if len(parts) > 2 else ''}"
    if kind == "FieldURI" and name not in _ROW_FIELDS:
        return "f:" + name
    return None


def _values(got: object) -> Iterator[str]:
    if got is None:
        return
    for v in got if isinstance(got, list) else (got,):
        if v is not None:
            yield str(v)


def text_fields(data: dict) -> Iterator[tuple[str, str]]:
    """(field key, value) for every text value of an item's data that field_value can return."""
    for name, text in data.get("t", {}).items():
        yield from (("f:" + name, v) for v in _values(text))
    for name, frag in data.get("x", {}).items():
        if name in data.get("t", {}):
            continue                       # field_value reads t first
        el = etree.fromstring(frag)
        got = [c.text or "" for c in el] if len(el) else el.text or ""
        yield from (("f:" + name, v) for v in _values(got))
    for name, coll in data.get("idx", {}).items():
        for index, rec in coll.items():
            yield from ((f"i:{name}:{index}:", v) for v in _values(rec.get("v")))
            for sub, text in rec.get("s", {}).items():
                yield from ((f"i:{name}:{index}:{sub}", v) for v in _values(text))
    for key, rec in data.get("ext", {}).items():
        yield from (("e:" + key, v) for v in _values(rec.get("vs") if "vs" in rec else rec.get("v")))


def index_item(conn, item_id: str, folder_id: str, data: dict) -> None:
    """(Re)write the index row of one item (inside the caller's transaction)."""
    fields: dict[str, list[str]] = {}
    for key, value in text_fields(data):
        if RS not in key and US not in key:
            fields.setdefault(key, []).append(loose(value).translate(_SEPARATORS))
    doc = RS + "".join(f"{key}{US}{GS.join(values)}{RS}" for key, values in fields.items())
    conn.execute("INSERT OR REPLACE INTO item_text(item_id, folder_id, doc) VALUES (?,?,?)",
                 (item_id, folder_id, doc))


def plain_text(value: str) -> bool:
    """A constant that can only equal a stored value as case-insensitive text (neither a number
    nor a boolean for restrictions' comparisons)."""
    try:
        float(value)
    except (TypeError, ValueError):
        return value.lower() not in ("true", "false") and value.casefold() not in ("true", "false")
    return False


#: ContainmentComparison values whose matches all hold the folded constant in the folded value
#: (the comparison's own folding is undone by ``loose``). IgnoreNonSpacingCharacters alone
#: (case-sensitive) is not among them: it is answered by a scan.
_INDEXED_COMPARISONS = frozenset({"Exact", "IgnoreCase", "IgnoreCaseAndNonSpacingCharacters", "Loose",
                                  "LooseAndIgnoreCase", "LooseAndIgnoreCaseAndIgnoreNonSpace"})


def candidates(execute, folder_id: str, elem: etree._Element | None) -> set[str] | None:
    """Ids of the folder's items that may satisfy the restriction ``elem`` (every one that does
    is among them): Contains, and IsEqualTo against text, under And and Or, from the index in one
    SQL query; None when the index cannot narrow it (the caller scans). ``execute`` runs a read
    on the caller's connection (inside its snapshot)."""
    params: dict[str, object] = {}

    names: dict[tuple[type, object], str] = {}

    def bind(value: object) -> str:
        # one parameter per distinct value, so that equal tests read the same and are written once
        key = (type(value), value)
        if key not in names:
            names[key] = f"p{len(names)}"
            params[names[key]] = value
        return f":{names[key]}"

    def leaf(key: str, needle: str) -> tuple[list[str], str]:
        # cheap: the text holds the needle somewhere; then the first occurrence of the needle
        # after the key's marker comes before the segment's end (the needle holds no RS)
        marker = f"{RS}{key}{US}"
        n, m = bind(needle), bind(marker)
        rest = f"substr(doc, instr(doc, {m}) + {bind(len(marker))})"
        pre = f"instr(doc, {n}) > 0"
        return [pre], f"({pre} AND instr(doc, {m}) > 0 AND instr({rest}, {n}) BETWEEN 1 AND instr({rest}, char(30)))"

    def walk(e: etree._Element) -> tuple[list[str], str] | None:
        """(cheap conditions the expression implies, the expression), or None."""
        name = localname(e.tag)
        kids = [c for c in e if isinstance(c.tag, str)]
        if name == "Restriction":
            return walk(kids[0]) if len(kids) == 1 else None
        if name == "And":
            found = [f for f in (walk(k) for k in kids) if f is not None]
            if not found:
                return None
            pres = list(dict.fromkeys(p for f in found for p in f[0]))
            return pres, "(" + " AND ".join(pres + [f[1] for f in found]) + ")"   # the cheap tests first
        if name == "Or":
            found = [walk(k) for k in kids]
            if not found or any(f is None for f in found):
                return None
            full = "(" + " OR ".join(f[1] for f in found) + ")"   # type: ignore[index]
            if any(not f[0] for f in found):                        # type: ignore[index]
                return [], full
            pre = "(" + " OR ".join(dict.fromkeys(" AND ".join(f[0]) for f in found)) + ")"   # type: ignore[index]
            return [pre], f"({pre} AND {full})"
        uri = next((k for k in kids if localname(k.tag) in ("FieldURI", "IndexedFieldURI", "ExtendedFieldURI")),
                   None)
        if name == "Contains" and e.get("ContainmentComparison", "Exact") in _INDEXED_COMPARISONS:
            const = next((k for k in kids if localname(k.tag) == "Constant"), None)
        elif name == "IsEqualTo":
            # equal as case-insensitive text (restrictions._norm): the folded value holds it
            holder = next((k for k in kids if localname(k.tag) == "FieldURIOrConstant"), None)
            const = next((k for k in holder if isinstance(k.tag, str) and localname(k.tag) == "Constant"),
                         None) if holder is not None else None
            if const is None or not plain_text(const.get("Value", "")):
                return None
        else:
            return None
        key = field_key(uri) if uri is not None else None
        needle = loose(const.get("Value", "") if const is not None else "")
        if key is None or any(sep in key or sep in needle for sep in (RS, US, GS)):
            return None
        return leaf(key, needle)

    where = walk(elem) if elem is not None else None
    if where is None:
        return None
    return {r[0] for r in execute(f"SELECT item_id FROM item_text WHERE folder_id={bind(folder_id)} AND {where[1]}",
                                  params)}
