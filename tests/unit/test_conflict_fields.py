"""Per-field conflict policy (issue 9): ``conflict_fields`` overrides the mailbox's
``conflict_policy`` for single fields, in the pure merge, the config and the apply service."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crmsync.config import load_settings
from crmsync.core.reconcile import Policy, reconcile
from crmsync.errors import ConfigError
from crmsync.service.apply import SyncServices, apply_event
from crmsync.service.conflicts import ConflictQueue
from schemas.canonical import ACCOUNT_FIELDS
from schemas.canonical import CanonicalContact as R
from tests.unit.fakes import NOW, FakeCrm, FakeExchange, FakeHeldConflicts, FakeStore
from tests.unit.test_reconcile_laws import edited, records

F = ("job_title", "city", "notes", "department")
EARLY, LATE = datetime(2026, 12, 1, 9, tzinfo=UTC), datetime(2026, 12, 1, 10, tzinfo=UTC)
POLICY = Policy(conflict="newest-wins", conflict_fields={"job_title": "manual", "notes": "crm-wins",
                                                         "city": "exchange-wins"})
BASE = R(job_title="CTO", city="Oslo", notes="n0", department="R&D")


# ------------------------------------------------------------------ the merge table
@pytest.mark.parametrize("crm, ex, crm_at, ex_at, to_crm, to_exchange, chosen", [
    # both sides changed every field differently; the Exchange side is the newer one
    (dict(job_title="CEO", city="Bergen", notes="crm", department="Ops"),
     dict(job_title="COO", city="Bodø", notes="ex", department="Sales"), EARLY, LATE,
     {"city": "Bodø", "department": "Sales"}, {"notes": "crm"},
     {"job_title": "held", "city": "exchange", "notes": "crm", "department": "exchange"}),
    # the CRM is newer: only the field without its own policy follows newest-wins
    (dict(job_title="CEO", city="Bergen", notes="crm", department="Ops"),
     dict(job_title="COO", city="Bodø", notes="ex", department="Sales"), LATE, EARLY,
     {"city": "Bodø"}, {"notes": "crm", "department": "Ops"},
     {"job_title": "held", "city": "exchange", "notes": "crm", "department": "crm"}),
    # changed on one side only: always merges, whatever the field's policy
    (dict(job_title="CEO", notes="crm"), dict(city="Bodø"), EARLY, LATE,
     {"city": "Bodø"}, {"job_title": "CEO", "notes": "crm"}, {}),
    (dict(), dict(job_title="COO", notes="ex"), LATE, EARLY, {"job_title": "COO", "notes": "ex"}, {}, {}),
    # both changed to the same value: no conflict, no write
    (dict(job_title="CEO", notes="same"), dict(job_title="CEO", notes=" same "), EARLY, LATE, {}, {}, {}),
    # a field cleared on one side and edited on the other: the field's own policy decides
    (dict(notes=None, job_title=None), dict(notes="ex", job_title="COO"), EARLY, LATE,
     {}, {"notes": None}, {"notes": "crm", "job_title": "held"}),
])
def test_each_field_is_decided_by_its_own_policy(crm, ex, crm_at, ex_at, to_crm, to_exchange, chosen):
    plan = reconcile(BASE, BASE.model_copy(update=crm), BASE.model_copy(update=ex), POLICY, fields=F,
                     crm_modified_at=crm_at, exchange_modified_at=ex_at)
    assert dict(plan.to_crm) == to_crm
    assert dict(plan.to_exchange) == to_exchange
    assert {c.field: c.chosen for c in plan.conflicts} == chosen
    if "job_title" in chosen:                      # held: both keep their value, the base its old one
        assert plan.base.job_title == "CTO"


def test_a_field_policy_over_a_manual_mailbox_decides_automatically():
    policy = Policy(conflict="manual", conflict_fields={"notes": "exchange-wins"})
    plan = reconcile(BASE, BASE.model_copy(update={"notes": "a", "city": "X"}),
                     BASE.model_copy(update={"notes": "b", "city": "Y"}), policy, fields=F)
    assert {c.field: c.chosen for c in plan.conflicts} == {"notes": "exchange", "city": "held"}
    assert dict(plan.to_crm) == {"notes": "b"} and dict(plan.to_exchange) == {}
    assert policy.holds_conflicts and POLICY.holds_conflicts
    assert not Policy(conflict_fields={"notes": "crm-wins"}).holds_conflicts


def test_bad_field_policies_are_refused():
    with pytest.raises(ValueError, match="unknown canonical field"):
        Policy(conflict_fields={"phone": "manual"})
    with pytest.raises(ValueError, match="notes: conflict policy 'sometimes'"):
        Policy(conflict_fields={"notes": "sometimes"})  # type: ignore[dict-item]


# ------------------------------------------------------------------ a law
FIELD_POLICIES = st.dictionaries(st.sampled_from(ACCOUNT_FIELDS),
                                 st.sampled_from(["newest-wins", "crm-wins", "exchange-wins", "manual"]))


@settings(deadline=None)
@given(data=st.data(), conflict=st.sampled_from(["newest-wins", "crm-wins", "exchange-wins", "manual"]),
       per_field=FIELD_POLICIES)
def test_each_field_merges_as_if_its_policy_were_the_mailboxs(data, conflict, per_field):
    """The merge of a field under conflict_fields is the merge of that field alone under a
    mailbox whose conflict_policy is the field's."""
    base = data.draw(records)
    crm, ex = data.draw(edited(base)), data.draw(edited(base))
    times = dict(crm_modified_at=data.draw(st.sampled_from([None, EARLY, LATE])),
                 exchange_modified_at=data.draw(st.sampled_from([None, EARLY, LATE])))
    policy = Policy(conflict=conflict, conflict_fields=per_field)
    plan = reconcile(base, crm, ex, policy, fields=ACCOUNT_FIELDS, **times)
    for f in ACCOUNT_FIELDS:
        alone = reconcile(base, crm, ex, Policy(conflict=per_field.get(f, conflict)), fields=(f,), **times)
        assert plan.to_crm.get(f, "-") == alone.to_crm.get(f, "-")
        assert plan.to_exchange.get(f, "-") == alone.to_exchange.get(f, "-")
        assert getattr(plan.base, f) == getattr(alone.base, f)
        assert [c for c in plan.conflicts if c.field == f] == list(alone.conflicts)


