"""``remove_unsynced_link`` (``crmsync link remove``): the SQL editor and the unit tests' fake store
obey one contract: only a link that was never synced and is not leased is removed."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine

from crmsync.adapters.state.links_query import SqlLinkEditor
from crmsync.adapters.state.sqlalchemy_store import SqlStateStore
from crmsync.ports import LinkUpdate
from schemas.canonical import CanonicalContact
from tests.unit.fakes import FakeStore

MB = "alice@example.com"


def _now() -> datetime:
    return datetime.now(UTC)


class LinkEditorContract:
    @pytest.fixture
    def parts(self):
        raise NotImplementedError

    def test_a_link_never_synced_is_removed_and_its_item_is_free_again(self, parts) -> None:
        store, editor = parts
        store.release(store.acquire(MB, "account:A-1", "ITEM-1", "linker", 30, _now()))
        assert editor.remove_unsynced_link(MB, "account:A-1") is True
        assert store.find_link(MB, crm_key="account:A-1") is None
        assert store.find_link(MB, item_id="ITEM-1") is None
        assert editor.remove_unsynced_link(MB, "account:A-1") is False

    def test_a_synced_link_is_kept(self, parts) -> None:
        store, editor = parts
        held = store.acquire(MB, "account:A-1", "ITEM-1", "worker", 30, _now())
        store.commit(held, LinkUpdate(item_id="ITEM-1", change_key="CK", crm_version="v1",
                                      base=CanonicalContact(first_name="Anna"), crm_hash="h", exchange_hash="h"),
                     _now())
        assert editor.remove_unsynced_link(MB, "account:A-1") is False
        assert store.find_link(MB, crm_key="account:A-1") is not None

    def test_a_link_leased_by_a_worker_is_kept(self, parts) -> None:
        store, editor = parts
        store.acquire(MB, "account:A-1", "ITEM-1", "worker", 30, _now())
        assert editor.remove_unsynced_link(MB, "account:A-1") is False
        assert store.find_link(MB, crm_key="account:A-1") is not None

    def test_an_expired_lease_does_not_keep_it(self, parts) -> None:
        store, editor = parts
        store.acquire(MB, "account:A-1", "ITEM-1", "worker", 30, _now() - timedelta(minutes=5))
        assert editor.remove_unsynced_link(MB, "account:A-1") is True


class TestSqlLinkEditor(LinkEditorContract):
    @pytest.fixture
    def parts(self, state_engine: Engine):
        return SqlStateStore(state_engine), SqlLinkEditor(state_engine)


class TestFakeLinkEditor(LinkEditorContract):
    @pytest.fixture
    def parts(self):
        store = FakeStore()
        return store, store
