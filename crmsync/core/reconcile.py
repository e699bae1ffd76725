"""Three-way, field-level reconciliation of a CRM record and its Exchange contact (pure).

Data in, data out: no session, no client, no clock (timestamps come in as values). A worker
reads both sides and the link's base, calls ``reconcile`` and applies the ``Plan``.

Per field, with "changed" meaning "not normalized-equal to the base" (``normalize.same``):

* unchanged on both sides: nothing;
* changed on one side only: that side's raw value goes to the other side;
* changed on both to normalized-equal values: no conflict, no write;
* changed on both differently: a ``Conflict`` resolved by ``Policy.conflict``; the loser's value
  is recorded in it. ``newest-wins`` compares ``crm_modified_at`` and ``exchange_modified_at``
  (record-level times from the servers' clocks: the CRM database's, kept by its triggers, and
  Exchange's LastModifiedTime; a naive datetime is taken as UTC) at whole-second precision,
  because Exchange keeps LastModifiedTime to the second. The later second wins. Within the same
  second Exchange wins (a tie: the CRM's sub-second time would otherwise beat Exchange's
  truncated one by an artefact of precision). A missing time loses to a present one; with both
  missing Exchange wins. Never "the CRM always": a row whose time is unknown cannot claim to be
  newer;
* a field in ``Policy.crm_readonly``: the CRM value goes to Exchange whenever the two differ and
  the CRM is never written. When Exchange had edited it, the discarded Exchange value is kept as a
  ``Conflict`` with reason ``"crm-readonly"``;
* a field whose direction (``Policy.direction_of``) is one-way mirrors its source side: the
  source's value goes to the target whenever the two differ, the source is never written, and an
  edit on the target is discarded and kept as a ``Conflict`` with reason ``"one-way: ..."``.
  ``crm_readonly`` is the same as the direction ``crm-to-exchange``. The base advances to the
  source's value, so a later switch to two-way has no old edit left to replay;
* a field whose direction is ``ignore`` is never written on either side; its base keeps the last
  synced value;
* ``Policy.conflict_fields`` gives single fields their own conflict policy (``conflict_of``);
  the rules above and below apply per field with that field's policy;
* ``manual``: a field both sides changed differently is *held*: neither side is written, the
  base keeps its old value (so the field stays a conflict), the rest of the record merges, and
  the ``Conflict`` has ``chosen="held"``. A person's decision comes in as ``resolved`` (field ->
  value): that value goes to whichever side does not hold it yet and becomes the base;
* ``base=None`` (first pairing): a field empty on one side takes the other side's value; both
  non-empty and different is a conflict by policy (``base_value=None``).

A write is left out whenever its target already holds a normalized-equal value: the server's
reformatting ("+15550102000" for "+1 (555) 010-2000") and our own echoes cause no write.

``Plan.base`` is what both sides hold once the plan is applied: per field the winning raw value;
where no write happens because both sides are normalized-equal, the CRM's raw value. Canonical
fields outside ``fields`` are ``None`` in it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Literal

from crmsync.core.deletes import DeleteRules
from crmsync.core.normalize import normalize_field
from schemas.canonical import CanonicalContact

ConflictPolicy = Literal["newest-wins", "crm-wins", "exchange-wins", "manual"]
_POLICIES = ("newest-wins", "crm-wins", "exchange-wins", "manual")
#: Which way a mailbox (or one field) syncs. ``ignore`` is for fields only: never written.
Direction = Literal["two-way", "crm-to-exchange", "exchange-to-crm"]
FieldDirection = Literal["two-way", "crm-to-exchange", "exchange-to-crm", "ignore"]
DIRECTIONS = ("two-way", "crm-to-exchange", "exchange-to-crm")
FIELD_DIRECTIONS = (*DIRECTIONS, "ignore")


@dataclass(frozen=True)
class Conflict:
    """A field both sides changed differently (or an Exchange edit of a CRM-read-only field)."""

    field: str
    crm_value: str | None
    exchange_value: str | None
    base_value: str | None
    chosen: str  # "crm" | "exchange" | "held" (manual: waits for a person, nothing written)
    reason: str

    @property
    def losing_value(self) -> str | None:
        return self.exchange_value if self.chosen == "crm" else self.crm_value


@dataclass(frozen=True)
class Policy:
    """How to resolve conflicts, which way the mailbox and each field sync, and the phone region.

    Data only: ``direction`` is the mailbox's, ``field_rules`` maps a field to its own direction
    (overriding the mailbox's where it is narrower), ``crm_readonly`` names fields the CRM never
    takes (the direction ``crm-to-exchange``)."""

    conflict: ConflictPolicy = "newest-wins"
    crm_readonly: frozenset[str] = frozenset()
    region: str = "US"
    direction: Direction = "two-way"
    field_rules: Mapping[str, FieldDirection] = field(default_factory=dict)
    deletes: DeleteRules = DeleteRules()
    #: CRM -> Exchange filter: (account field, allowed values); a CRM account is pushed to a new
    #: Exchange contact only when every rule holds (its secondary contacts follow the account).
    push_filter: tuple[tuple[str, frozenset[str]], ...] = ()
    #: Per-field conflict policies overriding ``conflict`` for those fields.
    conflict_fields: Mapping[str, ConflictPolicy] = field(default_factory=dict)
    #: CRM -> Exchange: only active accounts are pushed and kept (an account deactivated is a
    #: delete); False: inactive accounts sync like active ones, only a deleted CRM row is a delete.
    only_active: bool = True
    #: A record new on one side: "match-then-create" | "create" | "review" (crmsync.core.second_source).
    on_new_record: str = "match-then-create"

    def __post_init__(self) -> None:
        for name, kind in (("", self.conflict), *((f"{f}: ", k) for f, k in self.conflict_fields.items())):
            if kind not in _POLICIES:
                raise ValueError(f"{name}conflict policy {kind!r} is not one of {', '.join(_POLICIES)}")
        _check_fields(tuple(self.conflict_fields))
        object.__setattr__(self, "conflict_fields", MappingProxyType(dict(self.conflict_fields)))
        if self.direction not in DIRECTIONS:
            raise ValueError(f"direction {self.direction!r} is not one of {', '.join(DIRECTIONS)}")
        bad = {f: d for f, d in self.field_rules.items() if d not in FIELD_DIRECTIONS}
        if bad:
            raise ValueError("field direction(s) " + ", ".join(f"{f}={d!r}" for f, d in bad.items())
                             + f" not one of {', '.join(FIELD_DIRECTIONS)}")
        object.__setattr__(self, "crm_readonly", frozenset(self.crm_readonly))
        object.__setattr__(self, "field_rules", MappingProxyType(dict(self.field_rules)))
        object.__setattr__(self, "push_filter", tuple((f, frozenset(v)) for f, v in self.push_filter))
        _check_fields(tuple(f for f, _ in self.push_filter))
        if self.on_new_record not in ("match-then-create", "create", "review"):
            raise ValueError(f"on_new_record {self.on_new_record!r} is not one of match-then-create, create, review")

    def __hash__(self) -> int:
        return hash((self.conflict, self.crm_readonly, self.region, self.direction,
                     tuple(sorted(self.field_rules.items())), self.deletes, self.push_filter,
                     tuple(sorted(self.conflict_fields.items())), self.only_active, self.on_new_record))

    def conflict_of(self, name: str) -> ConflictPolicy:
        """The conflict policy of one field: its own (``conflict_fields``), else the mailbox's."""
        return self.conflict_fields.get(name, self.conflict)

    @property
    def holds_conflicts(self) -> bool:
        """Whether any field may be held for a person (``manual`` for the mailbox or a field)."""
        return self.conflict == "manual" or "manual" in self.conflict_fields.values()

    def direction_of(self, name: str) -> FieldDirection:
        """The effective direction of one field: ``ignore`` wins, then the narrowest of the
        mailbox's direction, the field's own rule and ``crm_readonly``. Two opposite one-way
        directions leave nothing that may cross: ``ignore``."""
        own = self.field_rules.get(name, "two-way")
        if own == "ignore":
            return "ignore"
        ways: set[FieldDirection] = {d for d in (self.direction, own) if d != "two-way"}
        if name in self.crm_readonly:
            ways.add("crm-to-exchange")
        if not ways:
            return "two-way"
        if len(ways) > 1:
            return "ignore"
        return ways.pop()

    def pushes(self, account: CanonicalContact) -> bool:
        """Whether this CRM account passes the push filter (values compared trimmed, exactly)."""
        for name, allowed in self.push_filter:
            value = getattr(account, name)
            if value is None or value.strip() not in allowed:
                return False
        return True

    def writes_crm(self, name: str) -> bool:
        return self.direction_of(name) in ("two-way", "exchange-to-crm")

    def writes_exchange(self, name: str) -> bool:
        return self.direction_of(name) in ("two-way", "crm-to-exchange")


@dataclass(frozen=True)
class Plan:
    """Field writes for each side, the record both will hold afterwards, and the conflicts.

    ``to_crm``/``to_exchange`` are read-only views (``MappingProxyType``) in field order; take
    ``dict(...)`` of them to serialize.
    """

    to_crm: Mapping[str, str | None]
    to_exchange: Mapping[str, str | None]
    base: CanonicalContact
    conflicts: tuple[Conflict, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "to_crm", MappingProxyType(dict(self.to_crm)))
        object.__setattr__(self, "to_exchange", MappingProxyType(dict(self.to_exchange)))
        object.__setattr__(self, "conflicts", tuple(self.conflicts))

    @property
    def is_noop(self) -> bool:
        """Nothing to write on either side."""
        return not self.to_crm and not self.to_exchange


def _check_fields(fields: tuple[str, ...]) -> None:
    unknown = [f for f in fields if f not in CanonicalContact.model_fields]
    if unknown:
        raise ValueError(f"unknown canonical field(s): {', '.join(map(repr, unknown))}")


def _utc(moment: datetime) -> datetime:
    """``moment`` as a plain aware UTC datetime (naive is taken as UTC). Built field by field, so
    datetime subclasses whose ``astimezone``/``replace`` insist on their own tzinfo type work too."""
    offset = moment.utcoffset()
    plain = datetime(moment.year, moment.month, moment.day, moment.hour, moment.minute, moment.second,
                     moment.microsecond)
    return (plain - offset if offset else plain).replace(tzinfo=UTC)


def _second(moment: datetime) -> datetime:
    """``moment`` in UTC, cut to the whole second (Exchange's LastModifiedTime precision)."""
    return _utc(moment).replace(microsecond=0)


def _resolve(kind: ConflictPolicy, crm_at: datetime | None, exchange_at: datetime | None) -> tuple[str, str]:
    """(chosen side, reason) for a field both sides changed differently, by policy ``kind``."""
    if kind == "crm-wins":
        return "crm", "crm-wins"
    if kind == "exchange-wins":
        return "exchange", "exchange-wins"
    if crm_at is None and exchange_at is None:
        return "exchange", "newest-wins: neither modification time is known, Exchange wins"
    if crm_at is None:
        return "exchange", "newest-wins: the CRM's modification time is unknown, Exchange's is known"
    if exchange_at is None:
        return "crm", "newest-wins: Exchange's modification time is unknown, the CRM's is known"
    crm_s, exchange_s = _second(crm_at), _second(exchange_at)
    if exchange_s > crm_s:
        return "exchange", "newest-wins: Exchange was modified later"
    if crm_s > exchange_s:
        return "crm", "newest-wins: the CRM was modified later"
    return "exchange", "newest-wins: modified in the same second, Exchange wins (see README, Change times)"


def reconcile(
    base: CanonicalContact | None,
    crm: CanonicalContact,
    exchange: CanonicalContact,
    policy: Policy,
    *,
    fields: tuple[str, ...],
    crm_modified_at: datetime | None = None,
    exchange_modified_at: datetime | None = None,
    resolved: Mapping[str, str | None] | None = None,
) -> Plan:
    """Merge both sides against the base, field by field (rules in the module docstring)."""
    _check_fields(fields)
    resolved = resolved or {}
    to_crm: dict[str, str | None] = {}
    to_exchange: dict[str, str | None] = {}
    merged: dict[str, str | None] = {}
    conflicts: list[Conflict] = []

    for f in fields:
        c, e = getattr(crm, f), getattr(exchange, f)
        b = getattr(base, f) if base is not None else None
        nc = normalize_field(f, c, region=policy.region)
        ne = normalize_field(f, e, region=policy.region)
        nb = normalize_field(f, b, region=policy.region)
        # On a first pairing "changed" means "holds something": empty takes the other side.
        crm_changed = nc != nb if base is not None else nc is not None
        exchange_changed = ne != nb if base is not None else ne is not None

        way = policy.direction_of(f)
        if f in resolved and way != "ignore":
            value = resolved[f]
            nv = normalize_field(f, value, region=policy.region)
            merged[f] = value
            if nv != nc and policy.writes_crm(f):
                to_crm[f] = value
            if nv != ne and policy.writes_exchange(f):
                to_exchange[f] = value
            continue
        if way == "ignore":
            merged[f] = b  # never written: the base keeps the last synced value
            continue
        if nc == ne:
            merged[f] = c  # already equal: no write; the base keeps the CRM's raw value
            continue
        if way == "crm-to-exchange":
            merged[f] = to_exchange[f] = c
            if exchange_changed:
                why = "crm-readonly" if f in policy.crm_readonly else "one-way: crm-to-exchange"
                conflicts.append(Conflict(f, c, e, b, "crm", why))
            continue
        if way == "exchange-to-crm":
            merged[f] = to_crm[f] = e
            if crm_changed:
                conflicts.append(Conflict(f, c, e, b, "exchange", "one-way: exchange-to-crm"))
            continue
        if crm_changed and exchange_changed:
            kind = policy.conflict_of(f)
            if kind == "manual":
                merged[f] = b                   # held: both keep their value, the base its old one
                conflicts.append(Conflict(f, c, e, b, "held", "manual"))
                continue
            chosen, reason = _resolve(kind, crm_modified_at, exchange_modified_at)
            conflicts.append(Conflict(f, c, e, b, chosen, reason))
        else:
            chosen = "crm" if crm_changed else "exchange"
        if chosen == "crm":
            merged[f] = to_exchange[f] = c
        else:
            merged[f] = to_crm[f] = e

    return Plan(to_crm, to_exchange, CanonicalContact(**merged), tuple(conflicts))


def _present(record: CanonicalContact, fields: tuple[str, ...]) -> dict[str, str]:
    _check_fields(fields)
    values = {f: getattr(record, f) for f in fields}
    return {f: v for f, v in values.items() if v is not None and v.strip()}


def plan_create_exchange(crm: CanonicalContact, fields: tuple[str, ...], policy: Policy | None = None) -> Plan:
    """Create the Exchange contact from a CRM record: every non-empty field Exchange may take
    goes to Exchange (all of them without a policy). The base holds only what was written."""
    values = _present(crm, fields)
    if policy is not None:
        values = {f: v for f, v in values.items() if policy.writes_exchange(f)}
    return Plan({}, values, CanonicalContact(**values), ())


def plan_create_crm(exchange: CanonicalContact, fields: tuple[str, ...], policy: Policy) -> Plan:
    """Create the CRM record from an Exchange contact, leaving out CRM-read-only fields.

    The base holds every non-empty Exchange field, read-only ones included: the next reconcile
    then sees the Exchange side unchanged and simply sends the CRM's own value there if it differs.
    """
    values = _present(exchange, fields)
    to_crm = {f: v for f, v in values.items() if policy.writes_crm(f)}
    base = {f: v for f, v in values.items() if policy.direction_of(f) != "ignore"}
    return Plan(to_crm, {}, CanonicalContact(**base), ())


def may_create(policy: Policy, side: Literal["crm", "exchange"]) -> bool:
    """Whether a record missing on ``side`` may be created there (a one-way mailbox never
    creates on the side it only reads)."""
    if side == "crm":
        return policy.direction != "crm-to-exchange"
    return policy.direction != "exchange-to-crm"


def may_delete(policy: Policy, side: Literal["crm", "exchange"]) -> bool:
    """Whether a delete may cross to ``side`` (the same rule as creates)."""
    return may_create(policy, side)
