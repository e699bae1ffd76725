"""The producers' loop with in-memory fakes of their ports (producers.ports).

Stories: a CRM change fans out per mailbox; an account update reaches its secondary contacts;
crashes between the steps duplicate nothing and lose nothing; a broker outage is healed by the
re-drive; a dead feed does not stop the others.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

import pytest
import structlog.testing

from crmsync.adapters.exchange.ews.feed import SyncStateExpired
from crmsync.ports import Event, NewEvent
from producers.crm_feed import CrmProducer, FirstSyncPosition
from producers.doorbells import CombinedDoorbell, NullDoorbell
from producers.exchange_feed import ExchangeProducer
from producers.loop import ProducerLoop
from producers.publisher import redact
from producers.redrive import BROKER_CURSOR, Redriver, redrive
from tests.support.pipeline import wait_until


def initial(producer, mailbox: str) -> list[int]:
    """All event ids of a mailbox's initial sync, its batches joined."""
    return [event_id for ids in producer.initial_batches(mailbox) for event_id in ids]

T0 = datetime(2026, 11, 27, 10, 0, tzinfo=UTC)


class Crash(Exception):
    """A simulated process death at a side-effect boundary."""


# ----------------------------------------------------------------------------- fakes

class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


class FakeStore:
    """The event log and cursors; add_events is all-or-nothing like one DB transaction."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.events: dict[int, Event] = {}
        self.synced: dict[str, str] = {}     # item_id -> ChangeKey of the links
        self.dedup: set[str] = set()
        self.cursors: dict[str, str] = {}
        self.add_calls: list[tuple[int, tuple[str, str] | None]] = []
        self.crash_on_add = 0          # crash on the next N add_events calls
        self.sent_at: dict[int, datetime] = {}   # published_at
        self.due_at: dict[int, datetime] = {}

    def synced_change_keys(self, mailbox, item_ids):
        return {i: self.synced[i] for i in item_ids if i in self.synced}

    def add_events(self, events, cursor=None):
        if self.crash_on_add:
            self.crash_on_add -= 1
            raise Crash("state database gone before commit")
        self.add_calls.append((len(events), cursor))
        ids = []
        for new in events:
            if new.dedup_key in self.dedup:
                continue
            self.dedup.add(new.dedup_key)
            event_id = len(self.events) + 1
            self.events[event_id] = Event(
                id=event_id, source=new.source, mailbox=new.mailbox, op=new.op,
                crm_key=new.crm_key, item_id=new.item_id, status="pending", attempts=0,
                last_error=None, created_at=self.clock())
            ids.append(event_id)
        if cursor is not None:
            self.cursors[cursor[0]] = cursor[1]
        return ids

    def mark_published(self, event_ids):
        for event_id in event_ids:
            if self.events[event_id].status in ("pending", "published"):
                self.events[event_id] = replace(self.events[event_id], status="published")
                self.sent_at[event_id] = self.due_at[event_id] = self.clock()

    def mark_retrying(self, event_ids, now, due_at=None):
        for event_id in event_ids:
            self.sent_at[event_id], self.due_at[event_id] = now, due_at or now

    def events_to_redrive(self, older_than, limit, *, lost_before=None, now=None):
        """Like the SQL store: overdue past the delivery's due time, or lost with the broker."""
        def late(e: Event) -> bool:
            due = self.due_at.get(e.id, e.created_at)
            lost = (lost_before is not None and self.sent_at.get(e.id, e.created_at) < lost_before
                    and due <= (now or self.clock()))
            return due < older_than or lost
        return [e for e in self.events.values() if e.status in ("pending", "published") and late(e)][:limit]

    def get_cursor(self, name):
        return self.cursors.get(name)

    def status(self, status: str) -> list[Event]:
        return [e for e in self.events.values() if e.status == status]


@dataclass(frozen=True)
class Row:
    id: int
    table_name: str
    row_key: str
    op: str

    @property
    def crm_key(self) -> str:
        return f"{'account' if self.table_name == 'accounts' else 'contact'}:{self.row_key}"


class FakeChangelog:
    """Like PostgreSQL's: a row gets its id when written but is seen only once committed, so a
    smaller id may appear after a larger one (``add(..., committed=False)``, then ``commit``)."""

    def __init__(self) -> None:
        self.rows: list[Row] = []
        self.processed: set[int] = set()
        self.uncommitted: set[int] = set()
        self.crash_on_mark = False

    def add(self, table: str, key: str, op: str, committed: bool = True) -> Row:
        row = Row(len(self.rows) + 1, table, key, op)
        self.rows.append(row)
        if not committed:
            self.uncommitted.add(row.id)
        return row

    def commit(self, row: Row) -> None:
        self.uncommitted.discard(row.id)

    def pending(self, limit):
        return [r for r in self.rows
                if r.id not in self.processed and r.id not in self.uncommitted][:limit]

    def pending_ids(self, limit):
        return [r.id for r in self.pending(limit)]

    def mark_processed(self, ids):
        if self.crash_on_mark:
            self.crash_on_mark = False
            raise Crash("producer killed before marking the changelog")
        self.processed.update(ids)


