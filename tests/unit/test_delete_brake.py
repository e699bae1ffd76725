"""The delete brake and delete rules (issue 9), with the in-memory sides: a mass delete is held
as a whole, everything else keeps syncing, and an administrator's approval or discard is carried
out through the apply path."""

from __future__ import annotations

from datetime import timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from crmsync.core.deletes import DeleteRules, folder_guard, reason_text
from crmsync.core.reconcile import Policy
from crmsync.errors import CrmsyncError
from crmsync.service.apply import SyncServices, apply_event, apply_events
from crmsync.service.deletes import DeleteReview
from tests.unit.fakes import NOW, FakeCrm, FakeExchange, FakeHeldDeletes, FakeStore

MB = FakeExchange.mailbox


@pytest.mark.parametrize("deletes, links, trips", [
    (25, 1000, False), (26, 1000, True),          # the count
    (4, 10, False), (5, 10, True), (5, 50, False),  # the share, from min_count_for_percent on
    (0, 0, False),
])
def test_the_brake_trips_on_count_or_share(deletes, links, trips):
    assert DeleteRules().trips(deletes, links) is trips


@given(links=st.integers(0, 10_000), deletes=st.integers(0, 500))
def test_more_deletes_never_release_a_tripped_brake(links, deletes):
    rules = DeleteRules()
    if rules.trips(deletes, links):
        assert rules.trips(deletes + 1, links)


def test_unknown_delete_rules_are_refused():
    with pytest.raises(ValueError, match="on_exchange_delete 'remove' is not one of deactivate, delete, unlink"):
        DeleteRules(on_exchange_delete="remove")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="on_crm_delete 'purge' is not one of move-to-deleted-items, hard-delete"):
        DeleteRules(on_crm_delete="purge")  # type: ignore[arg-type]


@pytest.fixture
def world():
    crm, ex, store = FakeCrm(), FakeExchange(), FakeStore()
    held = FakeHeldDeletes(store)
    rules = {"value": DeleteRules(max_count=3, min_count_for_percent=100)}
    svc = SyncServices(store=store, crm=crm, exchange_for=lambda mb: ex, policy=Policy(),
                       policy_for=lambda mb: Policy(deletes=rules["value"]), held=held, clock=lambda: NOW,
                       new_account_no=crm.new_account_no)
    review = DeleteReview(held=held, store=store, clock=lambda: NOW)
    return svc, crm, ex, store, held, review, rules


def synced(svc, crm, ex, store, n):
    """``n`` accounts pushed to Outlook: their keys and item ids."""
    keys = [f"account:A{i}" for i in range(n)]
    for key in keys:
        crm.put(key, first_name=key)
    apply_events(svc, [store.event(source="crm", op="upsert", crm_key=k) for k in keys])
    return keys, {store.find_link(MB, crm_key=k).item_id: k for k in keys}


def delete_in_outlook(ex, store, item_ids):
    for item_id in item_ids:
        ex.delete(item_id, ex.items[item_id]["ck"])
    return [store.event(source="exchange", op="delete", item_id=i) for i in item_ids]


def test_a_mass_delete_arriving_together_is_held_whole_then_approved(world):
    svc, crm, ex, store, held, review, _ = world
    keys, items = synced(svc, crm, ex, store, 8)
    gone = list(items)[:5]
    result = apply_events(svc, delete_in_outlook(ex, store, gone))
    assert set(result.outcomes.values()) == {"delete-held"}
    assert all(crm.read(k).active for k in keys)                     # nothing deactivated
    assert sorted(r.crm_key for r in review.pending()) == sorted(items[i] for i in gone)

    crm.update("account:A7", {"city": "Oslo"}, crm.read("account:A7").version)   # the rest keeps syncing
    assert apply_event(svc, store.event(source="crm", op="upsert", crm_key="account:A7")) == "updated"

    rows, events = review.decide("approve", None)
    assert len(rows) == 5
    assert set(apply_events(svc, events).outcomes.values()) == {"deactivated-crm"}
    assert sorted(k for k in keys if not crm.read(k).active) == sorted(items[i] for i in gone)
    assert review.pending() == [] and {r.status for r in held.rows} == {"applied"}


