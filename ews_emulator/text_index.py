"""A text index of the items' properties, so that a FindItem restriction made of Contains
expressions is answered without decoding every item of the folder.

Every write of an item (``store.WriteTx``) stores, in the same transaction, one row per text
value a restriction can read of it (what ``contact_xml.field_value`` gives for a FieldURI,
IndexedFieldURI or ExtendedFieldURI) in the table ``item_text``, keyed by the property and
folded by :func:`loose` (case folded, non-spacing marks dropped). A Contains asks SQLite for the
items of the folder whose folded value holds the folded constant: a superset of the items it
matches (see :func:`candidates`). The restriction itself is then evaluated as before, on those
items only, so results are exactly those of a full scan.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterator

from lxml import etree

from .contact_xml import COMPUTED, ext_key, localname, uri_to_element

#: FieldURIs that field_value answers from the item's row, not its data: never indexed.
_ROW_FIELDS = frozenset({"ItemId", *COMPUTED})

SCHEMA = """
CREATE TABLE IF NOT EXISTS item_text (
    folder_id TEXT NOT NULL,
    field TEXT NOT NULL,
    item_id TEXT NOT NULL,
    n INTEGER NOT NULL,
    loose TEXT NOT NULL,
    PRIMARY KEY (folder_id, field, item_id, n)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS item_text_item ON item_text(item_id);
"""


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
    """(Re)write the index rows of one item (inside the caller's transaction)."""
    conn.execute("DELETE FROM item_text WHERE item_id=?", (item_id,))
    conn.executemany("INSERT INTO item_text(folder_id, field, item_id, n, loose) VALUES (?,?,?,?,?)",
                     [(folder_id, key, item_id, n, loose(v)) for n, (key, v) in enumerate(text_fields(data))])


#: ContainmentComparison values whose matches all hold the folded constant in the folded value
#: (the comparison's own folding is undone by ``loose``). IgnoreNonSpacingCharacters alone
#: (case-sensitive) is not among them: it is answered by a scan.
_INDEXED_COMPARISONS = frozenset({"Exact", "IgnoreCase", "IgnoreCaseAndNonSpacingCharacters", "Loose",
                                  "LooseAndIgnoreCase", "LooseAndIgnoreCaseAndIgnoreNonSpace"})


def candidates(execute, folder_id: str, elem: etree._Element | None) -> set[str] | None:
    """Ids of the folder's items that may satisfy the restriction ``elem`` (every one that does
    is among them), from the index; None when the index cannot narrow it (the caller scans).
    ``execute`` runs a read on the caller's connection (inside its snapshot)."""
    memo: dict[tuple[str, str], set[str]] = {}

    def walk(e: etree._Element) -> set[str] | None:
        name = localname(e.tag)
        kids = [c for c in e if isinstance(c.tag, str)]
        if name == "Restriction":
            return walk(kids[0]) if len(kids) == 1 else None
        if name == "And":
            found = [s for s in (walk(k) for k in kids) if s is not None]
            return set.intersection(*found) if found else None
        if name == "Or":
            found = [walk(k) for k in kids]
            if not found or any(s is None for s in found):
                return None
            return set().union(*found)
        if name != "Contains" or e.get("ContainmentComparison", "Exact") not in _INDEXED_COMPARISONS:
            return None
        uri = next((k for k in kids if localname(k.tag) in ("FieldURI", "IndexedFieldURI", "ExtendedFieldURI")),
                   None)
        const = next((k for k in kids if localname(k.tag) == "Constant"), None)
        key = field_key(uri) if uri is not None else None
        if key is None:
            return None
        needle = loose(const.get("Value", "") if const is not None else "")
        if (key, needle) not in memo:
            memo[(key, needle)] = {r[0] for r in execute(
                "SELECT item_id FROM item_text WHERE folder_id=? AND field=? AND instr(loose, ?)>0",
                (folder_id, key, needle))}
        return memo[(key, needle)]

    return walk(elem) if elem is not None else None