class FakeCrm:
    def __init__(self, accounts: dict[str, list[str]]) -> None:
        self.accounts = accounts          # account_no -> secondary contact ids

    def all_keys(self):
        return ([f"account:{no}" for no in self.accounts]
                + [f"contact:{cid}" for ids in self.accounts.values() for cid in ids])

    def contact_keys_of_account(self, account_no):
        return [f"contact:{cid}" for cid in self.accounts.get(account_no, [])]


@dataclass(frozen=True)
class Change:
    item_id: str
    change_key: str | None
    op: str


class FakeFeed:
    """SyncFolderItems over a list of changes; the sync state is the index of the next one."""

    def __init__(self) -> None:
        self.log: list[Change] = []
        self.calls: list[str | None] = []
        self.down = False

    def changes(self, sync_state, max_changes=500):
        self.calls.append(sync_state)
        if self.down:
            raise ConnectionError("EWS endpoint unreachable")
        start = int(sync_state or 0)
        batch = self.log[start:start + max_changes]
        end = start + len(batch)
        return batch, str(end), end < len(self.log)


class FakePublisher:
    def __init__(self) -> None:
        self.sent: list[int] = []
        self.down = False

    def publish(self, store, event_ids):
        if self.down:   # like CeleryPublisher: broker errors are swallowed, nothing marked
            return 0
        self.sent.extend(event_ids)
        store.mark_published(list(event_ids))
        return len(event_ids)


MAILBOXES = ["alice@example.com", "bob@example.com"]


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(clock) -> FakeStore:
    return FakeStore(clock)


@pytest.fixture
def changelog() -> FakeChangelog:
    return FakeChangelog()


@pytest.fixture
def crm() -> FakeCrm:
    return FakeCrm({"A-1": ["11", "12"], "A-2": []})


def make_loop(changelog, crm, store, clock, feeds=None, publisher=None, **kwargs):
    crm_producer = CrmProducer(changelog, crm, store, MAILBOXES, batch_size=kwargs.pop("batch_size", 500))
    exchange = [ExchangeProducer(mb, feed, store) for mb, feed in (feeds or {}).items()]
    return ProducerLoop(crm_producer, exchange, publisher or FakePublisher(), store,
                        NullDoorbell(), poll_interval_s=0.05, clock=clock,
                        **kwargs)


def mark_initial_done(store: FakeStore) -> None:
    for mailbox in MAILBOXES:
        store.cursors[f"crm-initial:{mailbox}"] = "done"


# ----------------------------------------------------------------------------- CRM feed

def test_a_crm_change_becomes_one_event_per_mailbox(changelog, crm, store):
    row = changelog.add("accounts", "A-2", "insert")
    ids = CrmProducer(changelog, crm, store, MAILBOXES).poll(100)

    assert len(ids) == 2
    assert {(e.mailbox, e.crm_key, e.op, e.source) for e in store.events.values()} == {
        ("alice@example.com", "account:A-2", "upsert", "crm"),
        ("bob@example.com", "account:A-2", "upsert", "crm"),
    }
    assert row.id in changelog.processed


def test_an_account_update_fans_out_to_its_secondary_contacts_in_every_mailbox(changelog, crm, store):
    changelog.add("accounts", "A-1", "update")
    CrmProducer(changelog, crm, store, MAILBOXES).poll(100)

    got = sorted((e.mailbox, e.crm_key, e.op) for e in store.events.values())
    assert got == sorted((mb, key, "upsert") for mb in MAILBOXES
                         for key in ("account:A-1", "contact:11", "contact:12"))
    assert "crm:1:alice@example.com:contact:11" in store.dedup


def test_fan_out_is_only_for_account_updates_and_can_be_switched_off(changelog, crm, store):
    changelog.add("accounts", "A-1", "insert")
    changelog.add("contacts", "11", "update")
    CrmProducer(changelog, crm, store, ["alice@example.com"]).poll(100)
    assert sorted(e.crm_key for e in store.events.values()) == ["account:A-1", "contact:11"]

    changelog.add("accounts", "A-1", "update")
    CrmProducer(changelog, crm, store, ["alice@example.com"], fan_out_contacts=False).poll(100)
    assert sorted(e.crm_key for e in store.events.values()) == [
        "account:A-1", "account:A-1", "contact:11"]


def test_a_crm_delete_becomes_a_delete_event(changelog, crm, store):
    changelog.add("accounts", "A-2", "delete")
    CrmProducer(changelog, crm, store, ["alice@example.com"]).poll(100)
    [event] = store.events.values()
    assert (event.op, event.crm_key) == ("delete", "account:A-2")