def test_a_discarded_delete_never_crosses_and_restores_nothing(world):
    svc, crm, ex, store, held, review, _ = world
    keys, items = synced(svc, crm, ex, store, 5)
    gone = list(items)[:4]
    apply_events(svc, delete_in_outlook(ex, store, gone))
    rows, events = review.decide("discard", [r.id for r in review.pending()][:2])
    assert set(apply_events(svc, events).outcomes.values()) == {"unlinked"}
    discarded = {r.crm_key for r in rows}
    for key in discarded:                                             # later CRM edits do not bring it back
        crm.update(key, {"city": "Bergen"}, crm.read(key).version)
        assert apply_event(svc, store.event(source="crm", op="upsert", crm_key=key)) == "noop"
        assert crm.read(key).active
    assert len(ex.items) == 1 and len(ex.trash) == 4
    assert len(review.pending()) == 2


def test_few_deletes_pass_and_count_towards_the_window(world):
    svc, crm, ex, store, held, review, _ = world
    keys, items = synced(svc, crm, ex, store, 8)
    ids = list(items)
    assert set(apply_events(svc, delete_in_outlook(ex, store, ids[:2])).outcomes.values()) == {"deactivated-crm"}
    assert set(apply_events(svc, delete_in_outlook(ex, store, ids[2:4])).outcomes.values()) == {"delete-held"}
    assert [r.status for r in held.rows] == ["passed", "passed", "held", "held"]


def test_a_crm_side_mass_delete_is_held_too(world):
    svc, crm, ex, store, held, review, _ = world
    keys, items = synced(svc, crm, ex, store, 6)
    for key in keys[:4]:
        crm.deactivate(key, crm.read(key).version)
    result = apply_events(svc, [store.event(source="crm", op="upsert", crm_key=k) for k in keys[:4]])
    assert set(result.outcomes.values()) == {"delete-held"} and len(ex.items) == 6
    assert {r.side for r in review.pending()} == {"exchange"}


def test_unlink_rules_keep_deletes_from_crossing(world):
    svc, crm, ex, store, held, review, rules = world
    rules["value"] = DeleteRules(on_exchange_delete="unlink", on_crm_delete="unlink")
    keys, items = synced(svc, crm, ex, store, 2)
    (first, second) = list(items)
    assert apply_events(svc, delete_in_outlook(ex, store, [first])).outcomes.popitem()[1] == "unlinked"
    assert crm.read(items[first]).active
    crm.deactivate(items[second], crm.read(items[second]).version)
    assert apply_event(svc, store.event(source="crm", op="upsert", crm_key=items[second])) == "unlinked"
    assert second in ex.items and review.pending() == []


def test_deciding_unknown_ids_names_them(world):
    svc, crm, ex, store, held, review, _ = world
    with pytest.raises(CrmsyncError, match="held delete.s. 42: not held"):
        review.decide("approve", [42])


def test_old_deletes_fall_out_of_the_window(world):
    svc, crm, ex, store, held, review, rules = world
    keys, items = synced(svc, crm, ex, store, 8)
    ids = list(items)
    apply_events(svc, delete_in_outlook(ex, store, ids[:3]))
    svc.clock = lambda: NOW + timedelta(seconds=rules["value"].window_s + 1)
    assert set(apply_events(svc, delete_in_outlook(ex, store, ids[3:5])).outcomes.values()) == {"deactivated-crm"}


# ------------------------------------------------------------------ the empty-folder guard

