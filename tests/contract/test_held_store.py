"""The HeldDeletes and HeldConflicts ports (the delete brake, the manual conflict queue), run
against the SQL adapter on SQLite and PostgreSQL and against the in-memory fake the unit tests use (the pattern of
test_fakes_match_adapters.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine

from crmsync.adapters.state.held import SqlHeldConflicts, SqlHeldDeletes
from crmsync.adapters.state.sqlalchemy_store import SqlStateStore
from crmsync.ports import LinkUpdate
from schemas.canonical import CanonicalContact
from tests.unit.fakes import FakeHeldConflicts, FakeHeldDeletes, FakeStore

MB, OTHER = "alice@example.com", "bob@example.com"
T0 = datetime(2026, 11, 27, 10, 0, tzinfo=UTC)


class HeldDeletesContract:
    @pytest.fixture
    def parts(self):
        """(held deletes, the state store whose links it counts)."""
        raise NotImplementedError

    def test_noted_deletes_are_found_by_status_and_mailbox(self, parts) -> None:
        held, _ = parts
        ids = held.note(MB, [("account:A1", "crm"), ("account:A2", "exchange")], "held", T0)
        held.note(OTHER, [("account:A3", "crm")], "held", T0)
        held.note(MB, [("account:A4", "crm")], "passed", T0)
        assert len(ids) == 2 and ids[0] < ids[1]
        rows = held.find(MB)
        assert [(r.id, r.crm_key, r.side, r.status) for r in rows] == [
            (ids[0], "account:A1", "crm", "held"), (ids[1], "account:A2", "exchange", "held")]
        assert rows[0].noted_at == T0
        assert len(held.find()) == 3
        assert [r.crm_key for r in held.find(MB, ("passed",))] == ["account:A4"]

    def test_the_reason_a_delete_is_held_is_kept(self, parts) -> None:
        held, _ = parts
        held.note(MB, [("account:A1", "crm")], "held", T0, reason="folder-empty")
        held.note(MB, [("account:A2", "crm")], "held", T0, reason="brake")
        held.note(MB, [("account:A3", "crm")], "passed", T0)
        assert [(r.crm_key, r.reason) for r in held.find(MB, ("held", "passed"))] == [
            ("account:A1", "folder-empty"), ("account:A2", "brake"), ("account:A3", None)]
        assert held.latest(MB, ["account:A1"])["account:A1"].reason == "folder-empty"

    def test_the_window_counts_passed_and_held_only(self, parts) -> None:
        held, _ = parts
        held.note(MB, [("account:A1", "crm")], "passed", T0 - timedelta(hours=2))
        held.note(MB, [("account:A2", "crm")], "passed", T0)
        (h,) = held.note(MB, [("account:A3", "crm")], "held", T0)
        held.note(MB, [("account:A4", "crm")], "unlinked", T0)
        held.note(OTHER, [("account:A5", "crm")], "held", T0)
        assert held.count_since(MB, T0 - timedelta(hours=1)) == 2
        held.set_status([h], "approved", T0)
        assert held.count_since(MB, T0 - timedelta(hours=1)) == 1

    def test_status_moves_only_from_the_given_statuses(self, parts) -> None:
        held, _ = parts
        a, b = held.note(MB, [("account:A1", "crm"), ("account:A2", "crm")], "held", T0)
        assert held.set_status([a], "discarded", T0, only_from=("held",)) == [a]
        assert held.set_status([a, b], "approved", T0, only_from=("held",)) == [b]
        assert held.set_status([], "approved", T0) == []
        assert {r.crm_key: r.status for r in held.latest(MB, ["account:A1", "account:A2", "account:X"]).values()} == {
            "account:A1": "discarded", "account:A2": "approved"}

    def test_latest_is_the_most_recent_row_per_key(self, parts) -> None:
        held, _ = parts
        held.note(MB, [("account:A1", "crm")], "passed", T0)
        held.note(MB, [("account:A1", "crm")], "held", T0 + timedelta(minutes=1))
        assert held.latest(MB, ["account:A1"])["account:A1"].status == "held"
        assert held.latest(OTHER, ["account:A1"]) == {}
        assert held.latest(MB, []) == {}

    def test_synced_links_count_only_synced_live_links(self, parts) -> None:
        held, store = parts
        leased = {key: store.acquire(MB, key, None, "w", 60, T0) for key in ("account:S1", "account:S2", "account:U1")}
        for n, key in enumerate(("account:S1", "account:S2")):
            store.commit(leased[key], LinkUpdate(item_id=f"I{n}", change_key="ck", crm_version="1",
                                          base=CanonicalContact(first_name="x"), crm_hash="h", exchange_hash="h",
                                          deleted=(key == "account:S2")), T0)
        store.release(leased["account:U1"])
        assert held.synced_links(MB) == 1
        assert held.synced_links(OTHER) == 0


class TestSqlHeldDeletes(HeldDeletesContract):
    @pytest.fixture
    def parts(self, state_engine: Engine):
        return SqlHeldDeletes(state_engine), SqlStateStore(state_engine)


class TestFakeHeldDeletes(HeldDeletesContract):
    @pytest.fixture
    def parts(self):
        store = FakeStore()
        return FakeHeldDeletes(store), store


class HeldConflictsContract:
    @pytest.fixture
    def conflicts(self):
        raise NotImplementedError

    def test_a_field_is_held_once_with_its_latest_values(self, conflicts) -> None:
        conflicts.hold(MB, "account:A1", [("city", "Oslo", "Bergen", "Bodø"), ("notes", "a", "b", None)], T0)
        conflicts.hold(MB, "account:A1", [("city", "Oslo", "Tromsø", "Bodø")], T0 + timedelta(minutes=1))
        rows = conflicts.find(MB)
        assert [(r.field, r.crm_value, r.exchange_value, r.base_value, r.status) for r in rows] == [
            ("city", "Oslo", "Tromsø", "Bodø", "held"), ("notes", "a", "b", None, "held")]
        assert rows[0].held_at == T0
        assert conflicts.find(OTHER) == [] and len(conflicts.find()) == 2

    def test_a_resolution_is_open_until_applied(self, conflicts) -> None:
        conflicts.hold(MB, "account:A1", [("city", "Oslo", "Bergen", None)], T0)
        (row,) = conflicts.find(MB)
        assert conflicts.resolve(row.id, "Bergen", "cli:admin", T0) is True
        assert conflicts.resolve(row.id, "Oslo", "cli:admin", T0) is False      # decided once
        got = conflicts.get(row.id)
        assert (got.status, got.value, got.decided_by) == ("resolved", "Bergen", "cli:admin")
        assert set(conflicts.open_for(MB, "account:A1")) == {"city"}
        conflicts.mark_applied([row.id], T0)
        assert conflicts.open_for(MB, "account:A1") == {} and conflicts.get(row.id).status == "applied"
        conflicts.hold(MB, "account:A1", [("city", "X", "Y", "Bergen")], T0)   # a new conflict: a new row
        assert [r.id != row.id for r in conflicts.find(MB)] == [True]
        assert conflicts.get(10_000) is None

    def test_forget_removes_every_row_of_the_link(self, conflicts) -> None:
        conflicts.hold(MB, "account:A1", [("city", "Oslo", "Bergen", None)], T0)
        conflicts.hold(MB, "account:A2", [("city", "X", "Y", None)], T0)
        conflicts.hold(OTHER, "account:A1", [("city", "X", "Y", None)], T0)
        conflicts.forget(MB, "account:A1")
        assert sorted((r.mailbox, r.crm_key) for r in conflicts.find()) == [(MB, "account:A2"), (OTHER, "account:A1")]


class TestSqlHeldConflicts(HeldConflictsContract):
    @pytest.fixture
    def conflicts(self, state_engine: Engine):
        return SqlHeldConflicts(state_engine)


class TestFakeHeldConflicts(HeldConflictsContract):
    @pytest.fixture
    def conflicts(self):
        return FakeHeldConflicts()
