"""The drift check (crmsync.service.drift) with in-memory fakes: it compares the links' hashes
with both sides, writes nothing, and raises events only for the sides that drifted."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, timedelta

import pytest

from crmsync.core.reconcile import Policy
from crmsync.service.apply import SyncServices, apply_event
from crmsync.service.drift import check_drift
from tests.unit.fakes import NOW, FakeCrm, FakeExchange, FakeStore

MB = FakeExchange.mailbox


@pytest.fixture
def world():
    crm, ex, store = FakeCrm(), FakeExchange(), FakeStore()
    svc = SyncServices(store=store, crm=crm, exchange_for=lambda mb: ex, policy=Policy(),
                       clock=lambda: NOW, new_account_no=crm.new_account_no)
    for key, name in (("account:A1", "Ada"), ("account:B2", "Bob"), ("account:C3", "Cy")):
        crm.put(key, first_name=name, email=f"{name.lower()}@x.org")
        assert apply_event(svc, store.event(source="crm", op="upsert", crm_key=key)) == "created-exchange"
    return svc, crm, ex, store


def _item(ex: FakeExchange, key: str) -> str:
    return next(i for i, it in ex.items.items() if it["crm_key"] == key)


def test_in_step_nothing_is_raised_and_nothing_written(world):
    svc, crm, ex, store = world
    writes, events = (crm.writes, ex.writes), len(store.events)
    report = check_drift(svc, MB, NOW)
    assert (report.checked, report.crm_drift, report.exchange_drift, report.event_ids) == (3, [], [], [])
    assert (crm.writes, ex.writes) == writes and len(store.events) == events


def test_each_drifted_side_gets_one_event_and_the_worker_syncs_it(world):
    svc, crm, ex, store = world
    item = _item(ex, "account:B2")
    ex.update(item, {"job_title": "Edited in Outlook"}, ex.items[item]["ck"])   # unseen by the feed
    crm.put("account:C3", first_name="Cyrus", email="cy@x.org")                  # unseen by the changelog
    report = check_drift(svc, MB, NOW)
    assert report.exchange_drift == ["account:B2"] and report.crm_drift == ["account:C3"]
    raised = [store.events[i] for i in report.event_ids]
    assert [(e["source"], e["crm_key"], e["item_id"]) for e in raised] == [
        ("exchange", "account:B2", item), ("crm", "account:C3", None)]
    assert check_drift(svc, MB, NOW).event_ids == []             # the same drift: no second event
    for event_id in report.event_ids:
        apply_event(svc, event_id)
    assert crm.read("account:B2").record.job_title == "Edited in Outlook"
    assert ex.read(_item(ex, "account:C3")).record.first_name == "Cyrus"
    after = check_drift(svc, MB, NOW)
    assert (after.crm_drift, after.exchange_drift, after.event_ids) == ([], [], [])


def test_missing_records_are_reported_never_deleted_and_leased_links_wait(world):
    svc, crm, ex, store = world
    del ex.items[_item(ex, "account:A1")]                         # gone from Exchange
    link = store.find_link(MB, crm_key="account:B2")
    store.links[link.id] = replace(link, lease_until=NOW + timedelta(seconds=60))   # being applied now
    crm.put("account:B2", first_name="Bobby", email="bob@x.org")
    report = check_drift(svc, MB, NOW)
    assert report.missing == ["account:A1"] and report.event_ids == []
    assert report.checked == 2                                    # B2 waits for its lease
    assert check_drift(svc, MB, NOW + timedelta(minutes=5)).crm_drift == ["account:B2"]
    naive = replace(link, lease_until=(NOW + timedelta(seconds=60)).astimezone(UTC).replace(tzinfo=None))
    store.links[link.id] = naive                                  # as SQLite returns it
    assert check_drift(svc, MB, NOW).checked == 2
