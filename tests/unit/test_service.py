"""The apply protocol with in-memory sides: creates, merges, echoes, deletes, crash replays."""

from __future__ import annotations

import pytest

from crmsync import testhooks
from crmsync.core.reconcile import Policy
from crmsync.service import apply as service
from crmsync.service.apply import SyncServices, apply_event
from tests.unit.fakes import NOW, FakeCrm, FakeExchange, FakeStore


@pytest.fixture
def world():
    crm, ex, store = FakeCrm(), FakeExchange(), FakeStore()
    svc = SyncServices(store=store, crm=crm, exchange_for=lambda mb: ex, policy=Policy(),
                       clock=lambda: NOW, new_account_no=crm.new_account_no)
    return svc, crm, ex, store


def crm_event(store, key, op="upsert"):
    return store.event(source="crm", op=op, crm_key=key)


def ex_event(store, item_id, op="upsert"):
    return store.event(source="exchange", op=op, item_id=item_id)


def test_new_crm_account_is_created_in_exchange_stamped_with_its_key(world):
    svc, crm, ex, store = world
    crm.put("account:A1", first_name="Ada", company_name="Engines", email="ada@x.org")
    assert apply_event(svc, crm_event(store, "account:A1")) == "created-exchange"
    (item,) = ex.items.values()
    assert item["crm_key"] == "account:A1" and item["record"].first_name == "Ada"
    assert store.links[1].item_id is not None and store.links[1].base.email == "ada@x.org"


def test_repeated_and_echo_events_write_nothing(world):
    svc, crm, ex, store = world
    crm.put("account:A1", first_name="Ada")
    apply_event(svc, crm_event(store, "account:A1"))
    item_id = next(iter(ex.items))
    writes = (crm.writes, ex.writes)
    assert apply_event(svc, crm_event(store, "account:A1")) == "noop"
    assert apply_event(svc, ex_event(store, item_id)) == "noop"
    assert (crm.writes, ex.writes) == writes


def test_field_changed_in_exchange_reaches_the_crm(world):
    svc, crm, ex, store = world
    crm.put("account:A1", first_name="Ada", phone_business="+1 555 0100")
    apply_event(svc, crm_event(store, "account:A1"))
    item_id = next(iter(ex.items))
    ex.update(item_id, {"phone_mobile": "+1 555 0177"}, ex.items[item_id]["ck"])
    assert apply_event(svc, ex_event(store, item_id)) == "updated"
    assert crm.read("account:A1").record.phone_mobile == "+1 555 0177"


def test_outlook_contact_becomes_an_account_stamped_before_the_row_exists(world):
    svc, crm, ex, store = world
    item_id = ex.put(first_name="Olga", company_name="Fresh")
    assert apply_event(svc, ex_event(store, item_id)) == "created-crm"
    (key,) = crm.rows
    assert key.startswith("account:EX-")
    assert ex.items[item_id]["crm_key"] == key
    # the CRM insert comes back as a CRM event: an echo
    assert apply_event(svc, crm_event(store, key)) == "noop"


def test_private_outlook_contact_is_never_read_into_the_crm(world):
    svc, crm, ex, store = world
    item_id = ex.put(private=True, first_name="Secret")
    assert apply_event(svc, ex_event(store, item_id)) == "private-skipped"
    assert crm.rows == {}


def test_crm_delete_moves_the_contact_to_deleted_items(world):
    svc, crm, ex, store = world
    crm.put("account:A1", first_name="Ada")
    apply_event(svc, crm_event(store, "account:A1"))
    del crm.rows["account:A1"]
    assert apply_event(svc, crm_event(store, "account:A1", op="delete")) == "deleted-exchange"
    assert ex.items == {} and len(ex.trash) == 1
    assert store.links[1].deleted


