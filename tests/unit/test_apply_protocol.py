"""The rules of the fenced apply path (issue 7), each as a story told with the in-memory sides.

Each test was written against the earlier two-path service, where it failed: the lease was not
renewed or checked before a side effect, the same owner was granted a lease twice, a count of
stamped contacts let a create skip its lookup, restores from Deleted Items were not re-linked, a
contact turning Private froze its link, and a bad key split its batch.
"""

from __future__ import annotations

from datetime import timedelta

import pytest

from crmsync.core.reconcile import Policy
from crmsync.errors import BadRecord, LeaseTaken
from crmsync.service.apply import LeaseLost, SyncServices, apply_event, apply_events
from tests.unit.fakes import NOW, FakeCrm, FakeExchange, FakeStore

MB = FakeExchange.mailbox


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self):
        return self.now


@pytest.fixture
def world():
    crm, ex, store, clock = FakeCrm(), FakeExchange(), FakeStore(), Clock()
    svc = SyncServices(store=store, crm=crm, exchange_for=lambda mb: ex, policy=Policy(), clock=clock,
                       lease_ttl_s=60, call_budget_s=25, new_account_no=crm.new_account_no)
    return svc, crm, ex, store, clock


def crm_event(store, key, op="upsert"):
    return store.event(source="crm", op=op, crm_key=key)


def ex_event(store, item_id, op="upsert"):
    return store.event(source="exchange", op=op, item_id=item_id)


def test_a_worker_whose_lease_expired_during_a_slow_lookup_does_not_create_a_second_contact(world):
    svc, crm, ex, store, clock = world
    crm.put("account:A1", first_name="Ada")
    first, second = crm_event(store, "account:A1"), crm_event(store, "account:A1")
    real_lookup = ex.find_many_by_crm_key
    calls = []

    def slow_lookup(keys):
        found = real_lookup(keys)
        if not calls:                       # the first worker's lookup hangs past its lease ...
            calls.append(1)
            clock.now += timedelta(seconds=90)
            assert apply_event(svc, second) == "created-exchange"   # ... and another takes over
        return found
    ex.find_many_by_crm_key = slow_lookup
    with pytest.raises(LeaseLost):
        apply_event(svc, first)
    assert len(ex.items) == 1


def test_a_worker_that_lost_its_lease_does_not_overwrite_a_newer_outlook_edit(world):
    svc, crm, ex, store, clock = world
    crm.put("account:A1", first_name="Ada", job_title="CTO")
    apply_event(svc, crm_event(store, "account:A1"))
    item_id = next(iter(ex.items))
    crm.update("account:A1", {"job_title": "CEO"}, crm.read("account:A1").version)
    slow, fresh = crm_event(store, "account:A1"), ex_event(store, item_id)
    real_read = ex.read_many

    def slow_read(ids):
        got = real_read(ids)
        if not getattr(slow_read, "done", False):
            slow_read.done = True
            clock.now += timedelta(seconds=90)
            assert apply_event(svc, fresh) == "updated"          # CEO reaches Outlook
            ex.update(item_id, {"job_title": "Chair"}, ex.items[item_id]["ck"])   # then a newer edit there
        return got
    ex.read_many = slow_read
    with pytest.raises(LeaseLost):
        apply_event(svc, slow)
    assert ex.items[item_id]["record"].job_title == "Chair"


def test_a_lease_is_renewed_before_a_write_it_would_not_outlive(world):
    svc, crm, ex, store, clock = world
    crm.put("account:A1", first_name="Ada")
    real = ex.create_many

    def late_create(entries):
        clock.now += timedelta(seconds=50)   # the call itself took most of the lease
        return real(entries)
    real_lookup = ex.find_many_by_crm_key

    def slowish_lookup(keys):
        clock.now += timedelta(seconds=40)   # 40 s into a 60 s lease: less than the 25 s budget left
        return real_lookup(keys)
    ex.find_many_by_crm_key, ex.create_many = slowish_lookup, late_create
    assert apply_event(svc, crm_event(store, "account:A1")) == "created-exchange"
    assert len(ex.items) == 1 and store.links[1].item_id in ex.items


def test_two_executions_never_share_a_lease_even_with_the_same_owner_name(world):
    svc, crm, ex, store, clock = world
    store.acquire(MB, "account:A1", None, "worker-1", 60, NOW)
    with pytest.raises(LeaseTaken):
        store.acquire(MB, "account:A1", None, "worker-1", 60, NOW)


def test_a_stale_link_and_an_unlinked_stamped_contact_do_not_make_a_duplicate(world):
    svc, crm, ex, store, clock = world
    crm.put("account:OLD", first_name="Old")
    crm.put("account:NEW", first_name="New")
    apply_event(svc, crm_event(store, "account:OLD"))
    ex.items.clear()                                  # the state database is older than the mailbox:
    ex.put(crm_key="account:NEW", first_name="New")   # one stale link, one stamped unlinked contact
    assert apply_event(svc, crm_event(store, "account:NEW")) == "noop"
    assert [it["crm_key"] for it in ex.items.values()].count("account:NEW") == 1


