"""Contract of the EWS adapter (``EwsExchange``, ``ExchangeFeed``, ``connect``/``open_folder``)
against the project's EWS emulator, run as a subprocess and driven by unmodified exchangelib.
``TestEwsSide`` runs the port contract shared with the Graph adapter (exchange_side_contract.py);
the module's functions test what is EWS's own.

Contacts "made in Outlook" are created with plain exchangelib, as a user's client would.
"""

from __future__ import annotations

import copy
import re
import time
import uuid
from collections.abc import Iterator

import pytest
from exchangelib import Contact
from exchangelib.indexed_properties import EmailAddress, PhoneNumber, PhysicalAddress
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crmsync.adapters.exchange.ews import connect as ews_connect
from crmsync.adapters.exchange.ews.connect import open_folder
from crmsync.adapters.exchange.ews.feed import ExchangeChange, ExchangeFeed, SyncStateExpired
from crmsync.adapters.exchange.ews.side import EwsExchange
from crmsync.config import load_settings
from crmsync.errors import BadRecord, ConfigError, Stale, Transient
from crmsync.ports import ExchangeRecord
from schemas.canonical import ACCOUNT_FIELDS, CanonicalContact
from tests.contract.exchange_side_contract import ExchangeSideContract
from tests.support.emulator_proc import EmulatorProcess, free_port, self_signed_cert, start_emulator
from tests.support.exchange_settings import exchange_settings
from tests.support.pipeline import wait_until

ALICE, ALICE_PW = "alice@example.com", "secret1"
BOB, BOB_PW = "bob@example.com", "secret2"
SVC, SVC_PW = "svc@example.com", "svc-secret"
MAX_WAIT = 1.0  # exchangelib may sleep at most this long on a back-off before we raise Transient



def connect(*, endpoint: str, mailbox: str, **options):
    """An account through typed settings, as the composition root opens one."""
    return ews_connect.connect(exchange_settings(endpoint, **options), mailbox)


FULL = CanonicalContact(
    first_name="Zoë", last_name="O'Brien & <Sons>", company_name="Müller \"GmbH\" & Co. <KG>",
    job_title="Head of R&D", department="Ünits ]]> & more", email="zoe@example.com", email2="z.obrien@example.org",
    phone_business="+41 44 123 45 67", phone_mobile="+41 79 765 43 21", phone_home="+41 44 000 00 00",
    fax="+41 44 123 45 68", street="Bahnhofstrasse 1\nPostfach 12", city="Zürich", state="ZH",
    postal_code="8001", country="Switzerland", website="https://example.com/a?b=1&c=2",
    notes="Line 1 <b>not html</b> & 'quotes'\r\nLine 2 — 名前 🙂\n\n\tindented &amp; &#13; ",
)


@pytest.fixture(scope="module")
def emulator_proc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmulatorProcess]:
    emu = start_emulator(tmp_path_factory.mktemp("ews"), {ALICE: ALICE_PW, BOB: BOB_PW, SVC: SVC_PW},
                         extra_args=["--impersonator", SVC])
    try:
        yield emu
    finally:
        emu.stop()


@pytest.fixture(scope="module")
def ews_account(emulator_proc: EmulatorProcess):
    return connect(endpoint=emulator_proc.endpoint, mailbox=ALICE, auth="basic", username=ALICE, password=ALICE_PW,
                   access="delegate", max_wait=MAX_WAIT, timeout_s=30)


@pytest.fixture
def ews_folder(ews_account):
    """A fresh sync folder per test, so tests never see each other's contacts."""
    return open_folder(ews_account, f"CRM {uuid.uuid4().hex[:8]}")


@pytest.fixture
def ews_side(ews_account, ews_folder, emulator_proc: EmulatorProcess) -> Iterator[EwsExchange]:
    yield EwsExchange(ews_account, ews_folder)
    emulator_proc.clear_faults()


def outlook_contact(folder, **kwargs) -> Contact:
    """A contact as a user's Outlook would save it (no crmsync stamp)."""
    kwargs.setdefault("display_name", "Someone")
    return Contact(account=folder.account, folder=folder, **kwargs).save()


def folder_ids(folder) -> set[str]:
    return {i for (i,) in folder.all().values_list("id")}


# --------------------------------------------------------------------------- create / find / read


def test_a_created_contact_is_stamped_and_found_by_its_crm_key(ews_side):
    created = ews_side.create("account:A-100", {"first_name": "Ada", "last_name": "Lovelace"})
    found = ews_side.find_by_crm_key("account:A-100")
    assert found is not None
    assert (found.item_id, found.change_key, found.crm_key) == (created.item_id, created.change_key, "account:A-100")
    assert found.record == CanonicalContact(first_name="Ada", last_name="Lovelace")
    assert ews_side.find_by_crm_key("account:nope") is None


def test_every_mapped_field_survives_the_trip_through_exchange(ews_side):
    created = ews_side.create("account:FULL", FULL.model_dump())
    assert created.record == FULL
    read = ews_side.read(created.item_id)
    assert read is not None
    assert read.record == FULL
    assert read.change_key == created.change_key
    assert read.private is False and read.modified_at is not None


def test_reading_an_unknown_item_id_gives_none(ews_side):
    created = ews_side.create("account:X", {"first_name": "X"})
    ews_side.delete(created.item_id, created.change_key)
    assert ews_side.read(created.item_id) is None