def test_exchange_delete_deactivates_the_account(world):
    svc, crm, ex, store = world
    crm.put("account:A1", first_name="Ada")
    apply_event(svc, crm_event(store, "account:A1"))
    item_id = next(iter(ex.items))
    ex.delete(item_id, ex.items[item_id]["ck"])
    assert apply_event(svc, ex_event(store, item_id, op="delete")) == "deactivated-crm"
    assert crm.rows["account:A1"]["active"] is False


def test_both_sides_changed_same_field_newest_wins_and_the_loser_is_logged(world):
    svc, crm, ex, store = world
    crm.put("account:A1", first_name="Ada", job_title="CEO")
    apply_event(svc, crm_event(store, "account:A1"))
    item_id = next(iter(ex.items))
    ex.update(item_id, {"job_title": "Chair"}, ex.items[item_id]["ck"])
    crm.update("account:A1", {"job_title": "Founder"}, crm.read("account:A1").version)
    apply_event(svc, crm_event(store, "account:A1"))
    assert crm.read("account:A1").record.job_title == ex.items[item_id]["record"].job_title
    assert len(store.conflicts) == 1


def test_a_crash_after_the_exchange_create_does_not_duplicate(world, monkeypatch, tmp_path):
    svc, crm, ex, store = world
    crm.put("account:A1", first_name="Ada")

    def crash(name):
        if name == "after_exchange_write":
            raise SystemExit("crash")
    monkeypatch.setattr(service, "crash_point", crash)
    event_id = crm_event(store, "account:A1")
    with pytest.raises(SystemExit):
        apply_event(svc, event_id)
    monkeypatch.setattr(service, "crash_point", testhooks.crash_point)
    store._lease.clear()  # the crashed worker's lease expires
    assert apply_event(svc, event_id) == "noop"
    assert len(ex.items) == 1 and store.links[1].item_id in ex.items


def test_a_crash_between_stamp_and_crm_insert_reuses_the_stamped_key(world, monkeypatch):
    svc, crm, ex, store = world
    item_id = ex.put(first_name="Olga")

    def crash(name):
        if name == "after_exchange_write":
            raise SystemExit("crash")
    monkeypatch.setattr(service, "crash_point", crash)
    event_id = ex_event(store, item_id)
    with pytest.raises(SystemExit):
        apply_event(svc, event_id)
    stamped = ex.items[item_id]["crm_key"]
    monkeypatch.setattr(service, "crash_point", testhooks.crash_point)
    store._lease.clear()
    assert apply_event(svc, event_id) == "created-crm"
    assert list(crm.rows) == [stamped]


def test_a_second_worker_on_a_leased_link_is_told_to_retry(world):
    from crmsync.errors import LeaseTaken

    svc, crm, ex, store = world
    crm.put("account:A1", first_name="Ada")
    store.acquire("alice@example.com", "account:A1", None, "other", 60, NOW)
    with pytest.raises(LeaseTaken):
        apply_event(svc, crm_event(store, "account:A1"))


# ------------------------------------------------------------------------------ batches

def test_a_batch_of_new_accounts_is_created_with_one_bulk_request(world):
    from crmsync.service.apply import apply_events

    svc, crm, ex, store = world
    keys = [f"account:B{i}" for i in range(5)]
    for i, key in enumerate(keys):
        crm.put(key, first_name=f"P{i}", company_name="Bulk")
    ids = [crm_event(store, key) for key in keys]
    result = apply_events(svc, ids)
    assert result.errors == {}
    assert set(result.outcomes.values()) == {"created-exchange"}
    assert sorted(it["crm_key"] for it in ex.items.values()) == sorted(keys)
    # one bulk lookup of the stamps (always), one bulk create
    assert ex.batch_calls == 2
    assert all(store.events[i]["status"] == "applied" for i in ids)