def test_a_crash_between_add_events_and_mark_processed_duplicates_nothing(changelog, crm, store):
    changelog.add("accounts", "A-1", "update")
    changelog.add("contacts", "12", "update")
    producer = CrmProducer(changelog, crm, store, MAILBOXES)
    changelog.crash_on_mark = True
    with pytest.raises(Crash):
        producer.poll(100)
    assert len(store.events) == 8 and not changelog.processed   # events durable, rows not marked

    again = producer.poll(100)                                  # the restarted producer re-reads

    assert again == []
    assert len(store.events) == 8
    assert changelog.processed == {1, 2}


def test_a_crash_before_add_events_commits_leaves_the_rows_pending(changelog, crm, store):
    changelog.add("accounts", "A-2", "update")
    producer = CrmProducer(changelog, crm, store, MAILBOXES)
    store.crash_on_add = 1
    with pytest.raises(Crash):
        producer.poll(100)
    assert not store.events and not changelog.processed

    assert len(producer.poll(100)) == 2
    assert changelog.processed == {1}


def test_poll_reports_more_when_it_read_a_full_batch(changelog, crm, store):
    for _ in range(3):
        changelog.add("accounts", "A-2", "update")
    producer = CrmProducer(changelog, crm, store, ["alice@example.com"])
    assert len(producer.poll(2)) == 2 and producer.more
    assert len(producer.poll(2)) == 1 and not producer.more


# ----------------------------------------------------------------------------- initial sync

def test_initial_sync_creates_one_upsert_per_crm_record_once_per_mailbox_in_batches(crm, store):
    producer = CrmProducer(FakeChangelog(), crm, store, MAILBOXES, batch_size=2)

    ids = initial(producer, "alice@example.com")

    assert sorted(store.events[i].crm_key for i in ids) == [
        "account:A-1", "account:A-2", "contact:11", "contact:12"]
    assert {store.events[i].op for i in ids} == {"upsert"}
    # the first sync's changelog position first; two batches of two, "done" only with the last
    assert store.add_calls == [(0, ("crm-first-sync", '{"visible":[],"absorbed":false}')),
                               (2, None), (2, ("crm-initial:alice@example.com", "done"))]
    assert initial(producer, "alice@example.com") == []
    assert len(initial(producer, "bob@example.com")) == 4


def test_initial_sync_of_an_empty_crm_is_marked_done(store):
    producer = CrmProducer(FakeChangelog(), FakeCrm({}), store, ["alice@example.com"])
    assert initial(producer, "alice@example.com") == []
    assert producer.initial_done("alice@example.com")


def test_an_initial_sync_interrupted_mid_way_resumes_without_duplicates(crm, store):
    producer = CrmProducer(FakeChangelog(), crm, store, ["alice@example.com"], batch_size=3)
    batches = producer.initial_batches("alice@example.com")
    first = next(batches)
    store.crash_on_add = 1
    with pytest.raises(Crash):
        next(batches)
    assert not producer.initial_done("alice@example.com")

    rest = initial(producer, "alice@example.com")

    assert len(first) == 3 and len(rest) == 1
    assert len(store.events) == 4 and producer.initial_done("alice@example.com")


# ----------------------------------------------------------------------------- Exchange feed

def test_exchange_changes_become_events_with_their_sync_state(store):
    feed = FakeFeed()
    feed.log += [Change("I1", "ck1", "upsert"), Change("I2", "ck1", "upsert"),
                 Change("I1", None, "delete")]
    producer = ExchangeProducer("alice@example.com", feed, store)

    ids = producer.poll(2)                          # two rounds: "more" after the first

    assert [(store.events[i].item_id, store.events[i].op) for i in ids] == [
        ("I1", "upsert"), ("I2", "upsert"), ("I1", "delete")]
    assert {store.events[i].source for i in ids} == {"exchange"}
    assert feed.calls == [None, "2"]
    assert store.cursors["exchange-sync:alice@example.com"] == "3"
    assert "ex:alice@example.com:I1:delete" in store.dedup


def test_the_exchange_sync_state_is_stored_only_with_its_events(store):
    feed = FakeFeed()
    feed.log += [Change("I1", "ck1", "upsert")]
    producer = ExchangeProducer("alice@example.com", feed, store)
    store.crash_on_add = 1
    with pytest.raises(Crash):
        producer.poll()
    assert store.get_cursor("exchange-sync:alice@example.com") is None   # state unchanged

    ids = producer.poll()                           # restarted: same changes from the old state

    assert feed.calls == [None, None]
    assert [store.events[i].item_id for i in ids] == ["I1"]
    assert store.get_cursor("exchange-sync:alice@example.com") == "1"


def test_the_same_exchange_change_seen_twice_is_one_event(store):
    feed = FakeFeed()
    feed.log += [Change("I1", "ck1", "upsert"), Change("I1", "ck1", "upsert"),
                 Change("I1", "ck2", "upsert")]
    ids = ExchangeProducer("alice@example.com", feed, store).poll()
    assert len(ids) == 2


