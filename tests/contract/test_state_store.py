"""The state store (SqlStateStore) on SQLite and PostgreSQL."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine
from sqlalchemy.exc import IntegrityError

from crmsync.adapters.database import init_state, state_revision
from crmsync.adapters.state.sqlalchemy_store import SqlStateStore
from crmsync.errors import BadRecord, LeaseTaken, Stale
from crmsync.ports import ConflictRecord, LinkUpdate, NewEvent
from schemas.canonical import CanonicalContact
from tests.contract.dbhelpers import race

T0 = datetime(2026, 11, 27, 10, 0, tzinfo=UTC)
MB = "alice@example.com"


@pytest.fixture
def store(state_engine: Engine) -> SqlStateStore:
    return SqlStateStore(state_engine)


def crm_event(changelog_id: int, key: str = "account:A1", mailbox: str = MB) -> NewEvent:
    return NewEvent(source="crm", mailbox=mailbox, op="upsert", crm_key=key,
                    dedup_key=f"crm:{changelog_id}:{mailbox}")


def update_for(link, name: str = "Anna") -> LinkUpdate:
    return LinkUpdate(item_id="ITEM-1", change_key="CK-1", crm_version="v1",
                      base=CanonicalContact(first_name=name), crm_hash="h1", exchange_hash="h2")


# ------------------------------------------------------------------------------------ setup

def test_init_state_is_idempotent(state_engine: Engine) -> None:
    init_state(state_engine)
    init_state(state_engine)
    assert state_revision(state_engine) == "0006_policy"


def test_migrations_create_exactly_the_models(state_engine: Engine) -> None:
    """The hand-written revision and schemas.state_tables must not drift apart."""
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    from schemas.state_tables import state_metadata

    with state_engine.connect() as conn:
        ctx = MigrationContext.configure(
            conn, opts={"compare_type": True, "version_table": "crmsync_alembic_version"})
        assert compare_metadata(ctx, state_metadata) == []


# ------------------------------------------------------------------------------------ events

def test_duplicate_events_are_skipped(store: SqlStateStore) -> None:
    first = store.add_events([crm_event(1), crm_event(2)])
    again = store.add_events([crm_event(2), crm_event(3)])
    assert len(first) == 2 and len(again) == 1 and again[0] > max(first)
    ev = store.get_event(again[0])
    assert (ev.source, ev.mailbox, ev.op, ev.crm_key, ev.status, ev.attempts) == (
        "crm", MB, "upsert", "account:A1", "pending", 0)
    assert ev.created_at.tzinfo is not None
    assert store.get_event(10**9) is None


def test_cursor_is_written_with_its_events(store: SqlStateStore) -> None:
    assert store.get_cursor("crm") is None
    store.add_events([crm_event(1)], cursor=("crm", "1"))
    assert store.get_cursor("crm") == "1"
    store.add_events([], cursor=("crm", "7"))
    assert store.get_cursor("crm") == "7"


def test_cursor_is_not_moved_when_the_events_fail(store: SqlStateStore) -> None:
    store.add_events([crm_event(1)], cursor=("crm", "1"))
    broken = NewEvent(source="crm", mailbox=None, op="upsert", dedup_key="crm:2:x")  # type: ignore[arg-type]
    with pytest.raises(IntegrityError):
        store.add_events([crm_event(2), broken], cursor=("crm", "2"))
    assert store.get_cursor("crm") == "1"
    assert store.add_events([crm_event(2)]) != []        # event 2 was rolled back with it


def test_event_lifecycle_and_attempts(store: SqlStateStore) -> None:
    (eid,) = store.add_events([crm_event(1)])
    store.mark_published([eid])
    assert store.get_event(eid).status == "published"
    assert store.record_attempt(eid, "ErrorServerBusy") == 1
    assert store.record_attempt(eid, "timeout") == 2
    assert store.get_event(eid).last_error == "timeout"
    store.mark_applied(eid)
    store.mark_published([eid])                      # a late publish never un-applies
    assert store.get_event(eid).status == "applied"
    with pytest.raises(BadRecord, match="event 999999"):
        store.record_attempt(999999, None)


def test_redrive_selects_unapplied_events_not_published_recently(store: SqlStateStore) -> None:
    pending, published, applied, dead = store.add_events([crm_event(i) for i in range(1, 5)])
    store.mark_published([published, applied, dead])
    store.mark_applied(applied)
    store.mark_dead(dead, "gave up")
    later = datetime.now(UTC) + timedelta(minutes=1)
    assert [e.id for e in store.events_to_redrive(later, 100)] == [pending, published]
    assert store.events_to_redrive(datetime.now(UTC) - timedelta(minutes=1), 100) == []
    assert [e.id for e in store.events_to_redrive(later, 1)] == [pending]


def test_dead_letters_and_requeue(store: SqlStateStore) -> None:
    a, b = store.add_events([crm_event(1), crm_event(2)])
    store.record_attempt(a, "boom")
    store.mark_dead(a, "BadRecord: account:A1 field 'email' is not an address")
    dead = store.dead_letters(10)
    assert [e.id for e in dead] == [a] and "field 'email'" in dead[0].last_error
    assert store.requeue([a, b]) == [a]              # b was not dead
    ev = store.get_event(a)
    assert (ev.status, ev.attempts) == ("pending", 0)
    assert store.dead_letters(10) == []


def test_status_summary_per_mailbox(store: SqlStateStore) -> None:
    e1, e2, e3 = store.add_events([crm_event(1), crm_event(2), crm_event(3, mailbox="bob@example.com")])
    store.mark_published([e2])
    store.mark_dead(e3, "x")
    link = store.acquire(MB, "account:A1", None, "w1", 60, T0)
    store.commit(link, update_for(link), T0 + timedelta(seconds=1))
    summary = store.status_summary()
    assert [s["mailbox"] for s in summary] == [MB, "bob@example.com"]
    alice, bob = summary
    assert {k: alice[k] for k in ("links", "pending", "published", "applied", "dead")} == {
        "links": 1, "pending": 1, "published": 1, "applied": 0, "dead": 0}
    assert alice["last_synced_at"] == T0 + timedelta(seconds=1)
    assert (bob["links"], bob["dead"], bob["last_synced_at"]) == (0, 1, None)


# ------------------------------------------------------------------------------------ links

def test_acquire_creates_the_link_and_commit_stores_the_base(store: SqlStateStore) -> None:
    link = store.acquire(MB, "account:A1", None, "w1", 60, T0)
    assert link.lease_token and link.base is None and link.item_id is None
    done = store.commit(link, update_for(link), T0)
    assert done.lease_token is None and done.base == CanonicalContact(first_name="Anna")
    assert (done.item_id, done.change_key, done.crm_version, done.crm_hash, done.exchange_hash) == (
        "ITEM-1", "CK-1", "v1", "h1", "h2")
    assert done.synced_at == T0
    assert store.find_link(MB, crm_key="account:A1") == done
    assert store.find_link(MB, item_id="ITEM-1") == done
    assert store.find_link("other@example.com", crm_key="account:A1") is None
    assert store.links_for_mailbox(MB) == [done]


def test_second_owner_gets_lease_taken(store: SqlStateStore) -> None:
    store.acquire(MB, "account:A1", None, "w1", 60, T0)
    with pytest.raises(LeaseTaken, match="account:A1.*w1"):
        store.acquire(MB, "account:A1", None, "w2", 60, T0 + timedelta(seconds=30))


def test_expired_lease_is_taken_over_and_the_old_holder_cannot_commit(store: SqlStateStore) -> None:
    old = store.acquire(MB, "account:A1", None, "w1", 60, T0)
    new = store.acquire(MB, "account:A1", None, "w2", 60, T0 + timedelta(seconds=61))
    assert new.lease_token != old.lease_token
    with pytest.raises(Stale, match="lease"):
        store.commit(old, update_for(old), T0 + timedelta(seconds=62))
    store.release(old)                               # a lost lease's release changes nothing
    with pytest.raises(LeaseTaken):
        store.acquire(MB, "account:A1", None, "w3", 60, T0 + timedelta(seconds=62))
    store.commit(new, update_for(new, "Berta"), T0 + timedelta(seconds=63))
    assert store.find_link(MB, crm_key="account:A1").base.first_name == "Berta"


def test_release_frees_the_lease(store: SqlStateStore) -> None:
    link = store.acquire(MB, "account:A1", None, "w1", 60, T0)
    store.release(link)
    again = store.acquire(MB, "account:A1", None, "w2", 60, T0)
    assert again.id == link.id


def test_an_item_linked_elsewhere_is_refused(store: SqlStateStore) -> None:
    link = store.acquire(MB, "account:A1", None, "w1", 60, T0)
    store.commit(link, update_for(link), T0)
    with pytest.raises(BadRecord, match="ITEM-1.*account:A1"):
        store.acquire(MB, "account:B2", "ITEM-1", "w1", 60, T0)
    other = store.acquire(MB, "account:B2", None, "w1", 60, T0)
    with pytest.raises(BadRecord, match="ITEM-1"):
        store.commit(other, update_for(other), T0)


def test_concurrent_acquire_has_exactly_one_winner(store: SqlStateStore) -> None:
    for round_ in range(5):
        key = f"account:R{round_}"
        results = race([lambda owner=f"w{i}", k=key: store.acquire(MB, k, None, owner, 60, T0)
                        for i in range(4)])
        won = [r for r in results if not isinstance(r, BaseException)]
        lost = [r for r in results if isinstance(r, LeaseTaken)]
        assert len(won) == 1 and len(lost) == 3, results


def test_conflicts_are_recorded_with_the_link_commit(store: SqlStateStore) -> None:
    link = store.acquire(MB, "account:A1", None, "w1", 60, T0)
    store.commit(link, replace(update_for(link), conflicts=(
        ConflictRecord("phone_business", "+1 555 0100", "+1 555 0199", "exchange"),)), T0)
    (row,) = store.conflicts_for(MB, "account:A1")
    assert (row["field"], row["crm_value"], row["exchange_value"], row["chosen"], row["at"]) == (
        "phone_business", "+1 555 0100", "+1 555 0199", "exchange", T0)


def test_the_same_owner_is_refused_a_lease_it_already_holds(store: SqlStateStore) -> None:
    store.acquire(MB, "account:A1", None, "w1", 60, T0)
    with pytest.raises(LeaseTaken):
        store.acquire(MB, "account:A1", None, "w1", 60, T0 + timedelta(seconds=1))


def test_a_takeover_after_expiry_increments_the_fencing_token(store: SqlStateStore) -> None:
    first = store.acquire(MB, "account:F1", None, "w1", 10, T0)
    second = store.acquire(MB, "account:F1", None, "w2", 10, T0 + timedelta(seconds=11))
    assert second.fence == first.fence + 1 and second.lease_token != first.lease_token
    assert store.renew_many([first], 60, T0 + timedelta(seconds=12)) == {}
    renewed = store.renew_many([second], 60, T0 + timedelta(seconds=12))
    assert renewed["account:F1"].lease_until == T0 + timedelta(seconds=72)


def test_mark_retrying_refreshes_the_published_time(store: SqlStateStore) -> None:
    (eid,) = store.add_events([crm_event(1, "account:R1")])
    store.mark_published([eid])
    now = datetime.now(UTC)
    assert [e.id for e in store.events_to_redrive(now + timedelta(hours=1), 10)] == [eid]
    store.mark_retrying([eid], now + timedelta(hours=2))
    assert store.events_to_redrive(now + timedelta(hours=1), 10) == []


def test_naive_timestamps_are_refused(store: SqlStateStore) -> None:
    with pytest.raises(Exception, match="timezone-aware"):
        store.acquire(MB, "account:A1", None, "w1", 60, datetime(2026, 1, 1))


# ----------------------------------------------------------------------------------- batches

def test_acquire_many_leases_new_and_free_links_and_names_the_rest(store: SqlStateStore) -> None:
    existing = store.acquire(MB, "account:OLD", None, "w1", 60, T0)
    store.commit(existing, update_for(existing), T0)
    store.acquire(MB, "account:BUSY", None, "other", 60, T0)
    leased, refused = store.acquire_many(
        MB, [("account:NEW", None), ("account:OLD", "ITEM-1"), ("account:BUSY", None)], "w2", 60, T0)
    assert set(leased) == {"account:NEW", "account:OLD"}
    assert list(refused) == ["account:BUSY"] and "leased by other" in refused["account:BUSY"]
    assert all(link.lease_token for link in leased.values())


def test_commit_many_commits_held_leases_and_reports_lost_ones(store: SqlStateStore) -> None:
    leased, _ = store.acquire_many(MB, [("account:C1", None), ("account:C2", None)], "w1", 1, T0)
    # C2's lease expires and another worker takes it over
    store.acquire(MB, "account:C2", None, "w2", 60, T0 + timedelta(seconds=5))
    commits = [(leased["account:C1"], LinkUpdate("ITEM-C1", "CK", "v", CanonicalContact(first_name="A"), "h", "h")),
               (leased["account:C2"], LinkUpdate("ITEM-C2", "CK", "v", CanonicalContact(first_name="B"), "h", "h"))]
    failed = store.commit_many(commits, T0 + timedelta(seconds=6))
    assert list(failed) == ["account:C2"] and "lease was lost" in failed["account:C2"]
    c1 = store.find_link(MB, crm_key="account:C1")
    assert c1.item_id == "ITEM-C1" and c1.base.first_name == "A" and c1.lease_token is None
    assert store.find_link(MB, crm_key="account:C2").item_id is None


def test_commit_many_names_the_link_whose_item_is_linked_elsewhere(store: SqlStateStore) -> None:
    taken = store.acquire(MB, "account:T1", "ITEM-T", "w1", 60, T0)
    store.commit(taken, LinkUpdate("ITEM-T", "CK", "v", None, None, None), T0)
    leased, _ = store.acquire_many(MB, [("account:T2", None), ("account:T3", None)], "w1", 60, T0)
    failed = store.commit_many(
        [(leased["account:T2"], LinkUpdate("ITEM-T", "CK", "v", None, None, None)),
         (leased["account:T3"], LinkUpdate("ITEM-T3", "CK", "v", None, None, None))], T0)
    assert list(failed) == ["account:T2"]
    assert store.find_link(MB, crm_key="account:T3").item_id == "ITEM-T3"


def test_get_events_and_mark_applied_many(store: SqlStateStore) -> None:
    ids = store.add_events([crm_event(1, "account:G1"), crm_event(2, "account:G2")])
    found = store.get_events(ids + [999_999])
    assert sorted(found) == sorted(ids)
    store.mark_applied_many({ids[0]: "updated", ids[1]: "noop"})
    assert {store.get_event(i).status for i in ids} == {"applied"}