def test_a_batch_of_echoes_writes_nothing(world):
    from crmsync.service.apply import apply_events

    svc, crm, ex, store = world
    keys = [f"account:E{i}" for i in range(3)]
    for key in keys:
        crm.put(key, first_name="Echo")
    apply_events(svc, [crm_event(store, key) for key in keys])
    writes = (crm.writes, ex.writes)
    echoes = [ex_event(store, item_id) for item_id in ex.items] + [crm_event(store, k) for k in keys]
    result = apply_events(svc, echoes)
    assert set(result.outcomes.values()) == {"noop"} and result.errors == {}
    assert (crm.writes, ex.writes) == writes


def test_a_batch_hands_back_a_leased_link_for_a_retry_and_does_the_rest(world):
    from crmsync.errors import LeaseTaken
    from crmsync.service.apply import apply_events

    svc, crm, ex, store = world
    crm.put("account:L1", first_name="Locked")
    crm.put("account:L2", first_name="Free")
    store.acquire("alice@example.com", "account:L1", None, "other", 60, NOW)
    e1, e2 = crm_event(store, "account:L1"), crm_event(store, "account:L2")
    result = apply_events(svc, [e1, e2])
    assert isinstance(result.errors[e1], LeaseTaken)
    assert result.outcomes[e2] == "created-exchange"
    assert store.events[e1]["status"] == "pending"


def test_a_batch_mixes_updates_deletes_and_new_outlook_contacts(world):
    from crmsync.service.apply import apply_events

    svc, crm, ex, store = world
    crm.put("account:M1", first_name="Mia", job_title="CTO")
    crm.put("account:M2", first_name="Max")
    apply_events(svc, [crm_event(store, "account:M1"), crm_event(store, "account:M2")])
    crm.update("account:M1", {"job_title": "CEO"}, crm.read("account:M1").version)
    del crm.rows["account:M2"]
    new_item = ex.put(first_name="Nina", company_name="Outlook Co")
    result = apply_events(svc, [crm_event(store, "account:M1"), crm_event(store, "account:M2", "delete"),
                                ex_event(store, new_item)])
    assert sorted(result.outcomes.values()) == ["created-crm", "deleted-exchange", "updated"]
    assert any(it["record"].job_title == "CEO" for it in ex.items.values())


def test_a_new_link_is_always_looked_up_by_its_stamp_in_one_bulk_request(world):
    from crmsync.service.apply import apply_events

    svc, crm, ex, store = world
    crm.put("account:F1", first_name="Fresh")
    looked_up = []
    real = ex.find_many_by_crm_key
    ex.find_many_by_crm_key = lambda keys: looked_up.append(list(keys)) or real(keys)
    apply_events(svc, [crm_event(store, "account:F1")])
    assert looked_up == [["account:F1"]]


def test_unknown_stamped_contacts_make_every_new_link_look_exchange_up_first(world):
    from crmsync.service.apply import apply_events

    svc, crm, ex, store = world
    crm.put("account:S1", first_name="Stamped")
    ex.put(crm_key="account:S1", first_name="Stamped")   # e.g. the state database was restored
    result = apply_events(svc, [crm_event(store, "account:S1")])
    assert result.outcomes and set(result.outcomes.values()) == {"noop"}
    assert len(ex.items) == 1, "found by its stamp, not created twice"


def test_one_unreadable_record_does_not_spoil_its_batch(world):
    from crmsync.errors import BadRecord
    from crmsync.service.apply import apply_events

    svc, crm, ex, store = world
    crm.put("account:OK", first_name="Fine")
    crm.put("account:BAD", first_name="Broken")
    real_read = crm.read

    def read(key):
        if key == "account:BAD":
            raise BadRecord("account account_no='BAD': field company_name holds U+000B")
        return real_read(key)
    crm.read = read
    crm.read_many = lambda keys: {k: r for k in keys if (r := read(k)) is not None}
    ok, bad = crm_event(store, "account:OK"), crm_event(store, "account:BAD")
    result = apply_events(svc, [ok, bad])
    assert result.outcomes[ok] == "created-exchange"
    assert isinstance(result.errors[bad], BadRecord)
    assert not store._lease or all(t[1] < NOW for t in store._lease.values())