def test_an_expired_sync_state_restarts_from_a_full_listing_without_duplicate_events(store):
    class ExpiringFeed(FakeFeed):
        expire = False

        def changes(self, sync_state, max_changes=500):
            if self.expire and sync_state is not None:
                self.calls.append(sync_state)
                raise SyncStateExpired("mailbox alice@example.com: the stored sync state was refused")
            return super().changes(sync_state, max_changes)

    feed = ExpiringFeed()
    feed.log += [Change("I1", "ck1", "upsert"), Change("I2", "ck1", "upsert")]
    producer = ExchangeProducer("alice@example.com", feed, store)
    assert len(producer.poll()) == 2
    feed.log.append(Change("I2", "ck2", "upsert"))     # a real change while the state expired
    feed.expire = True

    ids = producer.poll()

    assert feed.calls == [None, "2", None]
    assert [(store.events[i].item_id) for i in ids] == ["I2"]     # only the new ChangeKey
    assert store.get_cursor("exchange-sync:alice@example.com") == "3"


# ----------------------------------------------------------------------------- the loop

def test_run_once_runs_initial_then_the_feeds_and_publishes_everything(changelog, crm, store, clock):
    feed = FakeFeed()
    feed.log.append(Change("I9", "ck", "upsert"))
    publisher = FakePublisher()
    loop = make_loop(changelog, crm, store, clock, {"alice@example.com": feed}, publisher)
    changelog.add("accounts", "A-2", "update")

    created = loop.run_once()

    # 4 records x 2 mailboxes + the Exchange change; the changelog row pending before the very
    # first sync is covered by it (the initial sync reads the current state) and absorbed
    assert created == 2 * 4 + 1
    assert changelog.pending(100) == []
    assert sorted(publisher.sent) == sorted(store.events)
    assert not store.status("pending")
    assert loop.run_once() == 0                     # initial sync is not repeated


def test_a_broker_outage_leaves_events_pending_and_the_next_cycle_sends_them(changelog, crm, store, clock):
    mark_initial_done(store)
    publisher = FakePublisher()
    loop = make_loop(changelog, crm, store, clock, publisher=publisher)
    publisher.down = True
    changelog.add("accounts", "A-2", "update")

    assert loop.run_once() == 2
    assert len(store.status("pending")) == 2 and publisher.sent == []
    loop.run_once()                                 # still down: still pending, nothing lost
    assert len(store.status("pending")) == 2

    publisher.down = False
    loop.run_once()                                 # back: sent within one poll interval
    assert sorted(publisher.sent) == [1, 2]
    assert not store.status("pending")


def test_events_left_unpublished_by_a_crashed_producer_are_sent_by_the_redrive(changelog, crm, store, clock):
    mark_initial_done(store)
    publisher = FakePublisher()
    publisher.down = True
    make_loop(changelog, crm, store, clock, publisher=publisher).run_once()
    changelog.add("accounts", "A-2", "update")
    make_loop(changelog, crm, store, clock, publisher=publisher).run_once()
    assert len(store.status("pending")) == 2        # and that producer process dies now

    publisher.down = False
    loop = make_loop(changelog, crm, store, clock, publisher=publisher)   # the restarted one
    redriver = Redriver(store, publisher, redrive_after_s=300)           # crmsync beat's
    loop.run_once()
    redriver.run_once(clock.now)
    assert publisher.sent == []                     # too young to be re-driven
    clock.now += timedelta(seconds=100)
    loop.run_once()
    redriver.run_once(clock.now)
    assert publisher.sent == []
    clock.now += timedelta(seconds=250)             # now older than redrive_after_s
    loop.run_once()
    assert publisher.sent == []                     # the producer re-drives nothing itself
    assert redriver.run_once(clock.now).sent == 2
    assert sorted(publisher.sent) == [1, 2]
    assert not store.status("pending")


def test_redrive_republishes_only_events_not_applied_in_time(store, clock):
    store.add_events([NewEvent("crm", "alice@example.com", "upsert", f"k{i}", crm_key=f"account:{i}")
                      for i in range(3)])
    store.events[3] = replace(store.events[3], status="applied")
    publisher = FakePublisher()

    assert redrive(store, publisher, 60, clock.now + timedelta(seconds=30)) == 0
    assert redrive(store, publisher, 60, clock.now + timedelta(seconds=61)) == 2
    assert publisher.sent == [1, 2]


def test_redrive_logs_its_batches_as_maintenance_not_as_the_producer(store, clock):
    """beat's maintenance worker runs the re-drive; its lines must not say it is the producer's."""
    store.add_events([NewEvent("crm", "alice@example.com", "upsert", f"k{i}", crm_key=f"account:{i}")
                      for i in range(2)])
    with structlog.testing.capture_logs() as logs:
        assert redrive(store, FakePublisher(), 60, clock.now + timedelta(seconds=61)) == 2
    [batch] = [entry for entry in logs if "redrive" in entry["event"]]
    assert batch["event"] == "maintenance.redrive_batch"
    assert (batch["found"], batch["sent"], batch["broker_restarted"]) == (2, 2, False)


