"""Producers on real parts: a SQLite / PostgreSQL CRM with its triggers, the state database,
redis-server and a real Celery client. No fakes: a plain SQL write in the CRM must end up as a
published event row and a message on the Redis list of the events queue.

Redis is private: a fresh database of the session's redis-server, or a server of the test's own
where the test stops it (tests/conftest.py). Nothing here touches the machine's Redis.
"""

from __future__ import annotations

import base64
import json
import sqlite3
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
import redis
from structlog.testing import capture_logs

from crmsync.adapters.crm.changelog import Changelog
from crmsync.adapters.crm.sqlalchemy_crm import SqlCrm
from crmsync.adapters.database import init_crm, init_state, make_engine
from crmsync.adapters.state.sqlalchemy_store import SqlStateStore
from crmsync.celery_settings import celery_settings
from crmsync.ports import NewEvent
from producers.crm_feed import CrmProducer
from producers.doorbells import PostgresListenDoorbell, SqliteFileDoorbell
from producers.factory import crm_doorbell
from producers.loop import ProducerLoop
from producers.publisher import CeleryPublisher
from producers.redrive import redrive
from schemas.events import APPLY_EVENTS_TASK
from tests.support.emulator_proc import free_port

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/test"
MAILBOX = "alice@example.com"


# ----------------------------------------------------------------------------- fixtures

@pytest.fixture
def redis_url(redis_server) -> str:
    """A fresh database of the session's private redis-server: empty, and this test's alone."""
    return redis_server.url(redis_server.new_database())


@pytest.fixture
def redis_db(redis_url):
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture
def queue() -> str:
    """A queue of this test's own, so tests running beside it cannot add to its list: the
    ``to_exchange`` queue of a prefix of its own (the events here are CRM changes)."""
    return f"crmsync.test-{uuid.uuid4().hex[:8]}.to_exchange"


def prefix(queue: str) -> str:
    return queue.rsplit(".", 1)[0]


@pytest.fixture
def publisher(queue, redis_url):
    pub = CeleryPublisher(redis_url, prefix(queue), celery_settings(redis_url, prefix(queue)))  # the workers' settings
    yield pub
    pub.close()


def seed(execute) -> None:
    """Two accounts, one with a secondary contact, written with plain SQL like any CRM client."""
    execute("INSERT INTO accounts (account_no, company_name, first_name, last_name, email, is_active) "
            "VALUES ('A-1', 'Acme Ltd', 'Ada', 'Lovelace', 'ada@acme.example', true)")
    execute("INSERT INTO accounts (account_no, company_name, first_name, last_name, is_active) "
            "VALUES ('A-2', 'Globex', 'Hank', 'Scorpio', true)")
    execute("INSERT INTO contacts (account_id, first_name, last_name, email) "
            "SELECT id, 'Charles', 'Babbage', 'cb@acme.example' FROM accounts WHERE account_no = 'A-1'")


@pytest.fixture
def sqlite_dbs(tmp_path: Path):
    crm_path = tmp_path / "crm.db"
    crm_engine = make_engine(f"sqlite:///{crm_path}")
    state_engine = make_engine(f"sqlite:///{tmp_path / 'state.db'}")
    init_crm(crm_engine)
    init_state(state_engine)
    yield crm_path, crm_engine, state_engine
    crm_engine.dispose()
    state_engine.dispose()


def sqlite_exec(path: Path, *statements: str) -> None:
    """Plain sqlite3, another connection: what any program writing to the CRM does."""
    conn = sqlite3.connect(path, timeout=30)
    try:
        with conn:
            for sql in statements:
                conn.execute(sql)
    finally:
        conn.close()


def make_producer_loop(crm_engine, state_engine, publisher, mailboxes=(MAILBOX,)):
    store = SqlStateStore(state_engine)
    crm_producer = CrmProducer(Changelog(crm_engine), SqlCrm(crm_engine), store, list(mailboxes),
                               batch_size=2)
    return ProducerLoop(crm_producer, [], publisher, store, None, poll_interval_s=0.2), store


