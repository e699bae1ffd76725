"""Sync policy (issue 9): mailbox directions and field rules are data in the pure core, and the
apply service honours them. Table cases, Hypothesis laws, then stories with the in-memory sides."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crmsync.config import load_settings
from crmsync.core.reconcile import Policy, plan_create_crm, plan_create_exchange, reconcile
from crmsync.errors import ConfigError
from crmsync.service.apply import SyncServices, apply_event
from schemas.canonical import ACCOUNT_FIELDS, CanonicalContact
from tests.unit.fakes import FakeCrm, FakeExchange, FakeStore
from tests.unit.test_reconcile_laws import CONFLICT_POLICIES, TIMES, triples

R = CanonicalContact
F = ("first_name", "city", "notes")
LAWS = settings(deadline=None)


# ------------------------------------------------------------------ the pure core: a table
CASES = [
    # (policy, base, crm, exchange, to_crm, to_exchange, conflict reasons)
    ("crm-to-exchange: a CRM edit goes out",
     Policy(direction="crm-to-exchange"), R(city="Oslo"), R(city="Bergen"), R(city="Oslo"),
     {}, {"city": "Bergen"}, []),
    ("crm-to-exchange: an Outlook edit never reaches the CRM; the mirror is restored",
     Policy(direction="crm-to-exchange"), R(city="Oslo"), R(city="Oslo"), R(city="Bodø"),
     {}, {"city": "Oslo"}, ["one-way: crm-to-exchange"]),
    ("crm-to-exchange: both edited, the CRM's value wins whatever the conflict policy",
     Policy("exchange-wins", direction="crm-to-exchange"), R(city="Oslo"), R(city="Bergen"), R(city="Bodø"),
     {}, {"city": "Bergen"}, ["one-way: crm-to-exchange"]),
    ("exchange-to-crm: an Outlook edit goes in",
     Policy(direction="exchange-to-crm"), R(city="Oslo"), R(city="Oslo"), R(city="Bodø"),
     {"city": "Bodø"}, {}, []),
    ("exchange-to-crm: a CRM edit never reaches Outlook",
     Policy(direction="exchange-to-crm"), R(city="Oslo"), R(city="Bergen"), R(city="Oslo"),
     {"city": "Oslo"}, {}, ["one-way: exchange-to-crm"]),
    ("exchange-to-crm: a field cleared in Outlook is cleared in the CRM",
     Policy(direction="exchange-to-crm"), R(city="Oslo"), R(city="Oslo"), R(),
     {"city": None}, {}, []),
    ("field rule: notes crm-to-exchange in a two-way mailbox, an Outlook notes edit stays out",
     Policy(field_rules={"notes": "crm-to-exchange"}), R(notes="n", city="Oslo"), R(notes="n", city="Oslo"),
     R(notes="mine", city="Bodø"), {"city": "Bodø"}, {"notes": "n"}, ["one-way: crm-to-exchange"]),
    ("field rule: ignore, neither side is written and the base keeps the last synced value",
     Policy(field_rules={"notes": "ignore"}), R(notes="n"), R(notes="crm"), R(notes="ex"),
     {}, {}, []),
    ("field rule against the mailbox: opposite one-way directions leave nothing to cross",
     Policy(direction="crm-to-exchange", field_rules={"notes": "exchange-to-crm"}), R(notes="n"), R(notes="crm"),
     R(notes="ex"), {}, {}, []),
    ("first pairing, crm-to-exchange: Outlook mirrors the CRM, also where the CRM is empty",
     Policy(direction="crm-to-exchange"), None, R(first_name="Ann"), R(first_name="Ann", city="Bodø"),
     {}, {"city": None}, ["one-way: crm-to-exchange"]),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_policy_table(case):
    _, policy, base, crm, exchange, to_crm, to_exchange, reasons = case
    plan = reconcile(base, crm, exchange, policy, fields=F)
    assert dict(plan.to_crm) == to_crm
    assert dict(plan.to_exchange) == to_exchange
    assert [c.reason for c in plan.conflicts] == reasons


def test_ignored_field_keeps_its_base_value():
    plan = reconcile(R(notes="n"), R(notes="crm"), R(notes="ex"), Policy(field_rules={"notes": "ignore"}), fields=F)
    assert plan.base.notes == "n"


def test_creates_leave_out_what_the_target_may_not_take():
    crm = R(first_name="Ann", notes="secret plan")
    rules = Policy(field_rules={"notes": "exchange-to-crm"})
    assert dict(plan_create_exchange(crm, F, rules).to_exchange) == {"first_name": "Ann"}
    outlook = R(first_name="Ann", notes="from outlook", city="Oslo")
    plan = plan_create_crm(outlook, F, Policy(field_rules={"notes": "crm-to-exchange", "city": "ignore"}))
    assert dict(plan.to_crm) == {"first_name": "Ann"}
    assert plan.base.city is None and plan.base.notes == "from outlook"


def test_unknown_directions_are_refused():
    with pytest.raises(ValueError, match="direction 'sideways'"):
        Policy(direction="sideways")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="notes='both'"):
        Policy(field_rules={"notes": "both"})  # type: ignore[dict-item]


# ------------------------------------------------------------------ the pure core: laws
ONE_WAY = st.builds(Policy, conflict=CONFLICT_POLICIES, direction=st.sampled_from(["crm-to-exchange", "exchange-to-crm"]),
                    field_rules=st.dictionaries(st.sampled_from(ACCOUNT_FIELDS),
                                                st.sampled_from(["two-way", "crm-to-exchange", "exchange-to-crm",
                                                                 "ignore"]), max_size=4))


@LAWS
@given(triple=triples(), policy=ONE_WAY, times=st.tuples(TIMES, TIMES))
def test_a_one_way_mailbox_never_writes_its_read_only_side(triple, policy, times):
    base, crm, exchange = triple
    plan = reconcile(base, crm, exchange, policy, fields=ACCOUNT_FIELDS,
                     crm_modified_at=times[0], exchange_modified_at=times[1])
    read_only = plan.to_crm if policy.direction == "crm-to-exchange" else plan.to_exchange
    assert dict(read_only) == {}
    assert not set(plan.to_crm) & {f for f in ACCOUNT_FIELDS if policy.direction_of(f) == "ignore"}
    assert not set(plan.to_exchange) & {f for f in ACCOUNT_FIELDS if policy.direction_of(f) == "ignore"}
    created = plan_create_exchange(crm, ACCOUNT_FIELDS, policy) if policy.direction == "crm-to-exchange" \
        else plan_create_crm(exchange, ACCOUNT_FIELDS, policy)
    assert dict(created.to_crm if policy.direction == "crm-to-exchange" else created.to_exchange) == {}


@LAWS
@given(triple=triples(), policy=ONE_WAY, times=st.tuples(TIMES, TIMES))
def test_reconciling_twice_under_a_policy_changes_nothing(triple, policy, times):
    base, crm, exchange = triple
    plan = reconcile(base, crm, exchange, policy, fields=ACCOUNT_FIELDS,
                     crm_modified_at=times[0], exchange_modified_at=times[1])
    crm2 = crm.model_copy(update=dict(plan.to_crm))
    exchange2 = exchange.model_copy(update=dict(plan.to_exchange))
    again = reconcile(plan.base, crm2, exchange2, policy, fields=ACCOUNT_FIELDS,
                      crm_modified_at=times[0], exchange_modified_at=times[1])
    assert again.is_noop and again.conflicts == ()


@LAWS
@given(triple=triples(), policy=ONE_WAY)
def test_after_a_one_way_merge_switching_to_two_way_replays_nothing(triple, policy):
    """The base advances to what both sides hold, so the later two-way merge finds no edit."""
    base, crm, exchange = triple
    plan = reconcile(base, crm, exchange, policy, fields=ACCOUNT_FIELDS)
    crm2 = crm.model_copy(update=dict(plan.to_crm))
    exchange2 = exchange.model_copy(update=dict(plan.to_exchange))
    synced = [f for f in ACCOUNT_FIELDS if policy.direction_of(f) != "ignore"]
    two_way = Policy(policy.conflict, field_rules={f: "ignore" for f in ACCOUNT_FIELDS if f not in synced})
    assert reconcile(plan.base, crm2, exchange2, two_way, fields=ACCOUNT_FIELDS).is_noop


# ------------------------------------------------------------------ the apply service
@pytest.fixture
def world():
    crm, ex, store = FakeCrm(), FakeExchange(), FakeStore()
    direction = {"value": "two-way"}

    def policy_for(mailbox):
        return Policy(direction=direction["value"], field_rules={"notes": "crm-to-exchange"})
    svc = SyncServices(store=store, crm=crm, exchange_for=lambda mb: ex, policy=Policy(), policy_for=policy_for,
                       new_account_no=crm.new_account_no)
    return svc, crm, ex, store, direction


def crm_event(store, key):
    return store.event(source="crm", op="upsert", crm_key=key)


def ex_event(store, item_id, op="upsert"):
    return store.event(source="exchange", op=op, item_id=item_id)


def test_crm_to_exchange_mailbox_pushes_but_never_writes_the_crm(world):
    svc, crm, ex, store, direction = world
    direction["value"] = "crm-to-exchange"
    crm.put("account:A1", first_name="Ada", city="Oslo")
    assert apply_event(svc, crm_event(store, "account:A1")) == "created-exchange"
    item = next(iter(ex.items))
    ex.update(item, {"city": "Bodø"}, ex.items[item]["ck"])             # edited in Outlook
    new = ex.put(first_name="Only in Outlook")                           # created in Outlook
    crm_writes = crm.writes
    assert apply_event(svc, ex_event(store, item)) == "updated"
    assert apply_event(svc, ex_event(store, new)) == "skipped-one-way"
    del ex.items[item]                                                   # deleted in Outlook
    assert apply_event(svc, ex_event(store, item, "delete")) == "unlinked"
    assert crm.writes == crm_writes
    assert crm.read("account:A1").record.city == "Oslo" and crm.read("account:A1").active
    assert len(crm.rows) == 1


def test_exchange_to_crm_mailbox_imports_but_never_writes_outlook(world):
    svc, crm, ex, store, direction = world
    direction["value"] = "exchange-to-crm"
    item = ex.put(first_name="Eve", city="Oslo")
    assert apply_event(svc, ex_event(store, item)) == "created-crm"
    key = store.find_link(FakeExchange.mailbox, item_id=item).crm_key
    writes = ex.writes                                                   # (the stamp, before the CRM insert)
    crm.put("account:NEW", first_name="Only in the CRM")
    assert apply_event(svc, crm_event(store, "account:NEW")) == "skipped-one-way"
    crm.update(key, {"city": "Bergen"}, crm.read(key).version)
    assert apply_event(svc, crm_event(store, key)) == "updated"          # the CRM mirrors Outlook again
    assert crm.read(key).record.city == "Oslo"
    crm.deactivate(key, crm.read(key).version)
    assert apply_event(svc, crm_event(store, key)) == "unlinked"
    assert ex.writes == writes and len(ex.items) == 1
    assert ex.items[item]["record"].city == "Oslo"


def test_switching_to_two_way_later_replays_no_one_way_edit(world):
    svc, crm, ex, store, direction = world
    direction["value"] = "crm-to-exchange"
    crm.put("account:A1", first_name="Ada", city="Oslo")
    apply_event(svc, crm_event(store, "account:A1"))
    item = next(iter(ex.items))
    ex.update(item, {"city": "Bodø"}, ex.items[item]["ck"])
    apply_event(svc, ex_event(store, item))                              # consumed, the link advanced
    direction["value"] = "two-way"
    assert apply_event(svc, crm_event(store, "account:A1")) == "noop"
    assert crm.read("account:A1").record.city == "Oslo"


def test_field_rule_keeps_outlook_notes_out_of_the_crm_and_the_rest_syncs(world):
    svc, crm, ex, store, _ = world
    crm.put("account:A1", first_name="Ada", notes="CRM notes")
    apply_event(svc, crm_event(store, "account:A1"))
    item = next(iter(ex.items))
    ex.update(item, {"notes": "my private scribbles", "first_name": "Ada L."}, ex.items[item]["ck"])
    assert apply_event(svc, ex_event(store, item)) == "updated"
    assert crm.read("account:A1").record.notes == "CRM notes"
    assert crm.read("account:A1").record.first_name == "Ada L."
    assert ex.items[item]["record"].notes == "CRM notes"


# ------------------------------------------------------------------ configuration
def write(tmp_path, text):
    path = tmp_path / "c.toml"
    path.write_text(text)
    return str(path)


def test_mailbox_policy_takes_its_defaults_from_sync(tmp_path):
    s = load_settings(write(tmp_path, """