def test_a_contact_of_another_folder_is_not_read_through_this_one(ews_account, ews_side):
    other = open_folder(ews_account, f"Other {uuid.uuid4().hex[:6]}")
    item = outlook_contact(other, given_name="Elsewhere")
    assert ews_side.read(item.id) is None


def test_display_name_is_derived_on_create(ews_account, ews_side):
    created = ews_side.create("account:D", {"first_name": "Grace", "last_name": "Hopper", "company_name": "Navy"})
    (item,) = ews_account.fetch(ids=[(created.item_id, None)], only_fields=["display_name", "file_as"])
    assert (item.display_name, item.file_as) == ("Grace Hopper", "Hopper, Grace")


# --------------------------------------------------------------------------- update


def test_update_with_the_current_change_key_writes_only_the_changes(ews_side):
    created = ews_side.create("account:U", {"first_name": "Ada", "city": "London", "phone_business": "+44 1"})
    updated = ews_side.update(created.item_id, {"job_title": "Analyst", "city": None, "postal_code": "N1"},
                              created.change_key)
    assert updated.change_key != created.change_key
    expected = CanonicalContact(first_name="Ada", job_title="Analyst", postal_code="N1", phone_business="+44 1")
    assert updated.record == expected
    assert ews_side.read(created.item_id).record == expected


def test_update_keeps_the_users_own_phone_email_and_address_entries(ews_side, ews_folder):
    item = outlook_contact(
        ews_folder, given_name="Ada",
        phone_numbers=[PhoneNumber(label="BusinessPhone", phone_number="+44 1"),
                       PhoneNumber(label="HomePhone2", phone_number="+44 9")],
        email_addresses=[EmailAddress(label="EmailAddress3", email="private@example.net")],
        physical_addresses=[PhysicalAddress(label="Home", street="1 Home Lane", city="Bath"),
                            PhysicalAddress(label="Business", city="London")],
    )
    before = ews_side.read(item.id)
    ews_side.update(item.id, {"phone_business": "+44 2", "email": "ada@example.com", "city": "Leeds"},
                    before.change_key)
    (fresh,) = ews_side.account.fetch(ids=[(item.id, None)],
                                      only_fields=["phone_numbers", "email_addresses", "physical_addresses"])
    phones = {p.label: p.phone_number for p in fresh.phone_numbers}
    assert phones == {"BusinessPhone": "+44 2", "HomePhone2": "+44 9"}
    emails = {e.label: e.email for e in fresh.email_addresses}
    assert emails == {"EmailAddress1": "ada@example.com", "EmailAddress3": "private@example.net"}
    addresses = {a.label: (a.street, a.city) for a in fresh.physical_addresses}
    assert addresses == {"Home": ("1 Home Lane", "Bath"), "Business": (None, "Leeds")}


def test_update_with_a_stale_change_key_is_stale_and_writes_nothing(ews_side):
    created = ews_side.create("account:S", {"first_name": "Ada"})
    newer = ews_side.update(created.item_id, {"job_title": "One"}, created.change_key)
    with pytest.raises(Stale, match=re.escape(created.item_id)):
        ews_side.update(created.item_id, {"job_title": "Two"}, created.change_key)
    assert ews_side.read(created.item_id).record.job_title == "One"
    assert ews_side.read(created.item_id).change_key == newer.change_key


def test_a_concurrent_edit_in_outlook_makes_our_update_stale(ews_side, ews_account):
    created = ews_side.create("account:C", {"first_name": "Ada"})
    ews_side.read(created.item_id)  # the adapter now holds this version
    (theirs,) = ews_account.fetch(ids=[(created.item_id, None)], only_fields=["job_title"])
    theirs.job_title = "Edited in Outlook"
    theirs.save(update_fields=["job_title"])
    with pytest.raises(Stale):
        ews_side.update(created.item_id, {"job_title": "From the CRM"}, created.change_key)
    assert ews_side.read(created.item_id).record.job_title == "Edited in Outlook"


def test_update_of_a_deleted_contact_is_stale(ews_side):
    created = ews_side.create("account:G", {"first_name": "Gone"})
    ews_side.delete(created.item_id, created.change_key)
    with pytest.raises(Stale, match="deleted or moved"):
        ews_side.update(created.item_id, {"job_title": "x"}, created.change_key)


def test_update_can_restamp_the_crm_key(ews_side, ews_folder):
    item = outlook_contact(ews_folder, given_name="Made in Outlook")
    before = ews_side.read(item.id)
    assert before.crm_key is None
    after = ews_side.update(item.id, {}, before.change_key, crm_key="account:NEW-1")
    assert after.crm_key == "account:NEW-1"
    assert ews_side.find_by_crm_key("account:NEW-1").item_id == item.id


# --------------------------------------------------------------------------- delete


def test_delete_moves_the_contact_to_deleted_items(ews_side, ews_account, ews_folder):
    created = ews_side.create("account:DEL", {"first_name": "Temporary", "last_name": f"T{uuid.uuid4().hex[:6]}"})
    ews_side.delete(created.item_id, created.change_key)
    assert ews_side.read(created.item_id) is None
    assert created.item_id not in folder_ids(ews_folder)
    assert ews_side.find_by_crm_key("account:DEL") is None
    in_trash = ews_account.trash.filter(surname=created.record.last_name)
    assert [c.given_name for c in in_trash] == ["Temporary"]


