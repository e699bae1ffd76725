"""The OData query options the Graph front door understands: $filter, $select, $orderby, $expand.

$filter supports ``eq ne gt ge lt le``, ``and or not``, parentheses, ``startswith/endswith/
contains(prop, 'x')``, ``cast(x, Edm.Int32)``, lambda ``any(v: ...)`` over collections
(``emailAddresses/any(a: a/address eq 'x')``, ``singleValueExtendedProperties/Any(ep: ep/id eq '..'
and ep/value eq '..')``), string/number/true/false/null literals. String comparisons are
case-insensitive, as Exchange's are; extended-property ids compare by their parsed identity
(GUID and type case-insensitive, name case-sensitive). Anything else is a 400.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from .graph_json import GraphError, bad_request, parse_ext_id

_TOKEN = re.compile(r"""
    \s*(?:
      (?P<str>'(?:[^']|'')*')
     |(?P<num>-?\d+(?:\.\d+)?(?![\w:-]))
     |(?P<dt>\d{4}-\d\d-\d\dT[\d:.]+(?:Z|[+-]\d\d:\d\d)?)
     |(?P<punct>[(),:/])
     |(?P<word>[A-Za-z_$@][\w.$@]*)
    )""", re.X)
COMPARISONS = {"eq", "ne", "gt", "ge", "lt", "le"}
FUNCTIONS = {"startswith", "endswith", "contains"}


def invalid_filter(detail: str) -> GraphError:
    return bad_request(f"Invalid filter clause: {detail}", "BadRequest")


def unsupported(detail: str) -> GraphError:
    return bad_request(f"The query filter contains one or more invalid nodes: {detail}",
                       "ErrorInvalidUrlQueryFilter")


def tokenize(text: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    pos = 0
    text = text.strip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            raise invalid_filter(f"syntax error at position {pos} in '{text}'.")
        kind = m.lastgroup
        out.append((kind, m.group(kind)))
        pos = m.end()
        while pos < len(text) and text[pos].isspace():
            pos += 1
    return out


class _Parser:
    """Recursive descent over the tokens; produces nested tuples:
    ('or'|'and', a, b), ('not', a), ('cmp', op, left, right), ('fn', name, a, b),
    ('path', [segments]), ('any', [collection path], var, body|None), ('lit', value), ('cast', x, type)."""

    def __init__(self, tokens: list[tuple[str, str]], text: str) -> None:
        self.toks = tokens
        self.i = 0
        self.text = text

    def peek(self, off: int = 0) -> tuple[str, str] | None:
        j = self.i + off
        return self.toks[j] if j < len(self.toks) else None

    def word(self, off: int = 0) -> str | None:
        tok = self.peek(off)
        return tok[1].lower() if tok and tok[0] == "word" else None

    def take(self, value: str | None = None) -> tuple[str, str]:
        tok = self.peek()
        if tok is None or (value is not None and tok[1].lower() != value):
            raise invalid_filter(f"expected '{value or 'a term'}' in '{self.text}'.")
        self.i += 1
        return tok

    def parse(self) -> tuple:
        node = self.expr()
        if self.peek() is not None:
            raise invalid_filter(f"unexpected '{self.peek()[1]}' in '{self.text}'.")
        return node

    def expr(self) -> tuple:
        node = self.conj()
        while self.word() == "or":
            self.take()
            node = ("or", node, self.conj())
        return node

    def conj(self) -> tuple:
        node = self.unary()
        while self.word() == "and":
            self.take()
            node = ("and", node, self.unary())
        return node

    def unary(self) -> tuple:
        if self.word() == "not":
            self.take()
            return ("not", self.unary())
        return self.comparison()

    def comparison(self) -> tuple:
        left = self.operand()
        op = self.word()
        if op in COMPARISONS:
            self.take()
            return ("cmp", op, left, self.operand())
        return left

    def operand(self) -> tuple:
        tok = self.peek()
        if tok is None:
            raise invalid_filter(f"unexpected end of '{self.text}'.")
        kind, value = tok
        if kind == "punct" and value == "(":
            self.take()
            node = self.expr()
            self.take(")")
            return node
        if kind == "str":
            self.take()
            return ("lit", value[1:-1].replace("''", "'"))
        if kind == "num":
            self.take()
            return ("lit", float(value) if "." in value else int(value))
        if kind == "dt":
            self.take()
            return ("lit", value)
        if kind != "word":
            raise invalid_filter(f"unexpected '{value}' in '{self.text}'.")
        low = value.lower()
        if low in ("true", "false"):
            self.take()
            return ("lit", low == "true")
        if low == "null":
            self.take()
            return ("lit", None)
        nxt = self.peek(1)
        if nxt == ("punct", "("):
            if low in FUNCTIONS:
                self.take()
                self.take("(")
                a = self.operand()
                self.take(",")
                b = self.operand()
                self.take(")")
                return ("fn", low, a, b)
            if low == "cast":
                self.take()
                self.take("(")
                a = self.operand()
                self.take(",")
                typ = self.take()[1]
                self.take(")")
                return ("cast", a, typ)
            raise unsupported(f"the function '{value}' is not supported.")
        return self.path()

    def path(self) -> tuple:
        segs = [self.take()[1]]
        while self.peek() == ("punct", "/"):
            self.take()
            name = self.take()[1]
            if name.lower() in ("any", "all") and self.peek() == ("punct", "("):
                if name.lower() == "all":
                    raise unsupported("the lambda operator 'all' is not supported.")
                self.take("(")
                if self.peek() == ("punct", ")"):
                    self.take()
                    return ("any", segs, None, None)
                var = self.take()[1]
                self.take(":")
                body = self.expr()
                self.take(")")
                return ("any", segs, var, body)
            segs.append(name)
        return ("path", segs)


def parse_filter(text: str) -> tuple:
    return _Parser(tokenize(text), text).parse()


# -- evaluation -----------------------------------------------------------------------------------
class ExtIdValue(str):
    """An extended-property id; equality by parsed identity."""


def _norm(v: Any) -> Any:
    return v.lower() if isinstance(v, str) else v


def _compare(op: str, a: Any, b: Any) -> bool:
    if isinstance(a, ExtIdValue) or isinstance(b, ExtIdValue):
        try:
            a, b = parse_ext_id(str(a)).canonical, parse_ext_id(str(b)).canonical
        except GraphError:
            return op == "ne"
    if isinstance(a, list):
        return any(_compare(op, x, b) for x in a) if op != "ne" else all(_compare(op, x, b) for x in a)
    if a is None or b is None:
        return (a is b) if op == "eq" else (a is not b) if op == "ne" else False
    if isinstance(a, (int, float)) != isinstance(b, (int, float)):
        try:
            a, b = float(a), float(b)
        except (TypeError, ValueError):
            a, b = str(a), str(b)
    a, b = _norm(a), _norm(b)
    try:
        return {"eq": a == b, "ne": a != b, "gt": a > b, "ge": a >= b, "lt": a < b, "le": a <= b}[op]
    except TypeError:
        return False


class Evaluator:
    """Evaluates a parsed filter against one object. ``resolve(obj, name)`` gives a top-level
    property (raising GraphError for unknown names); ``collections`` may supply computed
    collections (e.g. singleValueExtendedProperties)."""

    def __init__(self, resolve: Callable[[Any, str], Any]) -> None:
        self.resolve = resolve

    def value(self, node: tuple, obj: Any, env: dict[str, Any]) -> Any:
        kind = node[0]
        if kind == "lit":
            return node[1]
        if kind == "path":
            return self.path_value(node[1], obj, env)
        if kind == "cast":
            v = self.value(node[1], obj, env)
            typ = node[2].lower()
            try:
                if typ in ("edm.int32", "edm.int64", "edm.int16", "edm.byte"):
                    return int(v) if v is not None else None
                if typ in ("edm.double", "edm.single", "edm.decimal"):
                    return float(v) if v is not None else None
                if typ == "edm.string":
                    return None if v is None else str(v)
                if typ == "edm.boolean":
                    return None if v is None else str(v).lower() == "true"
            except (TypeError, ValueError):
                return None
            raise unsupported(f"cast to '{node[2]}' is not supported.")
        return self.test(node, obj, env)

    def path_value(self, segs: list[str], obj: Any, env: dict[str, Any]) -> Any:
        if segs[0] in env:
            cur = env[segs[0]]
            rest = segs[1:]
        else:
            cur = self.resolve(obj, segs[0])
            rest = segs[1:]
        for seg in rest:
            if isinstance(cur, dict):
                if seg not in cur and not any(k.lower() == seg.lower() for k in cur):
                    raise bad_request(f"Could not find a property named '{seg}'.", "RequestBroker--ParseUri")
                cur = cur.get(seg, next((v for k, v in cur.items() if k.lower() == seg.lower()), None))
            elif isinstance(cur, list):
                cur = [c.get(seg) if isinstance(c, dict) else None for c in cur]
            else:
                return None
        return cur

    def test(self, node: tuple, obj: Any, env: dict[str, Any]) -> bool:
        kind = node[0]
        if kind == "or":
            return self.test(node[1], obj, env) or self.test(node[2], obj, env)
        if kind == "and":
            return self.test(node[1], obj, env) and self.test(node[2], obj, env)
        if kind == "not":
            return not self.test(node[1], obj, env)
        if kind == "cmp":
            return _compare(node[1], self.value(node[2], obj, env), self.value(node[3], obj, env))
        if kind == "fn":
            a, b = self.value(node[2], obj, env), self.value(node[3], obj, env)
            if a is None or b is None:
                return False
            if isinstance(a, list):
                return any(self._fn(node[1], x, b) for x in a if x is not None)
            return self._fn(node[1], a, b)
        if kind == "any":
            coll = self.path_value(node[1], obj, env)
            if not isinstance(coll, list):
                raise unsupported(f"'{'/'.join(node[1])}' is not a collection.")
            if node[2] is None:
                return bool(coll)
            return any(self.test(node[3], obj, {**env, node[2]: el}) for el in coll)
        if kind == "lit" and isinstance(node[1], bool):
            return node[1]
        if kind == "path":
            return self.path_value(node[1], obj, env) is True
        raise invalid_filter("the expression is not a condition.")

    @staticmethod
    def _fn(name: str, a: Any, b: Any) -> bool:
        a, b = str(a).lower(), str(b).lower()
        return a.startswith(b) if name == "startswith" else a.endswith(b) if name == "endswith" else b in a


# -- $select / $orderby / $expand ------------------------------------------------------------------
def parse_select(text: str | None, allowed: list[str], type_name: str) -> list[str] | None:
    if text is None:
        return None
    props = [p.strip() for p in text.split(",") if p.strip()]
    lookup = {p.lower(): p for p in allowed}
    out = []
    for p in props:
        if p == "*":
            return None
        if p.lower() not in lookup:
            raise bad_request(f"Could not find a property named '{p}' on type '{type_name}'.",
                              "RequestBroker--ParseUri")
        out.append(lookup[p.lower()])
    return out


def parse_orderby(text: str | None, allowed: list[str]) -> list[tuple[str, bool]]:
    if not text:
        return []
    lookup = {p.lower(): p for p in allowed}
    out = []
    for part in text.split(","):
        words = part.split()
        if not words or len(words) > 2 or (len(words) == 2 and words[1].lower() not in ("asc", "desc")):
            raise bad_request(f"Invalid $orderby clause '{part.strip()}'.", "BadRequest")
        prop = lookup.get(words[0].lower())
        if prop is None:
            raise bad_request(f"Could not find a property named '{words[0]}'.", "RequestBroker--ParseUri")
        out.append((prop, len(words) == 2 and words[1].lower() == "desc"))
    return out


def sort_objects(objs: list[dict], order: list[tuple[str, bool]]) -> None:
    for prop, desc in reversed(order):
        def key(o: dict, prop: str = prop) -> tuple:
            v = o.get(prop)
            if isinstance(v, list):
                v = v[0] if v else None
            return (v is not None, _norm(v) if not isinstance(v, dict) else "")
        objs.sort(key=key, reverse=desc)


def parse_expand(text: str | None) -> tuple | None | bool:
    """$expand for contacts: only ``singleValueExtendedProperties`` (optionally with
    ``($filter=...)`` on id). Returns the parsed id filter, True for all properties, None when absent."""
    if text is None:
        return None
    text = text.strip()
    m = re.fullmatch(r"(?i)singleValueExtendedProperties(?:\((.*)\))?", text, re.S)
    if not m:
        raise bad_request(f"The $expand '{text}' is not supported; the emulator expands"
                          f" singleValueExtendedProperties($filter=id eq '...') only.", "BadRequest")
    inner = (m.group(1) or "").strip()
    if not inner:
        return True
    fm = re.fullmatch(r"(?i)\$filter\s*=\s*(.+)", inner, re.S)
    if not fm:
        raise bad_request(f"Unsupported option in $expand: '{inner}'.", "BadRequest")
    return parse_filter(fm.group(1))