def test_redrive_drains_a_backlog_larger_than_its_limit_in_one_call(store, clock):
    class RepublishingStore(FakeStore):
        """Like the SQL store: a re-published event gets a new published_at."""

        def __init__(self, clock):
            super().__init__(clock)
            self.published_at: dict[int, datetime] = {}

        def mark_published(self, event_ids):
            super().mark_published(event_ids)
            self.published_at.update(dict.fromkeys(event_ids, self.clock()))

        def events_to_redrive(self, older_than, limit, **_):
            late = [e for e in self.events.values() if e.status in ("pending", "published")
                    and self.published_at.get(e.id, e.created_at) < older_than]
            return late[:limit]

    store = RepublishingStore(clock)
    store.add_events([NewEvent("crm", "alice@example.com", "upsert", f"k{i}", crm_key=f"account:{i}")
                      for i in range(25)])
    publisher = FakePublisher()
    clock.now += timedelta(seconds=120)

    assert redrive(store, publisher, 60, clock.now, limit=10) == 25
    assert sorted(publisher.sent) == list(range(1, 26))


def test_a_dead_exchange_server_does_not_stop_the_crm_feed(changelog, crm, store, clock):
    mark_initial_done(store)
    dead, alive = FakeFeed(), FakeFeed()
    dead.down = True
    alive.log.append(Change("I1", "ck", "upsert"))
    publisher = FakePublisher()
    loop = make_loop(changelog, crm, store, clock,
                     {"alice@example.com": dead, "bob@example.com": alive}, publisher)
    changelog.add("accounts", "A-2", "update")

    assert loop.run_once() == 3
    assert {(e.source, e.mailbox) for e in store.events.values()} == {
        ("crm", "alice@example.com"), ("crm", "bob@example.com"), ("exchange", "bob@example.com")}
    assert len(publisher.sent) == 3


def test_a_failing_crm_feed_does_not_stop_the_exchange_feed(crm, store, clock):
    class BrokenChangelog(FakeChangelog):
        def pending(self, limit):
            raise OSError("CRM database is locked")

    mark_initial_done(store)
    feed = FakeFeed()
    feed.log.append(Change("I1", "ck", "upsert"))
    loop = make_loop(BrokenChangelog(), crm, store, clock, {"alice@example.com": feed})
    assert loop.run_once() == 1


def test_the_loop_drains_a_changelog_backlog_in_one_cycle(changelog, crm, store, clock):
    mark_initial_done(store)
    for _ in range(7):
        changelog.add("accounts", "A-2", "update")
    loop = make_loop(changelog, crm, store, clock, batch_size=3)
    assert loop.run_once() == 14
    assert not changelog.pending(10)


def test_run_wakes_early_on_the_doorbell_and_stops_on_request(changelog, crm, store, clock):
    mark_initial_done(store)
    loop = make_loop(changelog, crm, store, clock)
    loop.poll_interval_s = 60                       # only the doorbell can wake it in time
    thread = threading.Thread(target=loop.run, daemon=True)
    thread.start()
    time.sleep(0.2)
    changelog.add("accounts", "A-2", "update")
    loop.doorbell.ring()

    deadline = time.monotonic() + 5
    while len(store.events) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert len(store.events) == 2

    loop.stop.set()
    thread.join(timeout=5)
    assert not thread.is_alive()


def test_a_loop_stopped_during_the_initial_sync_resumes_it_at_the_next_start(changelog, crm, store, clock):
    loop = make_loop(changelog, crm, store, clock, batch_size=1)
    publisher = loop.publisher

    def stop_after_first(store_, ids):
        loop.stop.set()
        return FakePublisher.publish(publisher, store_, ids)

    publisher.publish = stop_after_first
    assert loop.run_once() == 1                     # one batch, then it noticed the stop
    assert not loop.crm_producer.initial_done("alice@example.com")

    restarted = make_loop(changelog, crm, store, clock, batch_size=1)
    restarted.run_once()
    assert all(restarted.crm_producer.initial_done(mb) for mb in MAILBOXES)
    assert len([e for e in store.events.values() if e.mailbox == "alice@example.com"]) == 4


# ----------------------------------------------------------------------------- first sync and restarts

def stop_after_batches(loop, n: int) -> None:
    """The loop's publisher asks it to stop after ``n`` initial-sync batches (a producer that
    dies mid-first-sync: what it committed stays, the rest is for the next start)."""
    publisher = loop.publisher
    sent = []

    def publish(store_, ids):
        sent.append(ids)
        if len(sent) >= n:
            loop.stop.set()
        return FakePublisher.publish(publisher, store_, ids)

    publisher.publish = publish


def crm_dedup_keys(store, row) -> set[str]:
    return {key for key in store.dedup if key.startswith(f"crm:{row.id}:")}


