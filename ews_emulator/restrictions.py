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
    if name in ("And", "Or"):
        parts = [compile_restriction(c, getter) for c in elem if isinstance(c.tag, str)]
        if name == "And":
            return lambda obj: all(p(obj) for p in parts)
        return lambda obj: any(p(obj) for p in parts)
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
        exact = elem.get("ContainmentComparison", "Exact") == "Exact"
        n = needle if exact else needle.casefold()

        def contains(obj: Any) -> bool:
            got = getter(obj, uri)
            if got is None:
                return False
            for v in got if isinstance(got, list) else [got]:
                h = v if exact else v.casefold()
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
