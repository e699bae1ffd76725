"""What the apply service leaves in the event log, on the real SQLAlchemy state store (a temp
SQLite file) with in-memory CRM and Exchange sides: the field diffs per side, committed with
the link; nothing of a private contact; a failed write names its record and fields."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import text

from crmsync.adapters.database import init_state, make_engine
from crmsync.adapters.state.event_log import error_parts, history, show_event
from crmsync.adapters.state.sqlalchemy_store import SqlStateStore
from crmsync.core.reconcile import Policy
from crmsync.ports import NewEvent
from crmsync.service.apply import SyncServices, apply_events
from tests.unit.fakes import NOW, FakeCrm, FakeExchange

MB = FakeExchange.mailbox


@pytest.fixture
def world(tmp_path: Path):
    engine = make_engine(f"sqlite:///{tmp_path / 'state.db'}")
    init_state(engine)
    crm, ex, store = FakeCrm(), FakeExchange(), SqlStateStore(engine)
    svc = SyncServices(store=store, crm=crm, exchange_for=lambda mb: ex, policy=Policy(),
                       clock=lambda: NOW, new_account_no=crm.new_account_no)
    yield svc, crm, ex, store, engine
    engine.dispose()


_n = iter(range(1, 1_000_000))


def _apply(svc, store, *, key=None, item=None, source="crm"):
    [event_id] = store.add_events([NewEvent(source=source, mailbox=MB, op="upsert", crm_key=key, item_id=item,
                                            dedup_key=f"t:{next(_n)}")])
    result = apply_events(svc, [event_id])
    return event_id, result


def _diffs(engine, event_id):
    return [(c["action"], c["side"], c["field"], c["old_value"], c["new_value"])
            for c in show_event(engine, event_id)["changes"]]


def test_a_create_and_an_update_log_each_field_with_old_and_new_value(world):
    svc, crm, ex, store, engine = world
    crm.put("account:A1", first_name="Ada", phone_business="+1 555 0100")
    created, _ = _apply(svc, store, key="account:A1")
    assert _diffs(engine, created) == [("created-exchange", "exchange", "first_name", None, "Ada"),
                                       ("created-exchange", "exchange", "phone_business", None, "+1 555 0100")]
    item_id = next(iter(ex.items))
    ex.update(item_id, {"phone_business": "+1 555 0199", "city": "Paris"}, ex.items[item_id]["ck"])
    crm.put("account:A1", first_name="Ada Lovelace", phone_business="+1 555 0100")
    updated, result = _apply(svc, store, item=item_id, source="exchange")
    assert result.outcomes == {updated: "updated"}
    assert _diffs(engine, updated) == [("updated", "exchange", "first_name", "Ada", "Ada Lovelace"),
                                       ("updated", "crm", "phone_business", "+1 555 0100", "+1 555 0199"),
                                       ("updated", "crm", "city", None, "Paris")]
    echo, result = _apply(svc, store, key="account:A1")
    assert result.outcomes == {echo: "noop"} and _diffs(engine, echo) == []
    assert len(history(engine, "account:A1")["changes"]) == 5


def test_a_delete_is_logged_as_a_whole_record_act(world):
    svc, crm, ex, store, engine = world
    crm.put("account:A1", first_name="Ada")
    _apply(svc, store, key="account:A1")
    del crm.rows["account:A1"]
    gone, result = _apply(svc, store, key="account:A1")
    assert result.outcomes == {gone: "deleted-exchange"}
    assert _diffs(engine, gone) == [("deleted-exchange", "exchange", None, None, None)]


def test_nothing_of_a_private_contact_stays_in_the_state_database(world):
    svc, crm, ex, store, engine = world
    crm.put("account:A1", first_name="Ada", notes="shared note")
    _apply(svc, store, key="account:A1")
    item_id = next(iter(ex.items))
    ex.update(item_id, {"notes": "Shared, then private"}, ex.items[item_id]["ck"])
    _apply(svc, store, item=item_id, source="exchange")
    assert "Shared, then private" in str(history(engine, "account:A1")["changes"])
    ex.items[item_id]["private"] = True        # the owner marks it Private
    private, result = _apply(svc, store, item=item_id, source="exchange")
    assert result.outcomes == {private: "unlinked-private"}
    never = ex.put(private=True, first_name="Secret", notes="Private stuff")
    skipped, result = _apply(svc, store, item=never, source="exchange")
    assert result.outcomes == {skipped: "private-skipped"}
    with engine.connect() as conn:
        dump = str([conn.execute(text(f"SELECT * FROM {t}")).all()
                    for t in ("events", "event_changes", "links", "conflicts")])
    assert "Shared, then private" not in dump and "Secret" not in dump and "Private stuff" not in dump
    assert history(engine, "account:A1")["changes"] == []


def test_a_failed_write_names_its_record_and_fields(world):
    svc, crm, ex, store, engine = world

    class Refusing(FakeCrm):
        def update(self, key, changes, expect):
            raise RuntimeError("value too long for type character varying(20)")

    refusing = Refusing()
    svc.crm = refusing
    refusing.put("account:A1", first_name="Ada")
    _apply(svc, store, key="account:A1")
    item_id = next(iter(ex.items))
    ex.update(item_id, {"job_title": "Senior Vice President of Everything"}, ex.items[item_id]["ck"])
    failed, result = _apply(svc, store, item=item_id, source="exchange")
    parts = error_parts(result.errors[failed])
    assert parts == {"error_class": "RuntimeError",
                     "message": "value too long for type character varying(20) "
                                "(while writing job_title of account:A1 to the crm)",
                     "error_record": "account:A1", "error_field": "job_title"}