def test_edits_made_during_a_first_sync_survive_two_restarts_of_the_producer(changelog, crm, store, clock):
    seeded = [changelog.add("accounts", "A-1", "insert"), changelog.add("accounts", "A-2", "insert")]
    loop = make_loop(changelog, crm, store, clock, batch_size=1)
    stop_after_batches(loop, 1)
    loop.run_once()                                  # first sync read; account:A-1 written (alice)
    assert not loop.crm_producer.initial_done("alice@example.com")
    edit_1 = changelog.add("accounts", "A-1", "update")   # after the read: a worker may already
                                                          # have applied A-1's first-sync event

    loop = make_loop(changelog, crm, store, clock, batch_size=1)       # restarted, dies again
    stop_after_batches(loop, 1)
    loop.run_once()
    assert not loop.crm_producer.initial_done("alice@example.com")
    edit_2 = changelog.add("contacts", "11", "update")

    loop = make_loop(changelog, crm, store, clock, batch_size=1)       # restarted, finishes
    loop.run_once()

    assert all(loop.crm_producer.initial_done(mb) for mb in MAILBOXES)
    assert changelog.pending(100) == []
    for row in seeded:                               # read by the first sync: absorbed
        assert crm_dedup_keys(store, row) == set()
    assert crm_dedup_keys(store, edit_1) == {f"crm:{edit_1.id}:{mb}:{key}" for mb in MAILBOXES
                                             for key in ("account:A-1", "contact:11", "contact:12")}
    assert crm_dedup_keys(store, edit_2) == {f"crm:{edit_2.id}:{mb}:contact:11" for mb in MAILBOXES}
    assert loop.run_once() == 0


def test_a_row_committed_after_the_first_sync_read_with_a_smaller_id_becomes_an_event(
        changelog, crm, store, clock):
    in_flight = changelog.add("accounts", "A-2", "update", committed=False)   # id 1, not visible
    visible = changelog.add("accounts", "A-1", "update")                     # id 2, visible
    loop = make_loop(changelog, crm, store, clock, batch_size=1)
    stop_after_batches(loop, 1)
    loop.run_once()                                  # the first sync's position: row 2 only
    changelog.commit(in_flight)                      # commits now, after the first read

    loop = make_loop(changelog, crm, store, clock, batch_size=1)
    loop.run_once()

    assert changelog.pending(100) == []
    assert crm_dedup_keys(store, visible) == set()
    assert crm_dedup_keys(store, in_flight) == {f"crm:{in_flight.id}:{mb}:account:A-2"
                                                for mb in MAILBOXES}


def test_a_first_sync_resumed_after_a_crash_keeps_its_first_position(changelog, crm, store, clock):
    changelog.add("accounts", "A-1", "insert")
    loop = make_loop(changelog, crm, store, clock, batch_size=1)
    stop_after_batches(loop, 1)
    loop.run_once()
    position = store.cursors["crm-first-sync"]
    later = changelog.add("accounts", "A-2", "update")

    restarted = make_loop(changelog, crm, store, clock, batch_size=1)
    stop_after_batches(restarted, 1)
    restarted.run_once()

    assert store.cursors["crm-first-sync"] == position
    assert not restarted.crm_producer.first_sync_position().covers(later.id)
    assert restarted.crm_producer.covered_by_first_sync() == [1]


def test_a_mailbox_added_after_the_first_sync_absorbs_no_changelog_row(changelog, crm, store, clock):
    store.cursors["crm-initial:alice@example.com"] = "done"      # synced before; bob is new
    row = changelog.add("accounts", "A-2", "update")
    make_loop(changelog, crm, store, clock).run_once()
    assert crm_dedup_keys(store, row) == {f"crm:{row.id}:{mb}:account:A-2" for mb in MAILBOXES}
    assert "crm-first-sync" not in store.cursors


def test_absorbing_is_recorded_and_a_crash_before_the_record_repeats_it_harmlessly(
        changelog, crm, store, clock):
    seeded = changelog.add("accounts", "A-1", "insert")
    loop = make_loop(changelog, crm, store, clock)
    changelog_mark = changelog.mark_processed

    def crash_after_marking(ids):
        changelog_mark(ids)
        raise Crash("producer killed before recording the absorption")

    changelog.mark_processed = crash_after_marking
    loop.run_once()                                  # the step failed after marking the rows
    changelog.mark_processed = changelog_mark
    assert seeded.id in changelog.processed
    assert '"absorbed":false' in store.cursors["crm-first-sync"]

    make_loop(changelog, crm, store, clock).run_once()

    assert '"absorbed":true' in store.cursors["crm-first-sync"]
    assert crm_dedup_keys(store, seeded) == set()