def test_a_contact_restored_from_deleted_items_relinks_and_reactivates_its_account(world):
    svc, crm, ex, store, clock = world
    crm.put("account:A1", first_name="Ada")
    apply_event(svc, crm_event(store, "account:A1"))
    crm.deactivate("account:A1", None)
    assert apply_event(svc, crm_event(store, "account:A1")) == "deleted-exchange"
    (trashed,) = ex.trash
    restored = ex.restore(trashed)                     # the user moves it back: a new ItemId
    assert apply_event(svc, ex_event(store, restored.item_id)) == "restored"
    assert crm.read("account:A1").active
    assert list(ex.items) == [restored.item_id] and not ex.trash
    link = store.find_link(MB, crm_key="account:A1")
    assert (link.item_id, link.deleted) == (restored.item_id, False)


def test_reactivating_an_account_moves_its_contact_back_instead_of_creating_a_second(world):
    svc, crm, ex, store, clock = world
    crm.put("account:A1", first_name="Ada")
    apply_event(svc, crm_event(store, "account:A1"))
    crm.deactivate("account:A1", None)
    apply_event(svc, crm_event(store, "account:A1"))
    row = crm.rows["account:A1"]
    row["active"] = True                               # re-activated by plain SQL
    row["v"] += 100
    assert apply_event(svc, crm_event(store, "account:A1")) == "restored"
    assert len(ex.items) == 1 and not ex.trash
    assert apply_event(svc, crm_event(store, "account:A1")) == "noop"


def test_a_secondary_contact_deleted_in_outlook_stays_deleted_until_edited_in_the_crm(world):
    svc, crm, ex, store, clock = world
    crm.put("contact:7", first_name="Sam", company_name="Acme")
    apply_event(svc, crm_event(store, "contact:7"))
    item_id = next(iter(ex.items))
    ex.delete(item_id, ex.items[item_id]["ck"])
    assert apply_event(svc, ex_event(store, item_id, "delete")) == "unlinked"
    row = crm.rows["contact:7"]
    row["record"] = row["record"].model_copy(update={"company_name": "Acme Renamed"})   # its account renamed
    row["v"] += 1
    assert apply_event(svc, crm_event(store, "contact:7")) == "noop"
    assert not ex.items
    crm.update("contact:7", {"job_title": "Buyer"}, crm.read("contact:7").version)
    assert apply_event(svc, crm_event(store, "contact:7")) == "restored"
    assert len(ex.items) == 1


def test_a_linked_contact_that_turns_private_is_unlinked_and_forgotten(world):
    svc, crm, ex, store, clock = world
    crm.put("account:A1", first_name="Ada", phone_business="+1 212 555 0100")
    apply_event(svc, crm_event(store, "account:A1"))
    item_id = next(iter(ex.items))
    ex.items[item_id]["private"] = True
    assert apply_event(svc, ex_event(store, item_id)) == "unlinked-private"
    link = store.find_link(MB, crm_key="account:A1")
    assert link.private and link.base is None and link.crm_hash is None
    crm.update("account:A1", {"job_title": "CEO"}, crm.read("account:A1").version)
    writes = ex.writes
    assert apply_event(svc, crm_event(store, "account:A1")) == "private-skipped"
    assert ex.writes == writes
    ex.delete(item_id, ex.items[item_id]["ck"])
    apply_event(svc, ex_event(store, item_id, "delete"))
    assert crm.read("account:A1").active, "an Outlook delete of a private contact does not cross"


def test_an_empty_account_key_is_a_dead_letter_at_once_and_the_batch_carries_on(world):
    svc, crm, ex, store, clock = world
    crm.put("account:OK", first_name="Fine")
    bad, ok = crm_event(store, "account:"), crm_event(store, "account:OK")
    result = apply_events(svc, [bad, ok])
    assert isinstance(result.errors[bad], BadRecord) and "account:" in str(result.errors[bad])
    assert result.outcomes[ok] == "created-exchange"


def test_conflicts_are_recorded_only_with_the_link_commit(world):
    svc, crm, ex, store, clock = world
    crm.put("account:A1", first_name="Ada", job_title="CTO")
    apply_event(svc, crm_event(store, "account:A1"))
    item_id = next(iter(ex.items))
    ex.update(item_id, {"job_title": "Chair"}, ex.items[item_id]["ck"])
    crm.update("account:A1", {"job_title": "Founder"}, crm.read("account:A1").version)
    store.acquire(MB, "account:A1", None, "someone-else", 60, NOW)
    with pytest.raises(LeaseTaken):
        apply_event(svc, crm_event(store, "account:A1"))
    assert store.conflicts == []