def queued_event_ids(client: redis.Redis, queue: str) -> list[int]:
    """The event ids of the Celery messages on the queue's Redis list (protocol 2, json)."""
    ids = []
    for raw in client.lrange(queue, 0, -1):
        message = json.loads(raw)
        assert message["headers"]["task"] == APPLY_EVENTS_TASK
        args, kwargs, _embed = json.loads(base64.b64decode(message["body"]))
        assert args == []
        ids.extend(kwargs["event_ids"])
    return sorted(ids)


# ----------------------------------------------------------------------------- stories

def check_sql_update_is_published(loop, store, redis_db, queue, write_sql) -> None:
    created = loop.run_once()
    # the initial sync (3 records, one mailbox); the seed's three changelog rows came before
    # the first sync, which already reads their result, so they are absorbed, not re-sent
    assert created == 3
    assert len(queued_event_ids(redis_db, queue)) == 3

    write_sql("UPDATE accounts SET phone_business = '+1 555 0100' WHERE account_no = 'A-1'")
    assert loop.run_once() == 2                               # the account + its contact
    events = [store.get_event(i) for i in range(4, 6)]

    assert [(e.source, e.mailbox, e.op, e.crm_key) for e in events] == [
        ("crm", MAILBOX, "upsert", "account:A-1"),
        ("crm", MAILBOX, "upsert", events[1].crm_key)]
    assert events[1].crm_key.startswith("contact:")          # fan-out to the secondary contact
    assert {e.status for e in events} == {"published"}
    assert len(queued_event_ids(redis_db, queue)) == 5
    assert queued_event_ids(redis_db, queue) == list(range(1, 6))
    assert loop.run_once() == 0                               # nothing new, nothing re-sent
    assert len(queued_event_ids(redis_db, queue)) == 5
    # what Flower shows of each message: mailbox, event ids, CRM keys (nothing of the contacts)
    shown = [json.loads(raw)["headers"]["kwargsrepr"] for raw in redis_db.lrange(queue, 0, -1)]
    assert f"mailbox={MAILBOX} events=[4, 5] records=[account:A-1, {events[1].crm_key}]" in shown
    assert all(text.startswith(f"mailbox={MAILBOX} events=[") for text in shown)
    assert not any(secret in text for text in shown for secret in ("Lovelace", "ada@acme", "Babbage"))


def test_a_plain_sql_update_in_a_sqlite_crm_becomes_a_published_celery_message(
        sqlite_dbs, redis_db, queue, publisher):
    crm_path, crm_engine, state_engine = sqlite_dbs
    seed(lambda sql: sqlite_exec(crm_path, sql))
    loop, store = make_producer_loop(crm_engine, state_engine, publisher)

    check_sql_update_is_published(loop, store, redis_db, queue,
                                  lambda sql: sqlite_exec(crm_path, sql))


def test_the_sqlite_doorbell_rings_within_a_second_of_a_write_from_another_connection(sqlite_dbs):
    crm_path, crm_engine, _ = sqlite_dbs
    seed(lambda sql: sqlite_exec(crm_path, sql))
    reader = sqlite3.connect(crm_path)          # a long-lived reader, like the producer's pool
    reader.execute("SELECT count(*) FROM accounts").fetchone()
    bell = crm_doorbell(f"sqlite:///{crm_path}")
    assert isinstance(bell, SqliteFileDoorbell)
    bell.start()
    try:
        time.sleep(0.2)
        bell.wait(0.3)                          # consume anything left from the set-up
        (crm_path.parent / "unrelated.txt").write_text("not the database")
        reader.execute("SELECT * FROM accounts").fetchall()
        assert bell.wait(0.5) is False          # reads and other files do not ring

        started = time.monotonic()
        sqlite_exec(crm_path, "UPDATE accounts SET city = 'Leeds' WHERE account_no = 'A-2'")
        assert bell.wait(1.0) is True
        assert time.monotonic() - started < 1.0
    finally:
        bell.stop()
        reader.close()