[sync]
direction = "crm-to-exchange"
fields = {notes = "crm-to-exchange"}
[[mailbox]]
address = "a@example.com"
[[mailbox]]
address = "b@example.com"
direction = "two-way"
enabled = false
create_folder = false
fields = {city = "ignore"}
"""), env={})
    a, b = s.effective("a@example.com"), s.effective("b@example.com")
    assert (a.direction, a.enabled, a.create_folder, a.fields) == ("crm-to-exchange", True, True, {"notes": "crm-to-exchange"})
    assert (b.direction, b.enabled, b.create_folder) == ("two-way", False, False)
    assert b.fields == {"notes": "crm-to-exchange", "city": "ignore"}
    assert [m.address for m in s.enabled_mailboxes()] == ["a@example.com"]


@pytest.mark.parametrize("text, expect", [
    ('[[mailbox]]\naddress = "a@example.com"\ndirection = "one-way"\n', "mailbox[0].direction: must be one of two-way"),
    ('[[mailbox]]\naddress = "a@example.com"\nfields = {nots = "ignore"}\n', "unknown field(s) nots"),
    ('[sync]\nfields = {notes = "sometimes"}\n', "sync.fields.notes: must be one of two-way"),
])
def test_bad_policy_config_names_the_key(tmp_path, text, expect):
    with pytest.raises(ConfigError, match=None) as info:
        load_settings(write(tmp_path, text), env={})
    assert expect in str(info.value)


def test_create_folder_false_reaches_the_folder_opener(tmp_path, monkeypatch):
    from crmsync.adapters.exchange.ews import connect as ews
    from crmsync.bootstrap import Container

    seen: dict[str, bool] = {}

    def open_folder(account, path, create=True, **_):
        seen[path] = create
        raise ConfigError(f"mailbox a@example.com: folder {path!r} does not exist under Contacts")
    monkeypatch.setattr(ews, "connect", lambda exchange, address: object())
    monkeypatch.setattr(ews, "open_folder", open_folder)
    s = load_settings(write(tmp_path, '[[mailbox]]\naddress = "a@example.com"\nfolder = "Shared/CRM"\n'
                                      'create_folder = false\n[[mailbox]]\naddress = "b@example.com"\n'), env={})
    for address in ("a@example.com", "b@example.com"):
        with pytest.raises(ConfigError, match="does not exist"):
            Container(s).exchange_account(address)
    assert seen == {"Shared/CRM": False, "CRM Accounts": True}


# ------------------------------------------------------------------ the push filter
def test_push_filter_is_data_checked_against_the_mapping():
    policy = Policy(push_filter=(("country", {"NO", "SE"}),))
    assert policy.pushes(R(country=" NO "))
    assert not policy.pushes(R(country="DK")) and not policy.pushes(R())
    with pytest.raises(ValueError, match="unknown canonical field"):
        Policy(push_filter=(("account_type", {"Customer"}),))


def test_push_filter_decides_which_accounts_and_their_contacts_get_an_outlook_contact():
    crm, ex, store = FakeCrm(), FakeExchange(), FakeStore()
    svc = SyncServices(store=store, crm=crm, exchange_for=lambda mb: ex, policy=Policy(),
                       policy_for=lambda mb: Policy(push_filter=(("country", {"NO"}),)), new_account_no=crm.new_account_no)
    crm.put("account:N1", first_name="Nora", country="NO")
    crm.put("account:D1", first_name="Dag", country="DK")
    crm.rows["contact:7"] = {**crm.rows["account:D1"], "record": R(first_name="Colleague")}
    real_read = crm.read
    crm.read = lambda key: (replace(real_read(key), account_key="account:D1") if key == "contact:7" else real_read(key))
    crm.read_many = lambda keys: {k: r for k in keys if (r := crm.read(k)) is not None}
    outcomes = [apply_event(svc, crm_event(store, k)) for k in ("account:N1", "account:D1", "contact:7")]
    assert outcomes == ["created-exchange", "skipped-filter", "skipped-filter"]
    assert [it["crm_key"] for it in ex.items.values()] == ["account:N1"]


def test_push_filter_config_names_an_unknown_column(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_settings(write(tmp_path, '[sync]\npush_filter = [{column = "account_type", in = ["Customer"]}]\n'), env={})
    assert "sync.push_filter[0].column: unknown CRM accounts column 'account_type'" in str(info.value)
    s = load_settings(write(tmp_path, '[[mailbox]]\naddress = "a@example.com"\n'
                                      'push_filter = [{column = "country", in = ["NO"]}]\n'), env={})
    assert [(r.column, r.in_) for r in s.effective("a@example.com").push_filter] == [("country", ("NO",))]


def test_categories_take_the_sync_default_per_mailbox(tmp_path):
    s = load_settings(write(tmp_path, '[sync]\ncategories = ["CRM"]\n[[mailbox]]\naddress = "a@example.com"\n'
                                      '[[mailbox]]\naddress = "b@example.com"\ncategories = ["CRM", "Sales"]\n'), env={})
    assert s.effective("a@example.com").categories == ("CRM",)
    assert s.effective("b@example.com").categories == ("CRM", "Sales")


def test_a_disabled_mailbox_gets_no_producer_and_no_fan_out(tmp_path):
    from producers.factory import build_loop

    s = load_settings(write(tmp_path, '[[mailbox]]\naddress = "a@example.com"\n'
                                      '[[mailbox]]\naddress = "b@example.com"\nenabled = false\n'), env={})
    feeds = {"a@example.com": FakeExchange(), "b@example.com": FakeExchange()}
    loop = build_loop(s, changelog=object(), crm=object(), store=FakeStore(), feeds=feeds,
                      publisher=object(), doorbell=object())
    assert loop.crm_producer.mailboxes == ["a@example.com"]
    assert [p.mailbox for p in loop.exchange_producers] == ["a@example.com"]


# ------------------------------------------------------------------ only_active

def test_only_active_is_true_by_default_and_per_mailbox(tmp_path):
    s = load_settings(write(tmp_path, '[[mailbox]]\naddress = "a@example.com"\n'
                                      '[[mailbox]]\naddress = "b@example.com"\nonly_active = false\n'), env={})
    assert [s.effective(m).only_active for m in ("a@example.com", "b@example.com")] == [True, False]


@pytest.mark.parametrize("only_active, outcome, pushed", [(True, "gone", 0), (False, "created-exchange", 1)])
def test_an_inactive_account_is_pushed_only_when_only_active_is_false(only_active, outcome, pushed):
    crm, ex, store = FakeCrm(), FakeExchange(), FakeStore()
    svc = SyncServices(store=store, crm=crm, exchange_for=lambda mb: ex, policy=Policy(),
                       policy_for=lambda mb: Policy(only_active=only_active))
    crm.put("account:OLD", active=False, first_name="Dormant")
    assert apply_event(svc, store.event(source="crm", op="upsert", crm_key="account:OLD")) == outcome
    assert len(ex.items) == pushed
    assert crm.all_keys(inactive=not only_active) == (["account:OLD"] if not only_active else [])


def test_with_only_active_false_deactivating_keeps_the_contact_and_a_deleted_row_still_deletes_it():
    crm, ex, store = FakeCrm(), FakeExchange(), FakeStore()
    svc = SyncServices(store=store, crm=crm, exchange_for=lambda mb: ex, policy=Policy(),
                       policy_for=lambda mb: Policy(only_active=False))
    for key in ("account:A", "account:B"):
        crm.put(key, first_name=key)
        assert apply_event(svc, store.event(source="crm", op="upsert", crm_key=key)) == "created-exchange"
    crm.deactivate("account:A", crm.read("account:A").version)
    crm.update("account:A", {"city": "Oslo"}, crm.read("account:A").version)
    assert apply_event(svc, store.event(source="crm", op="upsert", crm_key="account:A")) == "updated"
    assert len(ex.items) == 2 and ex.trash == {}                              # kept, and still synced
    del crm.rows["account:B"]                                                 # the row itself deleted
    assert apply_event(svc, store.event(source="crm", op="upsert", crm_key="account:B")) == "deleted-exchange"
    assert len(ex.items) == 1 and len(ex.trash) == 1
    item_id = store.find_link(FakeExchange.mailbox, crm_key="account:A").item_id   # deleted in Outlook
    ex.delete(item_id, ex.items[item_id]["ck"])
    assert apply_event(svc, store.event(source="exchange", op="delete", item_id=item_id)) == "deactivated-crm"
    crm.update("account:A", {"city": "Bergen"}, crm.read("account:A").version)
    assert apply_event(svc, store.event(source="crm", op="upsert", crm_key="account:A")) == "noop"  # not re-created
    assert ex.items == {}


def test_the_first_sync_lists_inactive_accounts_for_a_mailbox_with_only_active_false():
    from types import SimpleNamespace

    from producers.crm_feed import CrmProducer

    crm, store = FakeCrm(), FakeStore()
    crm.put("account:ON", first_name="On")
    crm.put("account:OFF", active=False, first_name="Off")
    nothing_pending = SimpleNamespace(pending_ids=lambda limit: [])
    producer = CrmProducer(nothing_pending, crm, store, ["a@example.com", "b@example.com"],
                           with_inactive=["b@example.com"])
    keys = {mb: sorted(store.events[i]["crm_key"] for ids in producer.initial_batches(mb) for i in ids)
            for mb in ("a@example.com", "b@example.com")}
    assert keys == {"a@example.com": ["account:ON"], "b@example.com": ["account:OFF", "account:ON"]}


def test_hard_delete_is_refused_for_a_graph_mailbox(tmp_path):
    with pytest.raises(ConfigError, match="g@example.com: on_crm_delete = 'hard-delete' needs api = 'ews'"):
        load_settings(write(tmp_path, '[exchange]\ntenant_id = "t"\nclient_id = "c"\nclient_secret_env = "S"\n'
                                      '[sync]\non_crm_delete = "hard-delete"\n'
                                      '[[mailbox]]\naddress = "g@example.com"\napi = "graph"\n'), env={"S": "x"})