@pytest.mark.parametrize(("ids", "inside", "outside"), [
    ([], [], [0, 1]),
    ([1, 2, 3], [1, 2, 3], [0, 4]),
    ([2, 3, 5, 9, 10], [2, 3, 5, 9, 10], [1, 4, 6, 8, 11]),     # gaps: rows not yet committed
])
def test_a_first_sync_position_covers_exactly_the_rows_it_saw(ids, inside, outside):
    position = FirstSyncPosition.of_ids(ids)
    again = FirstSyncPosition.from_json(position.to_json())
    assert again == position
    assert all(again.covers(i) for i in inside)
    assert not any(again.covers(i) for i in outside)


def test_any_doorbell_of_a_combined_doorbell_wakes_the_loop():
    crm_bell, exchange_bell = NullDoorbell(), NullDoorbell()
    combined = CombinedDoorbell(crm_bell, exchange_bell)
    assert combined.wait(0.01) is False
    exchange_bell.ring()
    assert combined.wait(0.01) is True
    assert combined.wait(0.01) is False             # a ring is consumed by one wait


def test_broker_urls_in_error_texts_are_redacted():
    url = "redis://:s3cret@redis.internal:6379/0"
    text = redact(f"Cannot connect to {url}: auth s3cret refused", url)
    assert "s3cret" not in text and "redis.internal" in text


def test_a_mailbox_without_secondary_contacts_gets_no_contact_events(changelog, crm, store):
    producer = CrmProducer(changelog, crm, store, ["alice@example.com", "bob@example.com"],
                           without_contacts=["bob@example.com"])
    bob_initial = initial(producer, "bob@example.com")
    assert bob_initial and all(not store.events[i].crm_key.startswith("contact:") for i in bob_initial)
    changelog.add("accounts", "A-1", "update")
    ids = producer.poll()
    bob = [store.events[i].crm_key for i in ids if store.events[i].mailbox == "bob@example.com"]
    alice = [store.events[i].crm_key for i in ids if store.events[i].mailbox == "alice@example.com"]
    assert bob == ["account:A-1"]
    assert any(k.startswith("contact:") for k in alice)


def test_an_exchange_version_the_link_was_synced_at_is_not_an_event(store):
    feed = FakeFeed()
    feed.log += [Change("I1", "ck-ours", "upsert"), Change("I2", "ck-user", "upsert"),
                 Change("I1", "ck-ours", "delete")]
    store.synced["I1"] = "ck-ours"        # the worker wrote I1 at this ChangeKey
    store.synced["I2"] = "ck-older"
    producer = ExchangeProducer("alice@example.com", feed, store)
    ids = producer.poll()
    assert [(store.events[i].item_id, store.events[i].op) for i in ids] == [("I2", "upsert"), ("I1", "delete")]


# ----------------------------------------------------------------------------- broker restarts

class RestartingBroker(FakePublisher):
    """A publisher whose Redis can restart (a new run_id) and lose what it held."""

    def __init__(self) -> None:
        super().__init__()
        self.run_id = "run-1"

    def broker_identity(self):
        return None if self.down else self.run_id


def test_a_restarted_broker_is_noticed_and_what_it_held_is_sent_again_at_once(changelog, crm, store, clock):
    mark_initial_done(store)
    broker = RestartingBroker()
    loop = make_loop(changelog, crm, store, clock, publisher=broker, redrive_check_s=5)
    redriver = Redriver(store, broker, redrive_after_s=300)
    redriver.run_once(clock.now)
    changelog.add("accounts", "A-2", "update")
    loop.run_once()
    assert sorted(broker.sent) == [1, 2] and store.cursors[BROKER_CURSOR] == "run-1"

    broker.sent.clear()
    broker.run_id = "run-2"                         # restarted without persistence: both lost
    clock.now += timedelta(seconds=6)               # the next round, long before redrive_after_s
    loop.run_once()
    assert broker.sent == []                        # the producer does not re-drive
    report = redriver.run_once(clock.now)
    assert report.broker_restarted and report.sent == 2
    assert sorted(broker.sent) == [1, 2]
    assert store.cursors[BROKER_CURSOR] == "run-2"

    broker.sent.clear()
    clock.now += timedelta(seconds=6)
    assert redriver.run_once(clock.now).sent == 0
    assert broker.sent == []                        # sent to the new server: not again


def test_a_retry_in_back_off_is_not_sent_again_before_its_eta_even_after_a_restart(
        changelog, crm, store, clock):
    mark_initial_done(store)
    broker = RestartingBroker()
    loop = make_loop(changelog, crm, store, clock, publisher=broker, redrive_check_s=5)
    redriver = Redriver(store, broker, redrive_after_s=300)
    redriver.run_once(clock.now)
    changelog.add("accounts", "A-2", "update")
    loop.run_once()
    store.mark_retrying([1], clock.now, due_at=clock.now + timedelta(seconds=60))
    broker.sent.clear()
    broker.run_id = "run-2"
    clock.now += timedelta(seconds=6)
    redriver.run_once(clock.now)
    assert broker.sent == [2]                       # event 1 waits for its retry's ETA
    clock.now += timedelta(seconds=60)
    redriver.run_once(clock.now)
    assert broker.sent == [2, 1]


