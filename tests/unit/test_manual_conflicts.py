"""The manual conflict queue (issue 9): a field both sides changed differently is held with both
values, the rest of the record syncs, and a person's decision reaches both sides once."""

from __future__ import annotations

import pytest

from crmsync.core.reconcile import Policy, reconcile
from crmsync.errors import CrmsyncError
from crmsync.service.apply import SyncServices, apply_event
from crmsync.service.conflicts import ConflictQueue
from schemas.canonical import CanonicalContact as R
from tests.unit.fakes import NOW, FakeCrm, FakeExchange, FakeHeldConflicts, FakeStore

F = ("first_name", "city", "job_title")
MANUAL = Policy("manual")


def test_manual_holds_the_field_and_merges_the_rest():
    plan = reconcile(R(city="Oslo", job_title="CTO"), R(city="Bergen", job_title="CTO"),
                     R(city="Bodø", job_title="CEO"), MANUAL, fields=F)
    assert dict(plan.to_crm) == {"job_title": "CEO"} and dict(plan.to_exchange) == {}
    assert [(c.field, c.chosen, c.crm_value, c.exchange_value) for c in plan.conflicts] == [
        ("city", "held", "Bergen", "Bodø")]
    assert plan.base.city == "Oslo"                    # still a conflict next time, never a silent win


@pytest.mark.parametrize("value, to_crm, to_exchange", [
    ("Bergen", {}, {"city": "Bergen"}), ("Bodø", {"city": "Bodø"}, {}), ("Tromsø", {"city": "Tromsø"}, {"city": "Tromsø"}),
])
def test_a_resolution_goes_to_the_side_that_lacks_it(value, to_crm, to_exchange):
    plan = reconcile(R(city="Oslo"), R(city="Bergen"), R(city="Bodø"), MANUAL, fields=F, resolved={"city": value})
    assert (dict(plan.to_crm), dict(plan.to_exchange), plan.conflicts) == (to_crm, to_exchange, ())
    assert plan.base.city == value


def test_one_sided_changes_and_equal_changes_never_wait_for_a_person():
    plan = reconcile(R(city="Oslo"), R(city="Oslo"), R(city="Bodø"), MANUAL, fields=F)
    assert dict(plan.to_crm) == {"city": "Bodø"} and plan.conflicts == ()
    assert reconcile(R(city="Oslo"), R(city="Bodø"), R(city=" Bodø "), MANUAL, fields=F).conflicts == ()


@pytest.fixture
def world():
    crm, ex, store, queue_store = FakeCrm(), FakeExchange(), FakeStore(), FakeHeldConflicts()
    svc = SyncServices(store=store, crm=crm, exchange_for=lambda mb: ex, policy=MANUAL, conflicts=queue_store,
                       clock=lambda: NOW, new_account_no=crm.new_account_no)
    return svc, crm, ex, store, ConflictQueue(queue_store, store, clock=lambda: NOW)


def both_edited(svc, crm, ex, store):
    crm.put("account:A1", first_name="Ada", city="Oslo", job_title="CTO")
    apply_event(svc, store.event(source="crm", op="upsert", crm_key="account:A1"))
    item = next(iter(ex.items))
    crm.update("account:A1", {"city": "Bergen"}, crm.read("account:A1").version)
    ex.update(item, {"city": "Bodø", "job_title": "CEO"}, ex.items[item]["ck"])
    assert apply_event(svc, store.event(source="exchange", op="upsert", item_id=item)) == "updated"
    return item


def test_a_held_field_keeps_both_values_until_resolved_then_reaches_both_sides(world):
    svc, crm, ex, store, queue = world
    item = both_edited(svc, crm, ex, store)
    assert crm.read("account:A1").record.job_title == "CEO"                       # the rest synced
    assert (crm.read("account:A1").record.city, ex.items[item]["record"].city) == ("Bergen", "Bodø")
    apply_event(svc, store.event(source="crm", op="upsert", crm_key="account:A1"))   # held again: one row
    (held,) = queue.pending()
    assert (held.field, held.crm_value, held.exchange_value, held.base_value) == ("city", "Bergen", "Bodø", "Oslo")

    row, events = queue.resolve(held.id, None, "Tromsø", "cli:admin")
    assert row.decided_by == "cli:admin (--value)"
    assert apply_event(svc, events[0]) == "updated"
    assert (crm.read("account:A1").record.city, ex.items[item]["record"].city) == ("Tromsø", "Tromsø")
    assert queue.pending() == [] and queue.show(held.id).status == "applied"
    assert [c[2:6] for c in store.conflicts] == [("city", "Bergen", "Bodø", "manual: cli:admin (--value)")]
    assert apply_event(svc, store.event(source="crm", op="upsert", crm_key="account:A1")) == "noop"


def test_take_a_side_and_bad_requests(world):
    svc, crm, ex, store, queue = world
    item = both_edited(svc, crm, ex, store)
    (held,) = queue.pending()
    with pytest.raises(CrmsyncError, match="exactly one of"):
        queue.resolve(held.id, "crm", "x", "cli:admin")
    with pytest.raises(CrmsyncError, match="conflict 99: no such conflict"):
        queue.resolve(99, "crm", None, "cli:admin")
    _, events = queue.resolve(held.id, "exchange", None, "cli:admin")
    with pytest.raises(CrmsyncError, match="already resolved"):
        queue.resolve(held.id, "crm", None, "cli:admin")
    apply_event(svc, events[0])
    assert crm.read("account:A1").record.city == "Bodø" and ex.items[item]["record"].city == "Bodø"


def test_a_contact_turning_private_takes_its_held_conflicts_with_it(world):
    svc, crm, ex, store, queue = world
    item = both_edited(svc, crm, ex, store)
    assert queue.pending()
    ex.items[item]["private"] = True
    assert apply_event(svc, store.event(source="exchange", op="upsert", item_id=item)) == "unlinked-private"
    assert svc.conflicts.rows == []