@pytest.mark.parametrize("state, links, reason", [
    ("ok", 100, None), ("empty", 100, "folder-empty"), ("empty", 2, "folder-empty"),
    ("empty", 1, None),                                       # its last contact deleted: the brake decides
    ("missing", 100, "folder-missing"), ("missing", 1, "folder-missing"), ("missing", 0, "folder-missing")])
def test_the_guard_holds_deletes_from_an_emptied_or_vanished_folder(state, links, reason):
    assert folder_guard(state, links) == reason


@pytest.mark.parametrize("reason, words", [
    (None, "the delete brake"), ("brake", "the delete brake"),
    ("folder-empty", "sync folder reads empty"), ("folder-missing", "sync folder has disappeared")])
def test_each_hold_reason_reads_clearly(reason, words):
    assert words in reason_text(reason)


LAX = DeleteRules(max_count=1000, max_percent=100.0, min_count_for_percent=1000)


def test_an_emptied_folder_is_held_whatever_the_brake_says_then_approved(world):
    svc, crm, ex, store, held, review, rules = world
    rules["value"] = LAX
    keys, items = synced(svc, crm, ex, store, 6)
    result = apply_events(svc, delete_in_outlook(ex, store, list(items)))       # EmptyFolder: every contact at once
    assert set(result.outcomes.values()) == {"delete-held"}
    assert all(crm.read(k).active for k in keys)
    assert {(r.reason, r.side) for r in review.pending()} == {("folder-empty", "crm")} and len(review.pending()) == 6
    _, events = review.decide("approve", None)
    assert set(apply_events(svc, events).outcomes.values()) == {"deactivated-crm"}
    assert not any(crm.read(k).active for k in keys)


def test_the_last_contacts_leaving_the_folder_are_held_though_earlier_deletes_passed(world):
    svc, crm, ex, store, held, review, rules = world
    rules["value"] = LAX
    keys, items = synced(svc, crm, ex, store, 5)
    ids = list(items)
    assert set(apply_events(svc, delete_in_outlook(ex, store, ids[:2])).outcomes.values()) == {"deactivated-crm"}
    assert set(apply_events(svc, delete_in_outlook(ex, store, ids[2:])).outcomes.values()) == {"delete-held"}
    assert [(r.status, r.reason) for r in held.rows] == [("passed", None)] * 2 + [("held", "folder-empty")] * 3


def test_the_last_contact_deleted_alone_is_no_emptied_folder(world):
    svc, crm, ex, store, held, review, rules = world
    rules["value"] = LAX
    keys, items = synced(svc, crm, ex, store, 3)
    ids = list(items)
    assert set(apply_events(svc, delete_in_outlook(ex, store, ids[:2])).outcomes.values()) == {"deactivated-crm"}
    assert set(apply_events(svc, delete_in_outlook(ex, store, ids[2:])).outcomes.values()) == {"deactivated-crm"}
    assert review.pending() == []


def test_a_vanished_folder_holds_its_deletes_and_a_discard_keeps_the_crm_as_it_is(world):
    svc, crm, ex, store, held, review, rules = world
    rules["value"] = LAX
    keys, items = synced(svc, crm, ex, store, 4)
    ex.items.clear()
    ex.folder_gone = True                                                       # DeleteFolder
    result = apply_events(svc, [store.event(source="crm", op="upsert", crm_key=k) for k in keys])
    assert set(result.outcomes.values()) == {"delete-held"} and result.errors == {}
    assert {r.reason for r in review.pending()} == {"folder-missing"} and len(review.pending()) == 4
    _, events = review.decide("discard", None)
    assert set(apply_events(svc, events).outcomes.values()) == {"unlinked"}
    assert all(crm.read(k).active for k in keys)


def test_brake_holds_say_so(world):
    svc, crm, ex, store, held, review, _ = world
    keys, items = synced(svc, crm, ex, store, 8)
    apply_events(svc, delete_in_outlook(ex, store, list(items)[:5]))
    assert {r.reason for r in review.pending()} == {"brake"}


