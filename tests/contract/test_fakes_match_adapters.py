"""One contract per port, run against the real adapter AND the in-memory fake that the unit
tests use, so that a fake cannot hide a bug the adapter has (vdirsyncer's StorageTests).

The base classes have no ``Test`` prefix and are never collected on their own; each
implementation subclasses them with its own fixture. The Exchange side's contract lives in
``exchange_side_contract.py`` beside this file.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine

from crmsync.adapters.crm.sqlalchemy_crm import SqlCrm
from crmsync.adapters.state.sqlalchemy_store import SqlStateStore
from crmsync.errors import LeaseTaken, Stale
from crmsync.ports import ConflictRecord, LinkUpdate, NewEvent
from schemas.canonical import CanonicalContact
from tests.unit.fakes import FakeCrm, FakeStore

MB = "alice@example.com"
T0 = datetime(2026, 11, 27, 10, 0, tzinfo=UTC)


def _update(name: str = "Anna", item: str = "ITEM-1", ck: str = "CK-1", **kw) -> LinkUpdate:
    return LinkUpdate(item_id=item, change_key=ck, crm_version="v1", base=CanonicalContact(first_name=name),
                      crm_hash="h", exchange_hash="h", **kw)


class StateStoreContract:
    """The StateStore port as the apply service uses it."""

    @pytest.fixture
    def store(self):
        raise NotImplementedError

    def test_events_are_deduplicated_and_read_back(self, store) -> None:
        ids = store.add_events([NewEvent("crm", MB, "upsert", "crm:1", crm_key="account:A1"),
                                NewEvent("crm", MB, "upsert", "crm:1", crm_key="account:A1")])
        assert len(ids) == 1
        (event,) = store.get_events(ids).values()
        assert (event.source, event.mailbox, event.crm_key, event.status, event.attempts) == (
            "crm", MB, "account:A1", "pending", 0)

    def test_attempts_are_counted_and_a_dead_letter_keeps_its_error(self, store) -> None:
        (eid,) = store.add_events([NewEvent("crm", MB, "upsert", "crm:2", crm_key="account:A2")])
        assert store.record_attempt(eid, "Transient: busy") == 1
        assert store.record_attempt(eid, "Transient: busy again") == 2
        store.mark_dead(eid, "BadRecord: field x")
        event = store.get_event(eid)
        assert (event.status, event.attempts, event.last_error) == ("dead", 2, "BadRecord: field x")

    def test_a_lease_held_by_anyone_is_refused_the_same_owner_included(self, store) -> None:
        store.acquire(MB, "account:L1", None, "exec-1", 60, T0)
        for owner in ("exec-1", "exec-2"):
            with pytest.raises(LeaseTaken):
                store.acquire(MB, "account:L1", None, owner, 60, T0 + timedelta(seconds=1))

    def test_a_takeover_after_expiry_raises_the_fence_and_locks_out_the_old_holder(self, store) -> None:
        old = store.acquire(MB, "account:L2", None, "exec-1", 10, T0)
        new = store.acquire(MB, "account:L2", None, "exec-2", 10, T0 + timedelta(seconds=11))
        assert new.fence == old.fence + 1
        assert store.renew_many([old], 60, T0 + timedelta(seconds=12)) == {}
        with pytest.raises(Stale):
            store.commit(old, _update(), T0 + timedelta(seconds=12))
        committed = store.commit(new, _update("Bea"), T0 + timedelta(seconds=12))
        assert committed.base.first_name == "Bea" and committed.lease_token is None

    def test_renewing_extends_a_held_lease(self, store) -> None:
        held = store.acquire(MB, "account:L3", None, "exec-1", 10, T0)
        renewed = store.renew_many([held], 60, T0 + timedelta(seconds=5))["account:L3"]
        assert renewed.lease_until == T0 + timedelta(seconds=65)
        with pytest.raises(LeaseTaken):     # not expired at the old deadline any more
            store.acquire(MB, "account:L3", None, "exec-2", 10, T0 + timedelta(seconds=20))

    def test_a_released_lease_is_free_and_a_commit_releases(self, store) -> None:
        held = store.acquire(MB, "account:L4", None, "exec-1", 60, T0)
        store.release_many([held])
        again = store.acquire(MB, "account:L4", None, "exec-2", 60, T0)
        store.commit(again, _update(item="ITEM-L4"), T0)
        assert store.acquire(MB, "account:L4", None, "exec-3", 60, T0).item_id == "ITEM-L4"

    def test_links_are_found_by_key_and_by_item(self, store) -> None:
        held = store.acquire(MB, "account:L5", None, "exec-1", 60, T0)
        store.commit(held, _update(item="ITEM-L5"), T0)
        assert store.find_link(MB, crm_key="account:L5").item_id == "ITEM-L5"
        assert store.find_link(MB, item_id="ITEM-L5").crm_key == "account:L5"
        assert store.find_link(MB, crm_key="account:nope") is None

    def test_acquire_many_leases_the_free_and_names_the_held(self, store) -> None:
        store.acquire(MB, "account:BUSY", None, "other", 60, T0)
        leased, refused = store.acquire_many(MB, [("account:N1", None), ("account:BUSY", None)], "exec-1", 60, T0)
        assert list(leased) == ["account:N1"] and list(refused) == ["account:BUSY"]

    def test_commit_many_reports_a_lost_lease_and_commits_the_rest(self, store) -> None:
        leased, _ = store.acquire_many(MB, [("account:C1", None), ("account:C2", None)], "exec-1", 1, T0)
        store.acquire(MB, "account:C2", None, "exec-2", 60, T0 + timedelta(seconds=5))
        failed = store.commit_many([(leased["account:C1"], _update(item="I-C1")),
                                    (leased["account:C2"], _update(item="I-C2"))], T0 + timedelta(seconds=6))
        assert list(failed) == ["account:C2"]
        assert store.find_link(MB, crm_key="account:C1").item_id == "I-C1"

    def test_an_item_linked_to_another_record_is_refused_at_commit(self, store) -> None:
        first = store.acquire(MB, "account:T1", None, "exec-1", 60, T0)
        store.commit(first, _update(item="ITEM-T"), T0)
        leased, _ = store.acquire_many(MB, [("account:T2", None)], "exec-1", 60, T0)
        failed = store.commit_many([(leased["account:T2"], _update(item="ITEM-T"))], T0)
        assert "already linked" in failed["account:T2"]

    def test_conflicts_go_with_the_commit_and_leave_with_a_private_unlink(self, store) -> None:
        held = store.acquire(MB, "account:P1", None, "exec-1", 60, T0)
        store.commit(held, _update(conflicts=(ConflictRecord("phone_business", "1", "2", "exchange"),)), T0)
        assert self.conflicts(store, "account:P1") == [("phone_business", "1", "2", "exchange")]
        held = store.acquire(MB, "account:P1", None, "exec-2", 60, T0)
        store.commit(held, LinkUpdate("ITEM-1", None, None, None, None, None, private=True), T0)
        link = store.find_link(MB, crm_key="account:P1")
        assert link.private and link.base is None
        assert self.conflicts(store, "account:P1") == []

    def test_applied_events_are_marked_in_one_go(self, store) -> None:
        ids = store.add_events([NewEvent("crm", MB, "upsert", f"crm:m{i}", crm_key=f"account:M{i}") for i in range(3)])
        store.mark_applied_many({ids[0]: "updated", ids[1]: "noop"})
        assert [store.get_event(i).status for i in ids] == ["applied", "applied", "pending"]

    @staticmethod
    def conflicts(store, key: str) -> list[tuple]:
        raise NotImplementedError


class TestSqlStateStore(StateStoreContract):
    @pytest.fixture
    def store(self, state_engine: Engine) -> SqlStateStore:
        return SqlStateStore(state_engine)

    @staticmethod
    def conflicts(store, key):
        return [(r["field"], r["crm_value"], r["exchange_value"], r["chosen"]) for r in store.conflicts_for(MB, key)]


class TestFakeStore(StateStoreContract):
    @pytest.fixture
    def store(self) -> FakeStore:
        return FakeStore()

    @staticmethod
    def conflicts(store, key):
        return [c[2:6] for c in store.conflicts if c[1] == key]


# ------------------------------------------------------------------------------------- the CRM

Seed = Callable[..., None]


class CrmSideContract:
    """The CrmSide port. ``seed(account_no, active=True, **fields)`` writes an account as another
    program would."""

    @pytest.fixture
    def side(self) -> Iterator[tuple[object, Seed]]:
        raise NotImplementedError

    def test_read_and_read_many_agree(self, side) -> None:
        crm, seed = side
        seed("A-1", first_name="Anna", company_name="Acme")
        seed("A-2", active=False, first_name="Old")
        one = crm.read("account:A-1")
        assert (one.record.first_name, one.record.company_name, one.active) == ("Anna", "Acme", True)
        assert crm.read("account:A-2").active is False and crm.read("account:nope") is None
        assert crm.read_many(["account:A-1", "account:A-2", "account:nope"]) == {
            "account:A-1": one, "account:A-2": crm.read("account:A-2")}

    def test_update_checks_the_version_and_changes_it(self, side) -> None:
        crm, seed = side
        seed("A-1", first_name="Anna")
        before = crm.read("account:A-1")
        after = crm.update("account:A-1", {"job_title": "CEO"}, before.version)
        assert after.record.job_title == "CEO" and after.version != before.version
        with pytest.raises(Stale):
            crm.update("account:A-1", {"job_title": "CTO"}, before.version)

    def test_deactivate_checks_the_version_and_keeps_the_row(self, side) -> None:
        crm, seed = side
        seed("A-1", first_name="Anna")
        before = crm.read("account:A-1")
        crm.update("account:A-1", {"job_title": "CEO"}, before.version)
        with pytest.raises(Stale):
            crm.deactivate("account:A-1", before.version)
        gone = crm.deactivate("account:A-1", crm.read("account:A-1").version)
        assert gone.active is False and crm.read("account:A-1") is not None
        assert crm.deactivate("account:nope", None) is None

    def test_reactivate_checks_the_version(self, side) -> None:
        crm, seed = side
        seed("A-1", active=False, first_name="Anna")
        current = crm.read("account:A-1")
        with pytest.raises(Stale):
            crm.reactivate("account:A-1", "not-the-version")
        assert crm.reactivate("account:A-1", current.version).active is True

    def test_all_keys_lists_the_active_accounts(self, side) -> None:
        crm, seed = side
        seed("A-1", first_name="Anna")
        seed("A-2", active=False, first_name="Old")
        seed("A-3", first_name="Bea")
        assert sorted(crm.all_keys()) == ["account:A-1", "account:A-3"]

    def test_create_account_is_idempotent_by_account_no(self, side) -> None:
        crm, _ = side
        first = crm.create_account("EX-1", {"first_name": "Olga"})
        again = crm.create_account("EX-1", {"first_name": "Someone else"})
        assert first.key == again.key == "account:EX-1" and again.record.first_name == "Olga"


class TestSqlCrm(CrmSideContract):
    @pytest.fixture
    def side(self, crm_engine: Engine, crm_dbapi):
        def seed(account_no: str, active: bool = True, **fields: str) -> None:
            cols = ["account_no", "is_active", *fields]
            marks = ", ".join(["?" if "sqlite" in crm_engine.url.drivername else "%s"] * len(cols))
            conn = crm_dbapi()
            try:
                conn.execute(f"INSERT INTO accounts ({', '.join(cols)}) VALUES ({marks})",
                             (account_no, active, *fields.values()))
                conn.commit()
            finally:
                conn.close()
        yield SqlCrm(crm_engine), seed


class TestFakeCrm(CrmSideContract):
    @pytest.fixture
    def side(self):
        crm = FakeCrm()

        def seed(account_no: str, active: bool = True, **fields: str) -> None:
            crm.put(f"account:{account_no}", active=active, **fields)
        yield crm, seed