def test_deleting_a_contact_that_is_already_gone_is_not_an_error(ews_side):
    created = ews_side.create("account:TWICE", {"first_name": "Twice"})
    ews_side.delete(created.item_id, created.change_key)
    ews_side.delete(created.item_id, created.change_key)
    assert ews_side.read(created.item_id) is None


def test_delete_with_an_outdated_change_key_is_stale_and_keeps_the_contact(ews_side):
    created = ews_side.create("account:KEEP", {"first_name": "Keep"})
    ews_side.update(created.item_id, {"job_title": "edited"}, created.change_key)
    with pytest.raises(Stale):
        ews_side.delete(created.item_id, created.change_key)
    assert ews_side.read(created.item_id) is not None


# --------------------------------------------------------------------------- privacy


def test_a_private_contact_reads_as_private_with_an_empty_record(ews_side, ews_folder):
    item = outlook_contact(ews_folder, given_name="Secret", surname="Person", sensitivity="Private",
                           body="my doctor", email_addresses=[EmailAddress(label="EmailAddress1", email="s@x.org")])
    rec = ews_side.read(item.id)
    assert rec.private is True
    assert rec.record == CanonicalContact()
    assert "Secret" not in repr(rec) and "doctor" not in repr(rec)
    (many,) = ews_side.read_many([item.id])
    assert many.private is True and many.record == CanonicalContact()


def test_the_private_set_is_configurable(ews_account, ews_folder):
    item = outlook_contact(ews_folder, given_name="Conf", sensitivity="Confidential")
    assert EwsExchange(ews_account, ews_folder).read(item.id).private is False
    strict = EwsExchange(ews_account, ews_folder, private_sensitivities={"Private", "Confidential"})
    rec = strict.read(item.id)
    assert rec.private is True and rec.record == CanonicalContact()


# --------------------------------------------------------------------------- batch


def test_bulk_create_of_200_contacts_is_one_call_in_two_requests(ews_side, emulator_proc):
    entries = [(f"account:B{i:03d}", {"first_name": f"Bulk{i}", "email": f"bulk{i}@example.com"}) for i in range(200)]
    emulator_proc.reset_stats()
    results = ews_side.create_many(entries)
    assert emulator_proc.stats().get("CreateItem") == 2  # chunks of 100
    assert all(isinstance(r, ExchangeRecord) for r in results)
    assert [r.crm_key for r in results] == [k for k, _ in entries]
    assert [r.record.first_name for r in results] == [f"Bulk{i}" for i in range(200)]
    read = ews_side.read_many([r.item_id for r in results])
    assert [r.record.email for r in read] == [f"bulk{i}@example.com" for i in range(200)]
    assert ews_side.find_by_crm_key("account:B123").record.first_name == "Bulk123"
    assert len(ews_side.stamped_items()) == 200


def test_bulk_create_reports_a_bad_entry_alone(ews_side):
    results = ews_side.create_many([("account:OK1", {"first_name": "Fine"}),
                                    ("account:BAD", {"first_name": "x" * 300}),
                                    ("account:OK2", {"first_name": "Also fine"})])
    assert isinstance(results[0], ExchangeRecord) and isinstance(results[2], ExchangeRecord)
    assert isinstance(results[1], BadRecord)
    assert "account:BAD" in str(results[1]) and "first_name" in str(results[1])


def test_read_many_keeps_the_order_and_marks_missing_items(ews_side):
    a = ews_side.create("account:RA", {"first_name": "A"})
    b = ews_side.create("account:RB", {"first_name": "B"})
    ews_side.delete(a.item_id, a.change_key)
    out = ews_side.read_many([b.item_id, a.item_id])
    assert out[0].record.first_name == "B" and out[1] is None


# --------------------------------------------------------------------------- faults


def test_server_busy_beyond_max_wait_is_transient_with_the_servers_back_off(ews_side, emulator_proc):
    emulator_proc.inject_fault("CreateItem", "server_busy", count=1, back_off_ms=2000)
    t0 = time.monotonic()
    with pytest.raises(Transient) as info:
        ews_side.create("account:BUSY", {"first_name": "Busy"})
    assert time.monotonic() - t0 < 5  # exchangelib did not sit out the back-off itself
    assert info.value.retry_after == pytest.approx(2.0, abs=0.01)
    assert ALICE in str(info.value)
    assert ews_side.find_by_crm_key("account:BUSY") is None
    assert ews_side.create("account:BUSY", {"first_name": "Busy"}).crm_key == "account:BUSY"


def test_a_short_server_busy_is_retried_inside_exchangelib(ews_side, emulator_proc):
    emulator_proc.inject_fault("CreateItem", "server_busy", count=1, back_off_ms=200)
    created = ews_side.create("account:BRIEF", {"first_name": "Brief"})
    assert ews_side.read(created.item_id).record.first_name == "Brief"


def test_http_503_is_transient(ews_side, emulator_proc):
    emulator_proc.inject_fault("GetItem", "http_503", count=1)
    with pytest.raises(Transient):
        ews_side.read("AAAA-some-id")


def test_a_busy_bulk_create_marks_every_entry_transient(ews_side, emulator_proc):
    emulator_proc.inject_fault("CreateItem", "server_busy", count=1, back_off_ms=5000)
    results = ews_side.create_many([(f"account:T{i}", {"first_name": f"T{i}"}) for i in range(3)])
    assert all(isinstance(r, Transient) and r.retry_after == pytest.approx(5.0) for r in results)


