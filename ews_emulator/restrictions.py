"""EWS <m:Restriction> and <m:SortOrder> evaluation for FindItem and FindFolder.

String comparisons are case-insensitive, as Exchange's are; multi-valued properties match when
any value matches; numbers compare numerically when both sides parse as numbers.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from lxml import etree

from .contact_xml import localname
from .registry import EwsError, t
from .text_index import loose, plain_text, strip_marks

Getter = Callable[[Any, etree._Element], Any]   # (object, FieldURI-ish element) -> value(s) or None
URI_TAGS = ("FieldURI", "IndexedFieldURI", "ExtendedFieldURI")
_CMP = {
    "IsEqualTo": lambda a, b: a == b,
    "IsNotEqualTo": lambda a, b: a != b,
    "IsGreaterThan": lambda a, b: a > b,
    "IsGreaterThanOrEqualTo": lambda a, b: a >= b,
    "IsLessThan": lambda a, b: a < b,
    "IsLessThanOrEqualTo": lambda a, b: a <= b,
}


def _norm(a: str, b: str) -> tuple[Any, Any]:
    try:
        return float(a), float(b)
    except (TypeError, ValueError):
        pass
    if str(a).lower() in ("true", "false") or str(b).lower() in ("true", "false"):
        # xs:boolean: a client may send 1/0 (exchangelib does); stored values are true/false.
        as_bool = {"1": "true", "0": "false"}
        return as_bool.get(str(a), str(a).lower()), as_bool.get(str(b), str(b).lower())
    return str(a).casefold(), str(b).casefold()


def _uri_child(elem: etree._Element) -> etree._Element:
    for c in elem:
        if isinstance(c.tag, str) and localname(c.tag) in URI_TAGS:
            return c
    raise EwsError("ErrorSchemaValidation", f"{localname(elem.tag)} needs a FieldURI, IndexedFieldURI or"
                                            " ExtendedFieldURI.")


def compile_restriction(elem: etree._Element | None, getter: Getter) -> Callable[[Any], bool]:
    """A predicate for the <m:Restriction> element (or one search expression inside it)."""
    if elem is None:
        return lambda obj: True
    name = localname(elem.tag)
    if name == "Restriction":
        inner = [c for c in elem if isinstance(c.tag, str)]
        return compile_restriction(inner[0], getter) if inner else (lambda obj: True)
    if name == "And":
        parts = [compile_restriction(c, getter) for c in elem if isinstance(c.tag, str)]
        return lambda obj: all(p(obj) for p in parts)
    if name == "Or":
        return _compile_or([c for c in elem if isinstance(c.tag, str)], getter)
    if name == "Not":
        inner = compile_restriction(next(c for c in elem if isinstance(c.tag, str)), getter)
        return lambda obj: not inner(obj)
    if name == "Exists":
        uri = _uri_child(elem)
        return lambda obj: getter(obj, uri) not in (None, [], "")
    if name in _CMP:
        uri = _uri_child(elem)
        holder = elem.find(t("FieldURIOrConstant"))
        const = holder.find(t("Constant")) if holder is not None else None
        if const is None:
            raise EwsError("ErrorUnsupportedQueryFilter", f"{name} against another field is not supported.")
        value = const.get("Value", "")
        cmp = _CMP[name]

        def compare(obj: Any) -> bool:
            got = getter(obj, uri)
            if got is None:
                return name == "IsNotEqualTo"
            values = got if isinstance(got, list) else [got]
            if name == "IsNotEqualTo":
                return all(cmp(*_norm(v, value)) for v in values)
            return any(cmp(*_norm(v, value)) for v in values)

        return compare
    if name == "Contains":
        uri = _uri_child(elem)
        const = elem.find(t("Constant"))
        needle = const.get("Value", "") if const is not None else ""
        mode = elem.get("ContainmentMode", "Substring")
        fold = _comparison(elem.get("ContainmentComparison", "Exact"))
        n = fold(needle)

        def contains(obj: Any) -> bool:
            got = getter(obj, uri)
            if got is None:
                return False
            for v in got if isinstance(got, list) else [got]:
                h = fold(v)
                if mode == "FullString" and h == n:
                    return True
                if mode == "Prefixed" and h.startswith(n):
                    return True
                if mode in ("Substring", "ExactPhrase") and n in h:
                    return True
                if mode == "PrefixOnWords" and any(w.startswith(n) for w in h.split()):
                    return True
            return False

        return contains
    if name == "Excludes":
        uri = _uri_child(elem)
        bitmask = int(elem.find(t("Bitmask")).get("Value", "0"), 0)
        return lambda obj: not (int(getter(obj, uri) or 0) & bitmask)
    raise EwsError("ErrorUnsupportedQueryFilter", f"The restriction {name} is not supported.")


def _comparison(name: str) -> Callable[[str], str]:
    """How a Contains with ContainmentComparison ``name`` folds both sides before comparing:
    Exact as is; IgnoreCase case folded; IgnoreNonSpacingCharacters without non-spacing
    characters (decomposed, combining marks dropped: "Zoë" -> "Zoe"); IgnoreCaseAndNonSpacingCharacters
    both. The Loose values ("to be removed", EWS reference) ignore case, as before, and the
    non-spacing characters their name says."""
    ignore_case = "IgnoreCase" in name or name == "Loose"
    ignore_marks = "NonSpac" in name or "IgnoreNonSpace" in name
    if ignore_case and ignore_marks:
        return loose
    if ignore_marks:
        return strip_marks
    if ignore_case:
        return str.casefold
    return lambda text: text


#: A constant that can only equal a stored value as case-insensitive text: equality with it is
#: ``casefold() ==``, so a set can hold it.
_plain_text = plain_text


def _equality_target(elem: etree._Element) -> tuple[tuple, etree._Element, str] | None:
    """(identity of the property, its URI element, the constant) for an IsEqualTo against a
    plain-text constant; None for any other expression."""
    if localname(elem.tag) != "IsEqualTo":
        return None
    uri = _uri_child(elem)
    holder = elem.find(t("FieldURIOrConstant"))
    const = holder.find(t("Constant")) if holder is not None else None
    if const is None:
        return None
    value = const.get("Value", "")
    if not _plain_text(value):
        return None
    return (localname(uri.tag), tuple(sorted(uri.attrib.items()))), uri, value


def _compile_or(kids: list[etree._Element], getter: Getter) -> Callable[[Any], bool]:
    """An Or. Its IsEqualTo terms on one property against plain-text constants (what a client
    sends to look up many keys at once) become one read of the property and a set look-up,
    so the cost per item does not grow with the number of terms; the result is the same as
    evaluating every term on its own."""
    sets: dict[tuple, tuple[etree._Element, set[str]]] = {}
    others: list[Callable[[Any], bool]] = []
    for kid in kids:
        target = _equality_target(kid)
        if target is None:
            others.append(compile_restriction(kid, getter))
            continue
        ident, uri, value = target
        sets.setdefault(ident, (uri, set()))[1].add(value.casefold())
    groups = list(sets.values())

    def any_term(obj: Any) -> bool:
        for uri, wanted in groups:
            got = getter(obj, uri)
            if got is None:
                continue
            for v in got if isinstance(got, list) else (got,):
                if str(v).casefold() in wanted:
                    return True
        return any(p(obj) for p in others)

    return any_term


def key_lookup(elem: etree._Element | None) -> tuple[etree._Element, frozenset[str]] | None:
    """When a restriction only asks whether one property equals one of some plain-text
    constants (an IsEqualTo, or an Or of them: a client looking up items by their keys), the
    URI of that property and the casefolded constants; None otherwise. An item matches iff
    the property's value (any value, when multi-valued) casefolded is among them."""
    if elem is not None and localname(elem.tag) == "Restriction":
        inner = [c for c in elem if isinstance(c.tag, str)]
        elem = inner[0] if len(inner) == 1 else None
    if elem is None:
        return None
    terms = [c for c in elem if isinstance(c.tag, str)] if localname(elem.tag) == "Or" else [elem]
    targets = [_equality_target(term) for term in terms]
    if not targets or any(tg is None for tg in targets) or len({tg[0] for tg in targets}) != 1:
        return None
    return targets[0][1], frozenset(tg[2].casefold() for tg in targets)


