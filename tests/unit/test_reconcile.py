"""Three-way field-level reconciliation: the specification as a table of cases."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from crmsync.core.normalize import same
from crmsync.core.reconcile import Conflict, Plan, Policy, plan_create_crm, plan_create_exchange, reconcile
from schemas.canonical import ACCOUNT_FIELDS, CONTACT_CRM_READONLY, CONTACT_FIELDS
from schemas.canonical import CanonicalContact as R

FIELDS = ("first_name", "company_name", "email", "phone_business", "notes")
T0 = datetime(2026, 11, 27, 9, 0, tzinfo=UTC)
EARLIER, LATER = T0, T0 + timedelta(minutes=5)
DEFAULT_POLICY = Policy()
TIE = "newest-wins: modified in the same second, Exchange wins (see README, Change times)"
BASE = R(first_name="Ann", company_name="Acme", email="ann@acme.test", phone_business="+1 555 010 2000")


def case(id, *, base=BASE, crm=None, exchange=None, policy=DEFAULT_POLICY, crm_at=None, exchange_at=None,
         to_crm=None, to_exchange=None, conflicts=(), merged=None):
    """One row of the table: inputs, then the expected writes, conflicts and (some of) the new base."""
    return pytest.param(
        base, crm if crm is not None else base, exchange if exchange is not None else base, policy,
        crm_at, exchange_at, to_crm or {}, to_exchange or {}, conflicts, merged or {}, id=id,
    )


def edit(record, **changes):
    return record.model_copy(update=changes)


CASES = [
    case("nothing_changed_is_a_noop"),
    case("field_changed_only_in_crm_is_copied_to_exchange",
         crm=edit(BASE, first_name="Anne"), to_exchange={"first_name": "Anne"}, merged={"first_name": "Anne"}),
    case("field_changed_only_in_exchange_is_copied_to_crm",
         exchange=edit(BASE, email="anne@acme.test"), to_crm={"email": "anne@acme.test"},
         merged={"email": "anne@acme.test"}),
    case("field_cleared_in_exchange_is_cleared_in_crm",
         exchange=edit(BASE, phone_business=None), to_crm={"phone_business": None}, merged={"phone_business": None}),
    case("different_fields_changed_on_each_side_both_travel",
         crm=edit(BASE, first_name="Anne"), exchange=edit(BASE, email="a@acme.test"),
         to_crm={"email": "a@acme.test"}, to_exchange={"first_name": "Anne"},
         merged={"first_name": "Anne", "email": "a@acme.test"}),
    case("server_reformatting_a_phone_is_no_edit",
         exchange=edit(BASE, phone_business="+15550102000")),
    case("server_reformatting_an_email_is_no_edit",
         exchange=edit(BASE, email="Ann@ACME.test")),
    case("echo_of_our_own_write_is_no_edit",
         base=edit(BASE, first_name="Anne"), crm=edit(BASE, first_name="Anne"),
         exchange=edit(BASE, first_name=" Anne ")),
    case("change_to_a_value_the_target_already_holds_normalized_is_no_write",
         crm=edit(BASE, phone_business="+1 (555) 010-9999"), exchange=edit(BASE, phone_business="5550109999"),
         merged={"phone_business": "+1 (555) 010-9999"}),
    case("same_change_on_both_sides_is_no_conflict_and_base_takes_the_crm_raw_value",
         crm=edit(BASE, email="Bob@Acme.test"), exchange=edit(BASE, email="bob@acme.test"),
         merged={"email": "Bob@Acme.test"}),
    case("conflict_under_crm_wins_takes_the_crm_value",
         crm=edit(BASE, first_name="Anne"), exchange=edit(BASE, first_name="Annie"), policy=Policy("crm-wins"),
         to_exchange={"first_name": "Anne"},
         conflicts=[Conflict("first_name", "Anne", "Annie", "Ann", "crm", "crm-wins")],
         merged={"first_name": "Anne"}),
    case("conflict_under_exchange_wins_takes_the_exchange_value",
         crm=edit(BASE, first_name="Anne"), exchange=edit(BASE, first_name="Annie"), policy=Policy("exchange-wins"),
         to_crm={"first_name": "Annie"},
         conflicts=[Conflict("first_name", "Anne", "Annie", "Ann", "exchange", "exchange-wins")],
         merged={"first_name": "Annie"}),
    case("conflict_under_newest_wins_takes_exchange_when_it_was_modified_later",
         crm=edit(BASE, first_name="Anne"), exchange=edit(BASE, first_name="Annie"),
         crm_at=EARLIER, exchange_at=LATER, to_crm={"first_name": "Annie"},
         conflicts=[Conflict("first_name", "Anne", "Annie", "Ann", "exchange",
                             "newest-wins: Exchange was modified later")]),
    case("conflict_under_newest_wins_takes_crm_when_it_was_modified_later",
         crm=edit(BASE, first_name="Anne"), exchange=edit(BASE, first_name="Annie"),
         crm_at=LATER, exchange_at=EARLIER, to_exchange={"first_name": "Anne"},
         conflicts=[Conflict("first_name", "Anne", "Annie", "Ann", "crm", "newest-wins: the CRM was modified later")]),
    case("conflict_under_newest_wins_with_equal_times_goes_to_exchange",
         crm=edit(BASE, first_name="Anne"), exchange=edit(BASE, first_name="Annie"),
         crm_at=T0, exchange_at=T0, to_crm={"first_name": "Annie"},
         conflicts=[Conflict("first_name", "Anne", "Annie", "Ann", "exchange", TIE)]),
    case("conflict_under_newest_wins_within_the_same_second_is_a_tie_that_goes_to_exchange",
         crm=edit(BASE, first_name="Anne"), exchange=edit(BASE, first_name="Annie"),
         crm_at=T0 + timedelta(milliseconds=900), exchange_at=T0, to_crm={"first_name": "Annie"},
         conflicts=[Conflict("first_name", "Anne", "Annie", "Ann", "exchange", TIE)]),
    case("conflict_under_newest_wins_one_second_later_in_the_crm_goes_to_the_crm",
         crm=edit(BASE, first_name="Anne"), exchange=edit(BASE, first_name="Annie"),
         crm_at=T0 + timedelta(seconds=1), exchange_at=T0 + timedelta(milliseconds=999),
         to_exchange={"first_name": "Anne"},
         conflicts=[Conflict("first_name", "Anne", "Annie", "Ann", "crm", "newest-wins: the CRM was modified later")]),
    case("conflict_under_newest_wins_with_no_crm_time_goes_to_exchange",
         crm=edit(BASE, first_name="Anne"), exchange=edit(BASE, first_name="Annie"),
         crm_at=None, exchange_at=EARLIER, to_crm={"first_name": "Annie"},
         conflicts=[Conflict("first_name", "Anne", "Annie", "Ann", "exchange",
                             "newest-wins: the CRM's modification time is unknown, Exchange's is known")]),
    case("conflict_under_newest_wins_with_no_exchange_time_goes_to_the_crm",
         crm=edit(BASE, first_name="Anne"), exchange=edit(BASE, first_name="Annie"),
         crm_at=EARLIER, exchange_at=None, to_exchange={"first_name": "Anne"},
         conflicts=[Conflict("first_name", "Anne", "Annie", "Ann", "crm",
                             "newest-wins: Exchange's modification time is unknown, the CRM's is known")]),
    case("conflict_under_newest_wins_with_no_time_on_either_side_goes_to_exchange",
         crm=edit(BASE, first_name="Anne"), exchange=edit(BASE, first_name="Annie"),
         to_crm={"first_name": "Annie"},
         conflicts=[Conflict("first_name", "Anne", "Annie", "Ann", "exchange",
                             "newest-wins: neither modification time is known, Exchange wins")]),
    case("conflict_under_newest_wins_compares_across_time_zones",
         crm=edit(BASE, first_name="Anne"), exchange=edit(BASE, first_name="Annie"),
         crm_at=datetime(2026, 11, 27, 4, 30, tzinfo=timezone(timedelta(hours=-5))), exchange_at=T0,
         to_exchange={"first_name": "Anne"},
         conflicts=[Conflict("first_name", "Anne", "Annie", "Ann", "crm", "newest-wins: the CRM was modified later")]),
    case("conflict_under_newest_wins_treats_a_naive_time_as_utc",
         crm=edit(BASE, first_name="Anne"), exchange=edit(BASE, first_name="Annie"),
         crm_at=datetime(2026, 11, 27, 9, 1), exchange_at=T0, to_exchange={"first_name": "Anne"},
         conflicts=[Conflict("first_name", "Anne", "Annie", "Ann", "crm", "newest-wins: the CRM was modified later")]),
    case("cleared_on_one_side_and_edited_on_the_other_is_a_conflict",
         crm=edit(BASE, phone_business=None), exchange=edit(BASE, phone_business="555 010 3000"),
         policy=Policy("crm-wins"), to_exchange={"phone_business": None},
         conflicts=[Conflict("phone_business", None, "555 010 3000", "+1 555 010 2000", "crm", "crm-wins")],
         merged={"phone_business": None}),
    case("crm_readonly_field_edited_in_exchange_is_put_back_and_the_edit_is_logged",
         exchange=edit(BASE, company_name="Other Co"), policy=Policy(crm_readonly=CONTACT_CRM_READONLY),
         to_exchange={"company_name": "Acme"},
         conflicts=[Conflict("company_name", "Acme", "Other Co", "Acme", "crm", "crm-readonly")],
         merged={"company_name": "Acme"}),
    case("crm_readonly_field_changed_in_crm_goes_to_exchange",
         crm=edit(BASE, company_name="Acme Group"), policy=Policy(crm_readonly=CONTACT_CRM_READONLY),
         to_exchange={"company_name": "Acme Group"}, merged={"company_name": "Acme Group"}),
    case("crm_readonly_field_wins_even_when_exchange_is_newer_under_exchange_wins",
         crm=edit(BASE, company_name="Acme Group"), exchange=edit(BASE, company_name="Other Co"),
         policy=Policy("exchange-wins", crm_readonly=CONTACT_CRM_READONLY), exchange_at=LATER, crm_at=EARLIER,
         to_exchange={"company_name": "Acme Group"},
         conflicts=[Conflict("company_name", "Acme Group", "Other Co", "Acme", "crm", "crm-readonly")]),
    case("crm_readonly_field_only_reformatted_in_exchange_is_left_alone",
         exchange=edit(BASE, company_name=" Acme "), policy=Policy(crm_readonly=CONTACT_CRM_READONLY)),
    # first pairing: no base
    case("first_pairing_of_equal_records_is_a_noop", base=None, crm=BASE, exchange=edit(BASE, email="ANN@acme.test"),
         merged={"email": "ann@acme.test"}),
    case("first_pairing_fills_a_field_empty_in_the_crm_from_exchange",
         base=None, crm=edit(BASE, email=None), exchange=BASE, to_crm={"email": "ann@acme.test"}),
    case("first_pairing_fills_a_field_empty_in_exchange_from_the_crm",
         base=None, crm=BASE, exchange=edit(BASE, notes=None, first_name=None), crm_at=EARLIER, exchange_at=LATER,
         to_exchange={"first_name": "Ann"}),
    case("first_pairing_treats_whitespace_as_empty",
         base=None, crm=edit(BASE, notes="  "), exchange=edit(BASE, notes="call first"),
         to_crm={"notes": "call first"}),
    case("first_pairing_with_two_different_values_is_a_conflict_by_policy",
         base=None, crm=BASE, exchange=edit(BASE, first_name="Annie"), crm_at=EARLIER, exchange_at=LATER,
         to_crm={"first_name": "Annie"},
         conflicts=[Conflict("first_name", "Ann", "Annie", None, "exchange",
                             "newest-wins: Exchange was modified later")]),
    case("first_pairing_crm_readonly_value_replaces_the_exchange_value",
         base=None, crm=BASE, exchange=edit(BASE, company_name="Other Co"),
         policy=Policy(crm_readonly=CONTACT_CRM_READONLY), to_exchange={"company_name": "Acme"},
         conflicts=[Conflict("company_name", "Acme", "Other Co", None, "crm", "crm-readonly")]),
    case("first_pairing_crm_readonly_field_empty_in_the_crm_is_cleared_in_exchange",
         base=None, crm=edit(BASE, company_name=None), exchange=BASE,
         policy=Policy(crm_readonly=CONTACT_CRM_READONLY), to_exchange={"company_name": None},
         conflicts=[Conflict("company_name", None, "Acme", None, "crm", "crm-readonly")]),
]


@pytest.mark.parametrize(
    ("base", "crm", "exchange", "policy", "crm_at", "exchange_at", "to_crm", "to_exchange", "conflicts", "merged"),
    CASES,
)
def test_reconcile(base, crm, exchange, policy, crm_at, exchange_at, to_crm, to_exchange, conflicts, merged):
    plan = reconcile(base, crm, exchange, policy, fields=FIELDS, crm_modified_at=crm_at,
                     exchange_modified_at=exchange_at)
    assert dict(plan.to_crm) == to_crm
    assert dict(plan.to_exchange) == to_exchange
    assert list(plan.conflicts) == list(conflicts)
    assert plan.is_noop == (not to_crm and not to_exchange)
    for field, value in merged.items():
        assert getattr(plan.base, field) == value, field
    # Whatever the case: once applied, each side holds the new base up to normalization.
    crm_after = crm.model_copy(update=dict(plan.to_crm))
    exchange_after = exchange.model_copy(update=dict(plan.to_exchange))
    for field in FIELDS:
        for side in (crm_after, exchange_after):
            assert same(field, getattr(side, field), getattr(plan.base, field), region=policy.region), field
    assert not policy.crm_readonly & set(plan.to_crm)


def test_new_base_holds_the_winning_raw_value_per_field_and_none_outside_fields():
    crm = R(first_name="Anne", department="Sales", phone_business="+1 (555) 010-2000")
    exchange = R(first_name="Ann", department="Ops", phone_business="+15550102000", email="ann@acme.test")
    plan = reconcile(R(first_name="Ann"), crm, exchange, Policy(), fields=("first_name", "phone_business", "email"))
    assert plan.base == R(first_name="Anne", phone_business="+1 (555) 010-2000", email="ann@acme.test")


def test_plan_maps_are_read_only():
    plan = reconcile(None, R(first_name="A"), R(), Policy(), fields=("first_name",))
    with pytest.raises(TypeError):
        plan.to_exchange["first_name"] = "B"  # type: ignore[index]


def test_unknown_policy_is_refused_with_the_choices():
    with pytest.raises(ValueError, match="newest-wins"):
        Policy("oldest-wins")  # type: ignore[arg-type]


def test_unknown_field_is_refused():
    with pytest.raises(ValueError, match="nickname"):
        reconcile(None, R(), R(), Policy(), fields=("nickname",))


def test_phone_comparison_uses_the_policy_region():
    crm = R(phone_business="020 7946 0000")
    exchange = R(phone_business="+44 20 7946 0000")
    assert reconcile(crm, crm, exchange, Policy(region="GB"), fields=("phone_business",)).is_noop
    assert not reconcile(crm, crm, exchange, Policy(region="US"), fields=("phone_business",)).is_noop


def test_conflict_keeps_the_losing_value():
    plan = reconcile(R(city="Oslo"), R(city="Bergen"), R(city="Bodø"), Policy("crm-wins"), fields=("city",))
    assert plan.conflicts[0].losing_value == "Bodø"


def test_create_exchange_plan_sends_every_non_empty_crm_field():
    crm = R(first_name="Ann", last_name=" ", email="ann@acme.test", department="Sales")
    plan = plan_create_exchange(crm, ACCOUNT_FIELDS)
    assert plan == Plan({}, {"first_name": "Ann", "department": "Sales", "email": "ann@acme.test"},
                        R(first_name="Ann", department="Sales", email="ann@acme.test"), ())


def test_create_crm_plan_leaves_out_crm_readonly_fields_but_keeps_them_in_the_base():
    exchange = R(first_name="Eve", company_name="Acme", job_title="CTO", department="not synced for contacts")
    plan = plan_create_crm(exchange, CONTACT_FIELDS, Policy(crm_readonly=CONTACT_CRM_READONLY))
    assert dict(plan.to_crm) == {"first_name": "Eve", "job_title": "CTO"}
    assert not plan.to_exchange and not plan.conflicts
    assert plan.base == R(first_name="Eve", company_name="Acme", job_title="CTO")


def test_a_created_pair_reconciles_to_a_noop():
    crm = R(first_name="Ann", email="ann@acme.test", phone_business="(555) 010-2000")
    plan = plan_create_exchange(crm, ACCOUNT_FIELDS)
    exchange_as_stored = R(first_name="Ann", email="ann@acme.test", phone_business="+15550102000")
    assert reconcile(plan.base, crm, exchange_as_stored, Policy(), fields=ACCOUNT_FIELDS).is_noop