# --------------------------------------------------------------------------- feed


def test_the_feed_reports_creates_updates_and_deletes_incrementally(ews_side, ews_account, ews_folder):
    feed = ExchangeFeed(ews_account, ews_folder)
    first, state, more = feed.changes(None)
    assert (first, more) == ([], False)

    a = ews_side.create("account:FA", {"first_name": "A"})
    b = ews_side.create("account:FB", {"first_name": "B"})
    changes, state, more = feed.changes(state)
    assert not more
    assert changes == [ExchangeChange(a.item_id, a.change_key, "upsert"), ExchangeChange(b.item_id, b.change_key, "upsert")]

    changes, state2, _ = feed.changes(state)
    assert changes == []

    b2 = ews_side.update(b.item_id, {"job_title": "x"}, b.change_key)
    ews_side.delete(a.item_id, a.change_key)
    changes, state3, _ = feed.changes(state2)
    assert ExchangeChange(b.item_id, b2.change_key, "upsert") in changes
    assert ExchangeChange(a.item_id, None, "delete") in changes
    assert len(changes) == 2

    # The stored state is what counts: a new feed object (a restarted producer) resumes from it.
    again, _, _ = ExchangeFeed(ews_account, ews_folder).changes(state3)
    assert again == []


def test_the_feed_pages_with_more(ews_side, ews_account, ews_folder):
    ews_side.create_many([(f"account:P{i}", {"first_name": f"P{i}"}) for i in range(5)])
    feed = ExchangeFeed(ews_account, ews_folder)
    seen, state, rounds = [], None, 0
    while True:
        changes, state, more = feed.changes(state, max_changes=2)
        seen += changes
        rounds += 1
        assert len(changes) <= 2
        if not more:
            break
    assert rounds == 3 and len({c.item_id for c in seen}) == 5


def test_the_feed_carries_ids_only(ews_side, ews_account, ews_folder, emulator_proc):
    ews_side.create("account:IDS", {"first_name": "Ids"})
    feed = ExchangeFeed(ews_account, ews_folder)
    changes, _, _ = feed.changes(None)
    assert all(set(vars(c)) == {"item_id", "change_key", "op"} for c in changes)


def test_the_doorbell_rings_on_a_change(ews_side, ews_account, ews_folder):
    feed = ExchangeFeed(ews_account, ews_folder)
    try:
        assert feed.wait_for_change(0.5) is True   # subscribed: whatever came before, look now
        assert feed.wait_for_change(0.5) is False  # nothing happened since
        ews_side.create("account:BELL", {"first_name": "Bell"})
        assert feed.wait_for_change(5) is True
        assert feed.wait_for_change(0.5) is False  # that event was handed out once
    finally:
        feed.close()


def test_the_doorbell_makes_a_lost_subscription_again(ews_side, ews_account, ews_folder):
    """A subscription the server dropped rings once and is made again before the ring, so a
    change right after it still rings."""
    feed = ExchangeFeed(ews_account, ews_folder)
    try:
        assert feed.wait_for_change(0.5) is True
        ews_account.root.unsubscribe(feed._subscription)       # the server forgets it
        assert feed.wait_for_change(0.5) is True              # noticed, made again
        ews_side.create("account:AGAIN", {"first_name": "Again"})
        assert feed.wait_for_change(5) is True
    finally:
        feed.close()


def test_the_doorbell_makes_an_expired_subscription_again(ews_side, ews_account, ews_folder,
                                                         emulator_proc):
    """A subscription not polled for its Timeout expires on the server (the producer was
    paused, Exchange unreachable for a while): noticed, made again, and it rings again."""
    import sqlite3

    feed = ExchangeFeed(ews_account, ews_folder)
    try:
        assert feed.wait_for_change(0.5) is True
        store = emulator_proc.data_dir / "store" / "mailboxes.sqlite3"
        with sqlite3.connect(store, timeout=30) as db:    # as if not polled for an hour
            aged = db.execute("UPDATE ews_subscriptions SET last_used = last_used - 3600 "
                              "WHERE id = ?", (feed._subscription,)).rowcount
        assert aged == 1
        expired = feed._subscription
        assert feed.wait_for_change(0.5) is True              # ErrorExpiredSubscription
        assert feed._subscription not in (None, expired)
        ews_side.create("account:EXPIRED", {"first_name": "Expired"})
        assert feed.wait_for_change(5) is True
    finally:
        feed.close()


def test_the_doorbell_reads_past_a_page_of_events(ews_side, ews_account, ews_folder):
    """More events than one GetEvents page (MoreEvents) ring, and the next wait starts after
    them instead of ringing again for the same ones."""
    feed = ExchangeFeed(ews_account, ews_folder)
    try:
        assert feed.wait_for_change(0.5) is True
        for i in range(60):
            ews_side.create(f"account:PAGE{i}", {"first_name": f"Page{i}"})
        assert feed.wait_for_change(5) is True
        rings = 0
        while feed.wait_for_change(0.3):
            rings += 1
            assert rings < 5, "the doorbell keeps ringing for events it already reported"
        ews_side.create("account:AFTER", {"first_name": "After"})
        assert feed.wait_for_change(5) is True
    finally:
        feed.close()