def test_a_restart_is_noticed_by_a_fresh_redriver_and_remembered_between_rounds(changelog, crm, store, clock):
    """Rounds keep nothing in memory (each beat task may run in another worker process): the
    broker identity and the restart time are cursors in the state database."""
    mark_initial_done(store)
    broker = RestartingBroker()
    Redriver(store, broker, 300).run_once(clock.now)
    make_loop(changelog, crm, store, clock, publisher=broker).run_once()
    changelog.add("accounts", "A-2", "update")
    make_loop(changelog, crm, store, clock, publisher=broker).run_once()
    store.mark_retrying([1], clock.now, due_at=clock.now + timedelta(seconds=30))
    broker.sent.clear()
    broker.run_id = "run-2"                         # Redis and everything else restarted
    clock.now += timedelta(seconds=1)
    assert Redriver(store, broker, 300).run_once(clock.now).broker_restarted
    assert broker.sent == [2]
    clock.now += timedelta(seconds=30)              # event 1's ETA: lost with the old server too
    report = Redriver(store, broker, 300).run_once(clock.now)
    assert not report.broker_restarted and report.sent == 1
    assert broker.sent == [2, 1]


def test_the_producer_loop_never_re_drives(changelog, crm, store, clock):
    """Exactly one component re-drives: crmsync beat. An overdue event and a restarted broker
    leave the producer loop, busy or idle, unmoved."""
    mark_initial_done(store)
    broker = RestartingBroker()
    loop = make_loop(changelog, crm, store, clock, publisher=broker, redrive_check_s=5)
    loop.poll_interval_s = 0.3
    changelog.add("accounts", "A-2", "update")
    loop.run_once()
    broker.sent.clear()
    broker.run_id = "run-2"
    clock.now += timedelta(hours=1)
    loop.run_once()
    loop._sleep()
    assert broker.sent == []
    assert BROKER_CURSOR not in store.cursors

def test_without_an_armed_doorbell_the_loop_polls_at_the_fallback_interval(changelog, crm, store, clock):
    mark_initial_done(store)
    loop = make_loop(changelog, crm, store, clock, fallback_poll_s=0.1)
    loop.poll_interval_s = 60                       # the safety net, behind doorbells only
    thread = threading.Thread(target=loop.run, daemon=True)
    thread.start()
    try:
        changelog.add("accounts", "A-2", "update")  # nobody rings: NullDoorbell is never armed
        wait_until(lambda: len(store.events) >= 2, 5, interval=0.02, what="the fallback poll's event")
        assert len(store.events) == 2
    finally:
        loop.stop.set()
        thread.join(5)


def test_a_doorbell_naming_its_mailbox_reads_only_that_mailbox(changelog, crm, store, clock):
    """Work proportional to change: a ring from one mailbox's subscription (or from the CRM)
    does not read the other mailboxes; the safety-net poll reads them all."""
    from producers.doorbells import CRM_SOURCE, CombinedDoorbell, _Bell, exchange_source

    mark_initial_done(store)
    alice, bob = FakeFeed(), FakeFeed()
    loop = make_loop(changelog, crm, store, clock, {"alice@example.com": alice, "bob@example.com": bob})
    crm_bell, alice_bell, bob_bell = _Bell(), _Bell(), _Bell()
    crm_bell.source, alice_bell.source = CRM_SOURCE, exchange_source("alice@example.com")
    bob_bell.source = exchange_source("bob@example.com")
    loop.doorbell = CombinedDoorbell(crm_bell, alice_bell, bob_bell)

    alice_bell.ring()
    assert loop.doorbell.wait(0)
    loop.run_once(loop.doorbell.take_sources())
    assert (len(alice.calls), len(bob.calls)) == (1, 0)

    crm_bell.ring()
    assert loop.doorbell.wait(0)
    loop.run_once(loop.doorbell.take_sources())
    assert (len(alice.calls), len(bob.calls)) == (1, 0)

    loop.doorbell.ring()                            # a ring naming nothing: read everything
    assert loop.doorbell.wait(0)
    assert loop.doorbell.take_sources() is None
    loop.run_once(None)
    assert (len(alice.calls), len(bob.calls)) == (2, 1)


def test_a_ring_during_a_cycle_is_read_in_the_next_one(changelog, crm, store, clock):
    from producers.doorbells import CombinedDoorbell, _Bell, exchange_source

    mark_initial_done(store)
    alice = FakeFeed()
    loop = make_loop(changelog, crm, store, clock, {"alice@example.com": alice})
    bell = _Bell()
    bell.source = exchange_source("alice@example.com")
    loop.doorbell = CombinedDoorbell(bell)
    bell.ring()
    assert loop.doorbell.wait(0)
    sources = loop.doorbell.take_sources()
    bell.ring()                                     # while the cycle below runs
    loop.run_once(sources)
    assert loop.doorbell.wait(0)
    assert loop.doorbell.take_sources() == {exchange_source("alice@example.com")}