def test_a_broker_outage_costs_seconds_leaks_no_password_and_the_redrive_recovers(
        sqlite_dbs, redis_url, redis_db, queue):
    _, _, state_engine = sqlite_dbs
    store = SqlStateStore(state_engine)
    ids = store.add_events([NewEvent("crm", MAILBOX, "upsert", f"test:{i}", crm_key=f"account:A-{i}")
                            for i in range(3)])
    dead = CeleryPublisher(f"redis://:s3cret-pw@127.0.0.1:{free_port()}/0", prefix(queue))   # nobody listens

    started = time.monotonic()
    with capture_logs() as logs:
        sent = dead.publish(store, ids)
    elapsed = time.monotonic() - started
    dead.close()

    assert sent == 0
    assert elapsed < 10, f"publishing to a dead broker took {elapsed:.1f} s"
    assert {store.get_event(i).status for i in ids} == {"pending"}
    [failure] = [entry for entry in logs if entry["event"] == "producer.publish_failed"]
    assert failure["unsent"] == 3 and "127.0.0.1" in failure["broker"]
    assert "s3cret-pw" not in repr(logs)

    live = CeleryPublisher(redis_url, prefix(queue))
    try:
        resent = redrive(store, live, older_than_s=60, now=datetime.now(UTC) + timedelta(seconds=61))
    finally:
        live.close()
    assert resent == 3
    assert {store.get_event(i).status for i in ids} == {"published"}
    assert queued_event_ids(redis_db, queue) == ids


def test_the_running_loop_publishes_a_sqlite_write_on_the_doorbell_not_the_poll_interval(
        sqlite_dbs, redis_db, queue, publisher):
    crm_path, crm_engine, state_engine = sqlite_dbs
    seed(lambda sql: sqlite_exec(crm_path, sql))
    loop, store = make_producer_loop(crm_engine, state_engine, publisher)
    loop.doorbell = SqliteFileDoorbell(crm_path)
    loop.poll_interval_s = 60                    # only the doorbell can wake it in time
    thread = threading.Thread(target=loop.run, daemon=True)
    thread.start()
    try:
        wait_for(lambda: len(queued_event_ids(redis_db, queue)) == 3, 10, "the initial cycle")
        time.sleep(0.5)                          # the loop is asleep now, waiting on the bell
        started = time.monotonic()
        sqlite_exec(crm_path, "UPDATE accounts SET city = 'Leeds' WHERE account_no = 'A-2'")
        wait_for(lambda: len(queued_event_ids(redis_db, queue)) == 4, 5, "the update's message")
        latency = time.monotonic() - started
    finally:
        loop.stop.set()
        thread.join(timeout=10)
    assert not thread.is_alive()
    assert latency < 2.0, f"the doorbell took {latency:.2f} s"
    assert store.get_event(4).crm_key == "account:A-2"
    assert store.get_event(4).status == "published"


def wait_for(condition, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.05)


def test_a_publisher_survives_its_redis_dying_and_coming_back(sqlite_dbs, private_redis, queue):
    _, _, state_engine = sqlite_dbs
    store = SqlStateStore(state_engine)
    url = private_redis.url(0)                          # the test's own server: it stops it
    pub = CeleryPublisher(url, prefix(queue), celery_settings(url, prefix(queue)))
    try:
        first = store.add_events([NewEvent("crm", MAILBOX, "upsert", "t:1", crm_key="account:A-1")])
        assert pub.publish(store, first) == 1           # pooled connection now open

        private_redis.stop()                            # Redis dies under the open connection
        lost = store.add_events([NewEvent("crm", MAILBOX, "upsert", f"t:{i}", crm_key="account:A-2")
                                 for i in (2, 3)])
        started = time.monotonic()
        assert pub.publish(store, lost) == 0
        assert time.monotonic() - started < 10
        assert {store.get_event(i).status for i in lost} == {"pending"}

        private_redis.start()                           # back on the same port, empty (no persistence)
        assert pub.publish(store, lost) == 2            # the same publisher reconnects
        assert queued_event_ids(private_redis.client(), queue) == lost
    finally:
        pub.close()