@pytest.fixture(scope="module")
def fast_stream_emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmulatorProcess]:
    """An emulator whose GetStreamingEvents "minute" lasts 2 s, so a stream's ConnectionTimeout
    ends within a test."""
    emu = start_emulator(tmp_path_factory.mktemp("ews-stream"), {ALICE: ALICE_PW},
                         extra_args=["--streaming-minute-seconds", "2"])
    try:
        yield emu
    finally:
        emu.stop()


def _streaming_feed(account, folder) -> ExchangeFeed:
    feed = ExchangeFeed(account, folder, notifications="streaming")
    assert feed.wait_for_change(10) is True   # subscribed: whatever came before, look now
    return feed


def test_the_streaming_doorbell_rings_on_a_change(ews_side, ews_account, ews_folder):
    feed = _streaming_feed(ews_account, ews_folder)
    try:
        assert feed.wait_for_change(0.5) is False   # nothing happened since
        ews_side.create("account:STREAM", {"first_name": "Stream"})
        assert feed.wait_for_change(5) is True
        assert feed.wait_for_change(0.5) is False   # that event was handed out once
    finally:
        feed.close()


def test_the_streaming_doorbell_never_blocks_the_feed_or_writes(ews_side, ews_account, ews_folder, emulator_proc):
    """The open GetStreamingEvents request holds a connection of its own: SyncFolderItems and
    writes through the same (shared) exchangelib protocol do not wait for it."""
    streams = emulator_proc.stats().get("GetStreamingEvents", 0)
    feed = _streaming_feed(ews_account, ews_folder)
    try:
        wait_until(lambda: emulator_proc.stats().get("GetStreamingEvents", 0) > streams, 10,
                   what="the stream's request to reach the emulator and be held open")
        started = time.monotonic()
        ews_side.create("account:WHILE", {"first_name": "While"})
        changes, _state, _more = feed.changes(None)
        assert time.monotonic() - started < 5
        assert len(changes) == 1
    finally:
        feed.close()


def test_the_streaming_doorbell_makes_a_lost_subscription_again(ews_side, ews_account, ews_folder):
    feed = _streaming_feed(ews_account, ews_folder)
    try:
        lost = feed._stream.subscription
        ews_account.root.unsubscribe(lost)                     # the server forgets it
        assert feed.wait_for_change(10) is True               # noticed, made again
        assert feed._stream.subscription not in (None, lost)
        ews_side.create("account:STREAM2", {"first_name": "Again"})
        assert feed.wait_for_change(5) is True
    finally:
        feed.close()


def test_the_streaming_doorbell_opens_the_next_stream_when_one_times_out(fast_stream_emulator, tmp_path):
    """ConnectionTimeout ends a stream with ConnectionStatus Closed; the next request picks up
    events committed between the two."""
    account = connect(endpoint=fast_stream_emulator.endpoint, mailbox=ALICE, auth="basic", username=ALICE,
                      password=ALICE_PW, access="delegate", max_wait=MAX_WAIT, timeout_s=30)
    folder = open_folder(account, f"CRM {uuid.uuid4().hex[:8]}")
    side = EwsExchange(account, folder)
    feed = ExchangeFeed(account, folder, notifications="streaming", stream_minutes=1)
    try:
        assert feed.wait_for_change(10) is True
        subscription = feed._stream.subscription
        for i in range(3):   # each wait spans at least one 2 s stream
            assert feed.wait_for_change(2.5) is False
            side.create(f"account:TIMEOUT{i}", {"first_name": f"Timeout{i}"})
            assert feed.wait_for_change(5) is True
        assert feed._stream.subscription == subscription   # the same subscription throughout
    finally:
        feed.close()


def test_the_streaming_doorbell_reports_failing_streams_and_recovers(fast_stream_emulator):
    """While GetStreamingEvents fails the doorbell raises (so it counts as not armed and the
    loop polls often); once the server answers again it subscribes afresh, rings, and rings on
    the next change."""
    account = connect(endpoint=fast_stream_emulator.endpoint, mailbox=ALICE, auth="basic", username=ALICE,
                      password=ALICE_PW, access="delegate", max_wait=MAX_WAIT, timeout_s=30)
    folder = open_folder(account, f"CRM {uuid.uuid4().hex[:8]}")
    side = EwsExchange(account, folder)
    feed = ExchangeFeed(account, folder, notifications="streaming", stream_minutes=1)
    try:
        assert feed.wait_for_change(10) is True
        fast_stream_emulator.inject_fault("GetStreamingEvents", "http_503", count=1000)
        deadline = time.monotonic() + 20
        raised = None
        while raised is None and time.monotonic() < deadline:   # the open 2 s stream ends first
            try:
                feed.wait_for_change(0.5)
            except Exception as exc:  # noqa: BLE001 - whatever the failure maps to
                raised = exc
        assert raised is not None, "a failing stream was never reported"
        fast_stream_emulator.clear_faults()
        deadline = time.monotonic() + 30
        rang = False
        while not rang and time.monotonic() < deadline:   # back-off: 1, 2, 4 ... s
            try:
                rang = feed.wait_for_change(1.0)
            except Exception:  # noqa: BLE001 - still failing until its next attempt
                pass
        assert rang, "the doorbell did not ring once the server answered again"
        while feed.wait_for_change(0.5):   # let it settle
            pass
        side.create("account:RECOVERED", {"first_name": "Recovered"})
        assert feed.wait_for_change(5) is True
    finally:
        fast_stream_emulator.clear_faults()
        feed.close()