def referenced_uris(*elems: etree._Element | None) -> list[etree._Element]:
    """Every FieldURI, IndexedFieldURI and ExtendedFieldURI inside the given restriction and
    sort order elements: what evaluating them can read of an item."""
    return [u for e in elems if e is not None for u in e.iter()
            if isinstance(u.tag, str) and localname(u.tag) in URI_TAGS]


def sort_key(order: etree._Element | None, getter: Getter) -> list[tuple[Callable[[Any], Any], bool]]:
    """[(key function, descending)] for <m:SortOrder> (missing values sort first)."""
    if order is None:
        return []
    keys = []
    for fo in order:
        if not isinstance(fo.tag, str):
            continue
        uri = _uri_child(fo)
        desc = fo.get("Order", "Ascending") == "Descending"

        def key(obj: Any, uri: etree._Element = uri) -> tuple:
            v = getter(obj, uri)
            if isinstance(v, list):
                v = v[0] if v else None
            if v is None:
                return (0, 0.0, "")
            try:
                return (1, float(v), "")
            except (TypeError, ValueError):
                return (1, 0.0, str(v).casefold())

        keys.append((key, desc))
    return keys


def apply_sort(objs: list, order: etree._Element | None, getter: Getter) -> list:
    for key, desc in reversed(sort_key(order, getter)):
        objs.sort(key=key, reverse=desc)
    return objs