class _StateProbe:
    def __init__(self, held):
        self.held = held

    def state(self):
        return {"revision": "head", "head": "head", "known": True, "held_deletes": self.held}


def test_doctor_warns_of_held_deletes_and_names_the_empty_folder_guard():
    from crmsync.service.doctor import check_state, failed

    checks = check_state(_StateProbe([("a@x", "brake", 3), ("b@x", "folder-empty", 7), ("c@x", "folder-missing", 2)]),
                         "state.db")
    held = [(c.name, c.status, c.detail) for c in checks if c.name.startswith("deletes ")]
    assert held == [("deletes a@x", "WARN", "3 delete(s) held by the delete brake"),
                    ("deletes b@x", "WARN", "7 delete(s) held: the sync folder reads empty (the empty-folder guard)"),
                    ("deletes c@x", "WARN", "2 delete(s) held: the sync folder has disappeared (the empty-folder guard)")]
    assert not failed(checks)
    assert [c.name for c in check_state(_StateProbe([]), "state.db")] == ["state.database", "state.migrations"]


# ------------------------------------------------------------------ delete and hard-delete

def test_on_exchange_delete_delete_deletes_the_account_row_but_deactivates_one_with_secondary_contacts(world):
    svc, crm, ex, store, held, review, rules = world
    rules["value"] = DeleteRules(on_exchange_delete="delete", max_count=100, min_count_for_percent=100)
    keys, items = synced(svc, crm, ex, store, 3)
    crm.put("contact:9", account=keys[1], first_name="Second")            # keys[1] has a secondary contact
    by_key = {k: i for i, k in items.items()}
    result = apply_events(svc, delete_in_outlook(ex, store, [by_key[keys[0]], by_key[keys[1]]]))
    assert sorted(result.outcomes.values()) == ["deactivated-crm", "deleted-crm"]
    assert crm.read(keys[0]) is None                                        # the row is gone
    assert crm.read(keys[1]) is not None and not crm.read(keys[1]).active  # kept for its contact
    assert crm.read(keys[2]).active
    assert apply_event(svc, store.event(source="crm", op="upsert", crm_key=keys[0])) == "noop"   # nothing comes back
    assert [r.status for r in held.rows] == ["passed", "passed"]           # the brake still counted them


def test_on_crm_delete_hard_delete_removes_the_contact_for_good_and_a_reactivation_creates_it_again(world):
    svc, crm, ex, store, held, review, rules = world
    rules["value"] = DeleteRules(on_crm_delete="hard-delete", max_count=100, min_count_for_percent=100)
    keys, items = synced(svc, crm, ex, store, 2)
    crm.deactivate(keys[0], crm.read(keys[0]).version)
    assert apply_event(svc, store.event(source="crm", op="upsert", crm_key=keys[0])) == "deleted-exchange"
    assert len(ex.items) == 1 and ex.trash == {}                            # not in Deleted Items
    crm.reactivate(keys[0], crm.read(keys[0]).version)
    assert apply_event(svc, store.event(source="crm", op="upsert", crm_key=keys[0])) == "created-exchange"
    assert len(ex.items) == 2


def test_hard_deletes_pass_the_brake_too(world):
    svc, crm, ex, store, held, review, rules = world
    rules["value"] = DeleteRules(on_crm_delete="hard-delete", on_exchange_delete="delete", max_count=2,
                                 min_count_for_percent=100)
    keys, items = synced(svc, crm, ex, store, 6)
    for key in keys[:3]:
        crm.deactivate(key, crm.read(key).version)
    result = apply_events(svc, [store.event(source="crm", op="upsert", crm_key=k) for k in keys[:3]])
    assert set(result.outcomes.values()) == {"delete-held"} and len(ex.items) == 6
    _, events = review.decide("approve", None)
    assert set(apply_events(svc, events).outcomes.values()) == {"deleted-exchange"}
    assert len(ex.items) == 3 and ex.trash == {}