def test_notifications_must_be_known(ews_account, ews_folder):
    with pytest.raises(ValueError, match="notifications 'push'"):
        ExchangeFeed(ews_account, ews_folder, notifications="push")  # type: ignore[arg-type]


# --------------------------------------------------------------------------- connecting


def test_open_folder_without_create_names_the_missing_folder(ews_account):
    with pytest.raises(ConfigError, match=r"mailbox alice@example.com: folder 'Nope' does not exist under Contacts"):
        open_folder(ews_account, "Nope", create=False)


def test_open_folder_creates_a_nested_path_once(ews_account):
    name = f"Top {uuid.uuid4().hex[:6]}"
    made = open_folder(ews_account, f"{name}/Sub")
    again = open_folder(ews_account, f"{name.upper()}/sub", create=False)
    assert made.id == again.id and made.name == "Sub"
    with pytest.raises(ConfigError, match=r"folder 'Missing' does not exist under Contacts/" + name):
        open_folder(ews_account, f"{name}/Missing", create=False)


def test_a_wrong_password_is_a_config_error_that_does_not_show_it(emulator_proc):
    account = connect(endpoint=emulator_proc.endpoint, mailbox=BOB, auth="basic", username=BOB,
                      password="wrong-pass-123", access="delegate", max_wait=MAX_WAIT)
    with pytest.raises(ConfigError) as info:
        open_folder(account, "CRM Accounts")
    assert BOB in str(info.value)
    assert "wrong-pass-123" not in str(info.value) and "wrong-pass-123" not in repr(info.value)


def test_impersonation_through_a_service_account(emulator_proc):
    account = connect(endpoint=emulator_proc.endpoint, mailbox=BOB, auth="basic", username=SVC, password=SVC_PW,
                      access="impersonation", max_wait=MAX_WAIT)
    folder = open_folder(account, "Impersonated")
    side = EwsExchange(account, folder)
    rec = side.create("account:IMP", {"first_name": "Via service"})
    assert side.read(rec.item_id).record.first_name == "Via service"


def test_impersonation_without_the_right_is_a_config_error_naming_the_mailbox(emulator_proc):
    account = connect(endpoint=emulator_proc.endpoint, mailbox=BOB, auth="basic", username=ALICE,
                      password=ALICE_PW, access="impersonation", max_wait=MAX_WAIT)
    with pytest.raises(ConfigError, match=BOB):
        open_folder(account, "CRM Accounts")


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"CRMSYNC_EXCHANGE_AUTH": "kerberos"}, "exchange.auth"),
        ({"CRMSYNC_EXCHANGE_ACCESS": "owner"}, "exchange.access"),
        ({"CRMSYNC_EXCHANGE_PASSWORD": ""}, "password_env"),
        ({"CRMSYNC_EXCHANGE_AUTH": "oauth"}, "client_id"),
        ({"CRMSYNC_MAILBOXES": "not-an-address"}, "not an email address"),
    ],
)
def test_bad_connection_settings_are_named_before_anything_connects(env, message):
    base = {"CRMSYNC_EXCHANGE_ENDPOINT": "https://mail.example.com/EWS/Exchange.asmx",
            "CRMSYNC_EXCHANGE_USERNAME": ALICE, "CRMSYNC_EXCHANGE_PASSWORD": "pw", "CRMSYNC_MAILBOXES": ALICE}
    with pytest.raises(ConfigError, match=message):
        settings_ = load_settings(env={**base, **env})
        ews_connect.connect(settings_.exchange, settings_.mailboxes[0].address)


# --------------------------------------------------------------------------- the round trip, generated

_xml_chars = st.characters(
    blacklist_categories=("Cs",),
    blacklist_characters=[chr(c) for c in (*range(0x20), *range(0x7F, 0xA0), *range(0xFDD0, 0xFDE0), 0xFFFE, 0xFFFF)
                          if c not in (0x09, 0x0A, 0x0D, 0x85)],
)
_text = st.text(_xml_chars, min_size=1, max_size=40) | st.sampled_from(["<&>", "]]>", "a\r\nb", " padded ", "名前🙂"])
_records = st.builds(
    CanonicalContact,
    **{f: st.none() | _text for f in ACCOUNT_FIELDS},
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(record=_records)
def test_generated_records_survive_create_read_and_update_through_exchange(ews_side, record):
    created = ews_side.create("account:GEN", record.model_dump())
    assert ews_side.read(created.item_id).record == record
    cleared = ews_side.update(created.item_id, {f: None for f in ACCOUNT_FIELDS}, created.change_key)
    assert cleared.record == CanonicalContact() == ews_side.read(created.item_id).record
    ews_side.delete(created.item_id, cleared.change_key)


# --------------------------------------------------------------------------- TLS


@pytest.fixture(scope="module")
def tls_emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmulatorProcess]:
    data = tmp_path_factory.mktemp("ews-tls")
    cert, key = self_signed_cert(data / "tls")
    emu = start_emulator(data, {ALICE: ALICE_PW}, extra_args=["--tls-cert", str(cert), "--tls-key", str(key)])
    try:
        yield emu
    finally:
        emu.stop()


@pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")
def test_an_untrusted_certificate_is_a_config_error_unless_verify_tls_is_off(tls_emulator):
    assert tls_emulator.endpoint.startswith("https://")
    strict = connect(endpoint=tls_emulator.endpoint, mailbox=ALICE, username=ALICE, password=ALICE_PW,
                     access="delegate", max_wait=MAX_WAIT)
    with pytest.raises(ConfigError, match="verify_tls"):
        open_folder(strict, "CRM Accounts")
    # Another (endpoint, credentials) pair: verification stays on for everybody else.
    relaxed = connect(endpoint=tls_emulator.endpoint.replace("127.0.0.1", "localhost"), mailbox=ALICE,
                      username=ALICE, password=ALICE_PW, access="delegate", verify_tls=False, max_wait=MAX_WAIT)
    folder = open_folder(relaxed, "CRM Accounts")
    assert EwsExchange(relaxed, folder).create("account:TLS", {"first_name": "Tls"}).crm_key == "account:TLS"
    with pytest.raises(ConfigError, match="verify_tls"):
        open_folder(connect(endpoint=tls_emulator.endpoint, mailbox=ALICE, username=ALICE, password=ALICE_PW,
                            access="delegate", max_wait=MAX_WAIT), "CRM Accounts")


def test_a_server_that_stays_busy_is_given_up_after_max_wait_in_total(ews_side, emulator_proc):
    emulator_proc.inject_fault("CreateItem", "server_busy", count=20, back_off_ms=400)
    t0 = time.monotonic()
    with pytest.raises(Transient) as info:
        ews_side.create("account:STAYS-BUSY", {"first_name": "Busy"})
    assert time.monotonic() - t0 < MAX_WAIT + 2
    assert info.value.retry_after == pytest.approx(0.4)


def test_a_mailbox_that_does_not_exist_is_a_config_error_naming_it(emulator_proc):
    account = connect(endpoint=emulator_proc.endpoint, mailbox="nobody@example.com", auth="basic", username=SVC,
                      password=SVC_PW, access="impersonation", max_wait=MAX_WAIT)
    with pytest.raises(ConfigError, match="nobody@example.com"):
        open_folder(account, "CRM Accounts")


def test_noauth_reaches_a_mailbox_of_an_open_server(tmp_path):
    emu = EmulatorProcess(data_dir=tmp_path, port=free_port(), users={},
                          extra_args=["--no-auth", "--mailbox", "carol@example.com"]).start()
    try:
        account = connect(endpoint=emu.endpoint, mailbox="carol@example.com", auth="noauth", max_wait=MAX_WAIT)
        side = EwsExchange(account, open_folder(account, "CRM Accounts"))
        created = side.create("account:OPEN", {"first_name": "Open"})
        assert side.read(created.item_id).record.first_name == "Open"
    finally:
        emu.stop()


def test_a_refused_sync_state_asks_for_a_restart(ews_account, ews_folder):
    with pytest.raises(SyncStateExpired, match="alice@example.com"):
        ExchangeFeed(ews_account, ews_folder).changes("not-a-sync-state")


def test_a_value_exchangelib_refuses_fails_alone_in_a_bulk_create(ews_side, emulator_proc):
    emulator_proc.reset_stats()
    results = ews_side.create_many([("account:V1", {"first_name": "One"}),
                                    (12345, {"first_name": "Not a string key"}),  # type: ignore[list-item]
                                    ("account:V3", {"first_name": "Three"})])
    assert [type(r).__name__ for r in results] == ["ExchangeRecord", "BadRecord", "ExchangeRecord"]
    assert emulator_proc.stats().get("CreateItem") == 2  # the bad one was never sent
    assert ews_side.find_by_crm_key("account:V3").record.first_name == "Three"


def test_contacts_survive_an_emulator_restart_and_the_adapter_reconnects(tmp_path):
    emu = start_emulator(tmp_path, {"carl@example.com": "pw-carl"})
    try:
        account = connect(endpoint=emu.endpoint, mailbox="carl@example.com", username="carl@example.com",
                          password="pw-carl", access="delegate", max_wait=MAX_WAIT)
        side = EwsExchange(account, open_folder(account, "CRM Accounts"))
        created = side.create("account:R", {"first_name": "Restarted"})
        old_pid = emu.pid
        emu.restart()
        assert emu.pid != old_pid and emu.running
        try:
            rec = side.read(created.item_id)
        except Transient:  # the pooled connection died with the old process: one retry, as Celery would
            rec = side.read(created.item_id)
        assert rec.record.first_name == "Restarted"
    finally:
        emu.stop()
    assert not emu.running


def test_a_rename_from_the_crm_moves_the_derived_display_name_along(ews_side, ews_account):
    created = ews_side.create("account:REN", {"first_name": "Ada", "last_name": "Byron"})
    ews_side.update(created.item_id, {"last_name": "Lovelace"}, created.change_key)
    (item,) = ews_account.fetch(ids=[(created.item_id, None)], only_fields=["display_name", "file_as"])
    assert (item.display_name, item.file_as) == ("Ada Lovelace", "Lovelace, Ada")


def test_processes_opening_a_missing_folder_at_once_all_get_the_one_folder(emulator_proc):
    """The producer and every worker open the sync folder when they start; when it is missing
    they race to create it, and the losers must use the winner's folder, not fail."""
    import threading

    path = f"Race {uuid.uuid4().hex[:6]}"
    accounts = [connect(endpoint=emulator_proc.endpoint, mailbox=ALICE, auth="basic", username=ALICE,
                        password=ALICE_PW, access="delegate", max_wait=MAX_WAIT, timeout_s=30)
                for _ in range(4)]
    for account in accounts:
        account.root  # noqa: B018 - load each one's folder tree before the race
    start = threading.Barrier(len(accounts))
    opened, failed = [], []

    def open_it(account):
        start.wait()
        try:
            opened.append(open_folder(account, path).id)
        except Exception as exc:  # noqa: BLE001 - collected for the assertion
            failed.append(exc)

    threads = [threading.Thread(target=open_it, args=(a,)) for a in accounts]
    for th in threads:
        th.start()
    for th in threads:
        th.join(30)
    assert failed == []
    assert len(set(opened)) == 1


