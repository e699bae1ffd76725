"""The laws of the sync core, stated with Hypothesis.

1. A merge with an unchanged side is the other side.
2. Merging twice changes nothing (apply the plan, reconcile again: a no-op).
3. crm-wins and exchange-wins mirror each other when the sides are swapped (so does newest-wins
   with the times swapped).
4. The CRM mapping round trip is lossless for every mapped field.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crmsync.core.crm_mapping import (
    account_to_canonical,
    canonical_to_account_columns,
    canonical_to_contact_columns,
    contact_to_canonical,
)
from crmsync.core.normalize import normalize_field, same
from crmsync.core.reconcile import Conflict, Policy, reconcile
from crmsync.errors import BadRecord
from schemas.canonical import ACCOUNT_FIELDS, CONTACT_CRM_READONLY, CONTACT_FIELDS, CanonicalContact

FIELDS = ACCOUNT_FIELDS
REGION = "US"
LAWS = settings(deadline=None)  # the default 100 examples per law

# Values that are equal, or nearly so, under normalization, so that the interesting branches
# (reformatting, echoes, same change on both sides) are hit often, not by luck.
LOOKALIKES = [
    "", " ", "\n", "Ann", " Ann ", "ann", "Ann  Lee", "Ann Lee",
    "+1 (555) 010-2000", "+15550102000", "555.010.2000", "555-010-2000 x12", "+1 555 010 2000;ext=12",
    "+44 20 7946 0000", "020 7946 0000", "555 0102 ask for Bob", "12",
    "Bob@Example.com", "bob@example.com", " BOB@EXAMPLE.COM ", "not an email", "a@b", "@",
    "https://Example.com/", "example.com", "http://example.com/Path/", "example.com/path",
    "<b>Tom & Jerry</b>", "&lt;&amp;&gt;", "\"quoted\" 'single'", "]]>",
    "line 1\r\nline 2", "line 1\nline 2", "line 1  \nline 2\n", "🦊 Zoë", "Zu\u0308rich", "Zürich",
]
# what XML cannot carry, and what exchangelib rewrites to "?" besides (C1 controls but NEL, U+FDD0..U+FDDF)
XML_ILLEGAL = "".join(map(chr, [*range(0x00, 0x09), 0x0B, 0x0C, *range(0x0E, 0x20), *range(0x7F, 0x85),
                                 *range(0x86, 0xA0), *range(0xFDD0, 0xFDE0), 0xFFFE, 0xFFFF]))
XML_TEXT = st.text(st.characters(exclude_categories=("Cs",), exclude_characters=XML_ILLEGAL), max_size=40)
PHONEISH = st.from_regex(r"\A\+?[0-9 ().\-]{0,16}( ?(x|ext\.?|#) ?[0-9]{1,4})?\Z")
EMAILISH = st.builds(lambda a, b: f"{a}@{b}", st.from_regex(r"\A[A-Za-z0-9.+_-]{0,8}\Z"),
                     st.from_regex(r"\A[A-Za-z0-9.-]{0,10}\Z"))
VALUES = st.one_of(st.none(), st.sampled_from(LOOKALIKES), XML_TEXT, PHONEISH, EMAILISH)
TIMES = st.one_of(
    st.none(),
    st.integers(0, 3).map(lambda m: datetime(2026, 11, 27, 9, tzinfo=UTC) + timedelta(minutes=m)),
)
CONFLICT_POLICIES = st.sampled_from(["newest-wins", "crm-wins", "exchange-wins"])
POLICIES = st.builds(
    Policy,
    conflict=CONFLICT_POLICIES,
    crm_readonly=st.sampled_from([frozenset(), CONTACT_CRM_READONLY, frozenset({"notes", "email"})]),
)
records = st.fixed_dictionaries({f: VALUES for f in FIELDS}).map(lambda d: CanonicalContact(**d))


@st.composite
def edited(draw, record: CanonicalContact) -> CanonicalContact:
    """``record`` with some fields replaced (often none, sometimes all)."""
    changes = draw(st.dictionaries(st.sampled_from(FIELDS), VALUES, max_size=len(FIELDS)))
    return record.model_copy(update=changes)


@st.composite
def triples(draw):
    """(base or None, crm, exchange), with the sides derived from the base by edits."""
    base = draw(records)
    crm, exchange = draw(edited(base)), draw(edited(base))
    return (None if draw(st.booleans()) else base), crm, exchange


def apply(record: CanonicalContact, changes) -> CanonicalContact:
    return record.model_copy(update=dict(changes))


def equal_per_field(a: CanonicalContact, b: CanonicalContact, region: str = REGION) -> bool:
    return all(same(f, getattr(a, f), getattr(b, f), region=region) for f in FIELDS)


# ----------------------------------------------------------------- 1. an unchanged side
@LAWS
@given(base=records, data=st.data(), policy=POLICIES.map(lambda p: Policy(p.conflict)), times=st.tuples(TIMES, TIMES))
def test_merge_with_an_unchanged_crm_is_the_exchange_side(base, data, policy, times):
    exchange = data.draw(edited(base))
    plan = reconcile(base, base, exchange, policy, fields=FIELDS,
                     crm_modified_at=times[0], exchange_modified_at=times[1])
    changed = {f: getattr(exchange, f) for f in FIELDS
               if not same(f, getattr(exchange, f), getattr(base, f), region=REGION)}
    assert dict(plan.to_crm) == changed
    assert dict(plan.to_exchange) == {}
    assert plan.conflicts == ()
    assert equal_per_field(plan.base, exchange)


@LAWS
@given(base=records, data=st.data(), policy=POLICIES, times=st.tuples(TIMES, TIMES))
def test_merge_with_an_unchanged_exchange_is_the_crm_side(base, data, policy, times):
    crm = data.draw(edited(base))
    plan = reconcile(base, crm, base, policy, fields=FIELDS,
                     crm_modified_at=times[0], exchange_modified_at=times[1])
    changed = {f: getattr(crm, f) for f in FIELDS if not same(f, getattr(crm, f), getattr(base, f), region=REGION)}
    assert dict(plan.to_exchange) == changed
    assert dict(plan.to_crm) == {}
    assert plan.conflicts == ()
    assert equal_per_field(plan.base, crm)


# ----------------------------------------------------------------- 2. merging twice
@LAWS
@given(triple=triples(), policy=POLICIES, times=st.tuples(TIMES, TIMES))
def test_merging_twice_changes_nothing(triple, policy, times):
    base, crm, exchange = triple
    kw = dict(fields=FIELDS, crm_modified_at=times[0], exchange_modified_at=times[1])
    plan = reconcile(base, crm, exchange, policy, **kw)
    crm2, exchange2 = apply(crm, plan.to_crm), apply(exchange, plan.to_exchange)
    again = reconcile(plan.base, crm2, exchange2, policy, **kw)
    assert again.is_noop and again.conflicts == ()
    assert equal_per_field(again.base, plan.base, policy.region)
    # Both sides now hold the new base; the CRM was never written a read-only field; no write was
    # of a value its target already held.
    assert equal_per_field(crm2, plan.base, policy.region) and equal_per_field(exchange2, plan.base, policy.region)
    assert not policy.crm_readonly & set(plan.to_crm)
    for f, v in plan.to_crm.items():
        assert not same(f, v, getattr(crm, f), region=policy.region)
    for f, v in plan.to_exchange.items():
        assert not same(f, v, getattr(exchange, f), region=policy.region)


# ----------------------------------------------------------------- 3. symmetry
def mirrored(conflict: Conflict) -> tuple:
    side = {"crm": "exchange", "exchange": "crm"}[conflict.chosen]
    return conflict.field, conflict.exchange_value, conflict.crm_value, conflict.base_value, side


@LAWS
@given(triple=triples())
def test_crm_wins_and_exchange_wins_mirror_each_other_when_the_sides_swap(triple):
    base, a, b = triple
    left = reconcile(base, a, b, Policy("crm-wins"), fields=FIELDS)
    right = reconcile(base, b, a, Policy("exchange-wins"), fields=FIELDS)
    assert dict(left.to_crm) == dict(right.to_exchange)
    assert dict(left.to_exchange) == dict(right.to_crm)
    # Where both sides already agree, the base takes the CRM's raw value: equal up to normalization.
    assert equal_per_field(left.base, right.base)
    assert [mirrored(c) for c in left.conflicts] == [
        (c.field, c.crm_value, c.exchange_value, c.base_value, c.chosen) for c in right.conflicts
    ]


@LAWS
@given(triple=triples(), times=st.lists(st.integers(0, 3), min_size=2, max_size=2, unique=True).map(
    lambda ms: [datetime(2026, 11, 27, 9, tzinfo=UTC) + timedelta(minutes=m) for m in ms]))
def test_newest_wins_mirrors_itself_when_sides_and_times_swap(triple, times):
    base, a, b = triple
    left = reconcile(base, a, b, Policy(), fields=FIELDS, crm_modified_at=times[0], exchange_modified_at=times[1])
    right = reconcile(base, b, a, Policy(), fields=FIELDS, crm_modified_at=times[1], exchange_modified_at=times[0])
    assert dict(left.to_crm) == dict(right.to_exchange)
    assert dict(left.to_exchange) == dict(right.to_crm)
    assert equal_per_field(left.base, right.base)


# ----------------------------------------------------------------- 4. the CRM mapping round trip
CRM_VALUES = st.one_of(
    st.none(), XML_TEXT, PHONEISH, EMAILISH, st.sampled_from(LOOKALIKES), st.integers(-10**12, 10**12)
)
ACCOUNT_COLUMNS = [f for f in ACCOUNT_FIELDS]
CONTACT_COLUMNS = [f for f in CONTACT_FIELDS if f not in CONTACT_CRM_READONLY]


def non_empty_text(row: dict, columns) -> dict:
    """What the row says, as text: every column whose value is not null or blank."""
    out = {}
    for c in columns:
        value = row[c]
        if value is None:
            continue
        text = str(value)
        if text.strip():
            out[c] = text
    return out


@LAWS
@given(values=st.fixed_dictionaries({c: CRM_VALUES for c in ACCOUNT_COLUMNS}))
def test_account_round_trip_is_lossless_for_every_mapped_field(values):
    row = {"id": 1, "account_no": "A-1", "is_active": True, "updated_at": None, **values}
    record = account_to_canonical(row)
    columns = canonical_to_account_columns(record.model_dump(include=set(ACCOUNT_FIELDS)))
    assert set(columns) == set(ACCOUNT_COLUMNS)
    assert {c: v for c, v in columns.items() if v is not None} == non_empty_text(row, ACCOUNT_COLUMNS)


@LAWS
@given(values=st.fixed_dictionaries({c: CRM_VALUES for c in CONTACT_COLUMNS}), company=CRM_VALUES)
def test_contact_round_trip_is_lossless_for_every_mapped_field(values, company):
    row = {"id": 5, "account_id": 1, "updated_at": None, **values}
    record = contact_to_canonical(row, company)
    columns = canonical_to_contact_columns(record.model_dump(include=set(CONTACT_FIELDS)))
    assert set(columns) == set(CONTACT_COLUMNS)
    assert {c: v for c, v in columns.items() if v is not None} == non_empty_text(row, CONTACT_COLUMNS)
    expected_company = None if company is None or not str(company).strip() else str(company)
    assert record.company_name == expected_company


@LAWS
@given(values=st.fixed_dictionaries({f: st.one_of(st.none(), XML_TEXT.filter(str.strip)) for f in ACCOUNT_FIELDS}))
def test_canonical_to_row_and_back_is_lossless(values):
    record = CanonicalContact(**values)
    row = {"id": 1, "account_no": "A-1", **canonical_to_account_columns(record.model_dump())}
    assert account_to_canonical(row) == record


@LAWS
@given(field=st.sampled_from(ACCOUNT_COLUMNS), before=XML_TEXT, bad=st.sampled_from(XML_ILLEGAL), after=XML_TEXT)
def test_text_exchange_cannot_store_is_a_bad_record_naming_the_field(field, before, bad, after):
    row = {"id": 1, "account_no": "A-1", **{c: None for c in ACCOUNT_COLUMNS}, field: before + bad + after}
    with pytest.raises(BadRecord, match=f"field {field}: character U\\+"):
        account_to_canonical(row)


# ----------------------------------------------------------------- normalization is a congruence
@LAWS
@given(field=st.sampled_from(FIELDS), a=VALUES, b=VALUES)
def test_same_is_equality_of_normalized_forms(field, a, b):
    na, nb = normalize_field(field, a, region=REGION), normalize_field(field, b, region=REGION)
    assert same(field, a, b, region=REGION) == (na == nb) == same(field, b, a, region=REGION)