# ----------------------------------------------------------------------------- PostgreSQL

@pytest.fixture
def pg_dbs():
    """Two throwaway databases (CRM and state) on the local PostgreSQL, dropped after."""
    suffix = uuid.uuid4().hex[:10]
    names = [f"crmsync_prod_crm_{suffix}", f"crmsync_prod_state_{suffix}"]
    try:
        admin = psycopg.connect(PG_ADMIN, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        pytest.fail(f"PostgreSQL is not reachable on 127.0.0.1:5432: {exc}")
    for name in names:
        admin.execute(f'CREATE DATABASE "{name}"')
    crm_url, state_url = (f"postgresql+psycopg://postgres@127.0.0.1:5432/{n}" for n in names)
    crm_engine, state_engine = make_engine(crm_url), make_engine(state_url)
    try:
        init_crm(crm_engine)
        init_state(state_engine)
        yield crm_url, crm_engine, state_engine
    finally:
        crm_engine.dispose()
        state_engine.dispose()
        for name in names:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


def pg_exec(url: str, sql: str) -> None:
    conninfo = url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(sql)


def test_a_plain_sql_update_in_a_postgresql_crm_becomes_a_published_celery_message(
        pg_dbs, redis_db, queue, publisher):
    crm_url, crm_engine, state_engine = pg_dbs
    seed(lambda sql: pg_exec(crm_url, sql))
    loop, store = make_producer_loop(crm_engine, state_engine, publisher)

    check_sql_update_is_published(loop, store, redis_db, queue, lambda sql: pg_exec(crm_url, sql))


def test_the_postgresql_doorbell_rings_on_a_changelog_notify(pg_dbs):
    crm_url, _, _ = pg_dbs
    seed(lambda sql: pg_exec(crm_url, sql))
    bell = crm_doorbell(crm_url)
    assert isinstance(bell, PostgresListenDoorbell)
    bell.start()
    try:
        assert bell.listening.wait(5)
        bell.wait(0.2)                          # the ring every (re)connect gives
        assert bell.wait(0.3) is False

        pg_exec(crm_url, "UPDATE accounts SET city = 'Leeds' WHERE account_no = 'A-2'")
        assert bell.wait(2.0) is True
    finally:
        bell.stop()


def test_a_postgresql_change_committed_after_the_first_sync_read_with_a_smaller_id_becomes_an_event(
        pg_dbs):
    """Sequence ids commit out of order: a transaction that took its changelog id before the first
    sync's read but commits after it is not covered by the first sync, so it is not absorbed."""
    crm_url, crm_engine, state_engine = pg_dbs
    seed(lambda sql: pg_exec(crm_url, sql))
    conninfo = crm_url.replace("postgresql+psycopg://", "postgresql://")
    slow = psycopg.connect(conninfo)           # a transaction still open during the first read
    try:
        slow.execute("UPDATE accounts SET city = 'Leeds' WHERE account_no = 'A-2'")
        pg_exec(crm_url, "UPDATE accounts SET city = 'York' WHERE account_no = 'A-1'")
        store = SqlStateStore(state_engine)
        changelog = Changelog(crm_engine)
        producer = CrmProducer(changelog, SqlCrm(crm_engine), store, [MAILBOX])
        [(late_id,)] = slow.execute(           # its own row, seen from inside
            "SELECT id FROM crm_changelog WHERE row_key = 'A-2' AND op = 'update'").fetchall()
        visible = changelog.pending_ids(100)
        assert late_id not in visible and max(visible) > late_id    # a larger id is visible

        assert sum(len(ids) for ids in producer.initial_batches(MAILBOX)) == 3
        slow.commit()                         # committed after the first sync's read
    finally:
        slow.close()

    assert producer.absorb_first_sync() == len(visible)
    assert [row.id for row in changelog.pending(100)] == [late_id]
    producer.poll()
    after_first_sync = store.get_events(list(range(4, 100)))     # the first sync made 1..3
    assert [(e.source, e.crm_key) for e in after_first_sync.values()] == [("crm", "account:A-2")]
    assert changelog.pending(100) == []