# ------------------------------------------------------------------ config
def write(tmp_path, text: str) -> str:
    path = tmp_path / "crmsync.toml"
    path.write_text(text)
    return str(path)


def test_conflict_fields_merge_sync_and_mailbox_and_reach_the_policy(tmp_path):
    from crmsync.bootstrap import Container

    s = load_settings(write(tmp_path, """
[sync]
conflict_fields = {notes = "crm-wins", job_title = "manual"}
[[mailbox]]
address = "a@example.com"
[[mailbox]]
address = "b@example.com"
conflict_policy = "exchange-wins"
conflict_fields = {job_title = "newest-wins", city = "manual"}
"""), env={})
    assert s.effective("a@example.com").conflict_fields == {"notes": "crm-wins", "job_title": "manual"}
    assert s.effective("b@example.com").conflict_fields == {"notes": "crm-wins", "job_title": "newest-wins",
                                                            "city": "manual"}
    b = Container(s).policy_for("b@example.com")
    assert (b.conflict, b.conflict_of("city"), b.conflict_of("job_title"), b.conflict_of("email")) == (
        "exchange-wins", "manual", "newest-wins", "exchange-wins")


@pytest.mark.parametrize("text, expect", [
    ('[[mailbox]]\naddress = "a@example.com"\nconflict_fields = {phone = "manual"}\n',
     "config key mailbox[0].conflict_fields: unknown field(s) phone; mapped fields are:"),
    ('[[mailbox]]\naddress = "a@example.com"\nconflict_fields = {notes = "sometimes"}\n',
     "config key mailbox[0].conflict_fields.notes: must be one of newest-wins, crm-wins, exchange-wins, manual "
     "(got 'sometimes') (mailbox a@example.com)"),
    ('[sync]\nconflict_fields = {nots = "manual"}\n', "config key sync.conflict_fields: unknown field(s) nots"),
])
def test_bad_conflict_fields_name_the_key(tmp_path, text, expect):
    with pytest.raises(ConfigError) as info:
        load_settings(write(tmp_path, text), env={})
    assert expect in str(info.value)


# ------------------------------------------------------------------ the apply service
def test_a_manual_field_waits_for_a_person_in_an_otherwise_automatic_mailbox():
    crm, ex, store, held = FakeCrm(), FakeExchange(), FakeStore(), FakeHeldConflicts()
    policy = Policy(conflict="crm-wins", conflict_fields={"city": "manual"})
    svc = SyncServices(store=store, crm=crm, exchange_for=lambda mb: ex, policy=policy, conflicts=held,
                       clock=lambda: NOW, new_account_no=crm.new_account_no)
    crm.put("account:A1", first_name="Ada", city="Oslo", job_title="CTO")
    apply_event(svc, store.event(source="crm", op="upsert", crm_key="account:A1"))
    item = next(iter(ex.items))
    crm.update("account:A1", {"city": "Bergen", "job_title": "CEO"}, crm.read("account:A1").version)
    ex.update(item, {"city": "Bodø", "job_title": "COO"}, ex.items[item]["ck"])
    assert apply_event(svc, store.event(source="exchange", op="upsert", item_id=item)) == "updated"
    assert ex.items[item]["record"].job_title == "CEO"                          # crm-wins for the rest
    assert (crm.read("account:A1").record.city, ex.items[item]["record"].city) == ("Bergen", "Bodø")
    (row,) = ConflictQueue(held, store, clock=lambda: NOW).pending()
    assert (row.field, row.crm_value, row.exchange_value) == ("city", "Bergen", "Bodø")