# --------------------------------------------------------------------------- the shared port contract

class _EwsUser:
    """The mailbox owner in Outlook, over EWS (plain exchangelib)."""

    def __init__(self, folder) -> None:
        self.folder = folder

    def add(self, given_name, *, private=False, business_phones=(), home_city=None, business_city=None):
        labels = ("BusinessPhone", "BusinessPhone2")
        phones = [PhoneNumber(label=lab, phone_number=p) for lab, p in zip(labels, business_phones, strict=False)]
        addresses = [PhysicalAddress(label=lab, city=c) for lab, c in (("Home", home_city), ("Business", business_city))
                     if c]
        return outlook_contact(self.folder, given_name=given_name, sensitivity="Private" if private else "Normal",
                               phone_numbers=phones or None, physical_addresses=addresses or None).id

    def set_job_title(self, item_id, value):
        (item,) = self.folder.account.fetch(ids=[(item_id, None)], only_fields=["job_title"])
        item.job_title = value
        item.save(update_fields=["job_title"])

    def entries(self, item_id):
        (item,) = self.folder.account.fetch(ids=[(item_id, None)], only_fields=["phone_numbers", "physical_addresses"])
        phones = {p.label: p.phone_number for p in item.phone_numbers or []}
        addresses = {a.label: a.city for a in item.physical_addresses or []}
        return {"business_phones": [phones[k] for k in ("BusinessPhone", "BusinessPhone2") if k in phones],
                "home_city": addresses.get("Home"), "business_city": addresses.get("Business")}

    def folder_ids(self):
        return folder_ids(self.folder)


class _EwsFaults:
    def __init__(self, emu: EmulatorProcess) -> None:
        self.emu = emu

    def busy_on_create(self, seconds):
        self.emu.inject_fault("CreateItem", "server_busy", count=1, back_off_ms=int(seconds * 1000))

    def unavailable_on_read(self):
        self.emu.inject_fault("GetItem", "http_503", count=1)

    def clear(self):
        self.emu.clear_faults()


class TestEwsSide(ExchangeSideContract):
    """The port contract over EWS (exchangelib), against the emulator."""

    @pytest.fixture
    def side(self, ews_side):
        return ews_side

    @pytest.fixture
    def user(self, ews_folder):
        return _EwsUser(ews_folder)

    @pytest.fixture
    def feed(self, ews_account, ews_folder):
        return ExchangeFeed(ews_account, ews_folder)

    @pytest.fixture
    def faults(self, emulator_proc):
        f = _EwsFaults(emulator_proc)
        yield f
        f.clear()


def test_a_deleted_folder_reads_missing(ews_side, ews_folder) -> None:
    ews_side.create("account:GONE", {"first_name": "Gone"})
    copy.copy(ews_folder).delete()   # DeleteFolder (HardDelete) through another handle: exchangelib clears its id
    assert ews_side.folder_state() == "missing"


def test_a_hard_delete_leaves_nothing_in_deleted_items(ews_side, ews_folder) -> None:
    soft = ews_side.create("account:SOFT", {"first_name": "Soft"})
    hard = ews_side.create("account:HARD", {"first_name": "Hard"})
    ews_side.delete(soft.item_id, soft.change_key)
    ews_side.delete(hard.item_id, hard.change_key, hard=True)
    assert ews_side.read(hard.item_id) is None and ews_side.find_by_crm_key("account:HARD") is None
    assert ews_side.find_deleted_by_crm_key("account:HARD") is None
    assert ews_side.find_deleted_by_crm_key("account:SOFT") is not None


def test_search_ignores_accents_as_exchange_can(ews_side):
    """The folder search (issue 12) asks Exchange to ignore case and non-spacing characters:
    "zoe" finds "Zoë", "Zoë" finds "Zoe", "muller" finds "Müller"; a letter that is not a base
    letter plus a mark (ø) stays itself, as in Exchange."""
    from crmsync.core.matching import search_terms

    zoe = ews_side.create("account:ACC1", {"first_name": "Zoë", "last_name": "Brontë", "email": "z1@x.example"})
    zoe2 = ews_side.create("account:ACC2", {"first_name": "Zoe", "last_name": "Muller", "email": "z2@x.example"})
    mu = ews_side.create("account:ACC3", {"first_name": "Anna", "last_name": "Müller", "company_name": "Café Noël"})
    soren = ews_side.create("account:ACC4", {"first_name": "Søren", "last_name": "Kierkegaard"})

    def found(text: str) -> set[str]:
        return {r.item_id for r in ews_side.search(search_terms(text))}

    assert found("zoe") == found("Zoë") == found("ZOË") == {zoe.item_id, zoe2.item_id}
    assert found("bronte") == {zoe.item_id}
    assert found("muller") == found("Müller") == {zoe2.item_id, mu.item_id}
    assert found("cafe noel") == {mu.item_id}
    assert found("søren") == {soren.item_id} and found("soren") == set()
