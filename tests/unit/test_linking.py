"""The linking service with the in-memory fakes: matching, links by hand and automatic, the
first-sync plan and gate; and the producer loop holding a mailbox the gate refuses."""

from __future__ import annotations

import copy

import pytest

from crmsync.core.reconcile import Policy
from crmsync.service.apply import SyncServices, apply_events
from crmsync.service.linking import LinkError, LinkingService
from tests.unit.fakes import NOW, FakeCrm, FakeExchange, FakeStore, SearchCrm, SearchExchange
from tests.unit.test_producer_loop import (
    Change,
    Clock,
    FakeChangelog,
    FakeFeed,
    FakePublisher,
    make_loop,
)
from tests.unit.test_producer_loop import FakeCrm as KeysCrm
from tests.unit.test_producer_loop import FakeStore as EventStore

MB = FakeExchange.mailbox


@pytest.fixture
def world():
    crm, ex, store = FakeCrm(), FakeExchange(), FakeStore()
    svc = LinkingService(store=store, crm=crm, exchange_for=lambda mb: ex, folder_for=lambda mb: ex,
                         editor=store, clock=lambda: NOW)
    return svc, crm, ex, store


@pytest.fixture
def search_world():
    """``world`` with sides that answer the Link page's bounded look-ups (search, find_similar)."""
    crm, ex, store = SearchCrm(), SearchExchange(), FakeStore()
    svc = LinkingService(store=store, crm=crm, exchange_for=lambda mb: ex, folder_for=lambda mb: ex,
                         editor=store, clock=lambda: NOW)
    return svc, crm, ex, store


def same_people(crm, ex):
    """Ada and Grace on both sides (email in capitals, phone written differently); Linus only in
    the CRM, Margaret only in Outlook."""
    crm.put("account:A-1", first_name="Ada", last_name="Lovelace", company_name="Acme",
            email="ada@acme.example", phone_mobile="+1 415 555 0101")
    crm.put("account:A-2", first_name="Grace", last_name="Hopper", company_name="Navy",
            email="grace@navy.example")
    crm.put("account:A-3", first_name="Linus", last_name="Torvalds", company_name="Kernel")
    ada = ex.put(first_name="Ada", last_name="Lovelace", company_name="Acme Inc.",
                 email="ADA@ACME.EXAMPLE", phone_mobile="(415) 555-0101")
    grace = ex.put(first_name="Grace", last_name="Hopper", email="Grace@Navy.example")
    margaret = ex.put(first_name="Margaret", last_name="Hamilton", company_name="MIT")
    return ada, grace, margaret


def state(crm, ex, store):
    return copy.deepcopy((crm.rows, ex.items, ex.trash, store.links, store.events, store.conflicts))


def sync_services(crm, ex, store):
    return SyncServices(store=store, crm=crm, exchange_for=lambda mb: ex, policy=Policy(),
                        clock=lambda: NOW, new_account_no=crm.new_account_no)


def first_sync(crm, ex, store):
    """What the producers' first sync does: one upsert per CRM record, one per folder item."""
    ids = [store.event(source="crm", op="upsert", crm_key=k) for k in crm.all_keys()]
    ids += [store.event(source="exchange", op="upsert", item_id=i) for i in list(ex.items)]
    result = apply_events(sync_services(crm, ex, store), ids)
    assert not result.errors, result.errors
    return result


# ----------------------------------------------------------------------------- match

def test_match_pairs_the_same_people_despite_email_case_and_phone_format(world):
    svc, crm, ex, _ = world
    ada, grace, _ = same_people(crm, ex)
    report = svc.match(MB)
    pairs = {(c.crm_key, c.exchange_key) for c in report.candidates}
    assert pairs == {("account:A-1", ada), ("account:A-2", grace)}
    ada_pair = next(c for c in report.candidates if c.crm_key == "account:A-1")
    assert {"email", "phone", "name", "company"} <= {e.signal for e in ada_pair.agree}
    assert {(c.crm_key, c.exchange_key) for c in report.decision.links} == pairs


def test_linked_records_are_not_candidates_again(world):
    svc, crm, ex, _ = world
    ada, _, _ = same_people(crm, ex)
    svc.link(MB, "account:A-1", ada)
    assert [c.crm_key for c in svc.match(MB).candidates] == ["account:A-2"]


# ----------------------------------------------------------------------------- links by hand

def test_a_manual_link_makes_the_first_sync_a_merge_not_a_create(world):
    svc, crm, ex, store = world
    ada, grace, margaret = same_people(crm, ex)
    svc.link(MB, "account:A-1", ada)
    link = store.find_link(MB, crm_key="account:A-1")
    assert (link.item_id, link.base) == (ada, None)

    result = first_sync(crm, ex, store)

    # Ada merged (no copy on either side); Grace, not linked, is created twice (the duplicate)
    assert "created-exchange" in result.outcomes.values()
    assert len(ex.items) == 3 + 2            # Linus and Grace created in Outlook
    assert len(crm.rows) == 3 + 2            # Grace and Margaret created in the CRM
    merged = store.find_link(MB, crm_key="account:A-1")
    assert merged.item_id == ada and merged.base is not None
    assert ex.items[ada]["record"].company_name == crm.read("account:A-1").record.company_name


def test_the_merge_of_a_manual_link_stamps_the_contact_so_a_lost_state_database_cannot_duplicate_it(world):
    svc, crm, ex, store = world
    ada, _, _ = same_people(crm, ex)
    svc.link(MB, "account:A-1", ada)
    assert ex.items[ada]["crm_key"] is None
    first_sync(crm, ex, store)
    assert ex.items[ada]["crm_key"] == "account:A-1"
    # The state database is lost: the next first sync finds Ada by her stamp and creates no copy.
    fresh = FakeStore()
    before = len(ex.items)
    first_sync(crm, ex, fresh)
    assert len(ex.items) == before
    assert fresh.find_link(MB, crm_key="account:A-1").item_id == ada


def test_link_refuses_a_record_or_item_already_linked(world):
    svc, crm, ex, _ = world
    ada, grace, _ = same_people(crm, ex)
    svc.link(MB, "account:A-1", ada)
    with pytest.raises(LinkError, match="account:A-1 is already linked"):
        svc.link(MB, "account:A-1", grace)
    with pytest.raises(LinkError, match=f"item {ada} is already linked .* to account:A-1"):
        svc.link(MB, "account:A-2", ada)


def test_link_refuses_a_private_contact_and_names_what_does_not_exist(world):
    svc, crm, ex, store = world
    same_people(crm, ex)
    secret = ex.put(private=True, first_name="Ada", last_name="Lovelace")
    with pytest.raises(LinkError, match="is private"):
        svc.link(MB, "account:A-1", secret)
    with pytest.raises(LinkError, match="account:NOPE: no such record in the CRM"):
        svc.link(MB, "account:NOPE", secret)
    with pytest.raises(LinkError, match="item item-missing: no such contact"):
        svc.link(MB, "account:A-1", "item-missing")
    with pytest.raises(LinkError, match="malformed CRM key"):
        svc.link(MB, "nonsense", secret)
    assert store.links == {}


def test_link_refuses_a_contact_stamped_with_another_record(world):
    svc, crm, ex, _ = world
    same_people(crm, ex)
    stamped = ex.put(crm_key="account:A-3", first_name="Ada", last_name="Lovelace")
    with pytest.raises(LinkError, match="already stamped with account:A-3"):
        svc.link(MB, "account:A-1", stamped)


def test_unlink_by_either_side_removes_a_link_not_synced_yet(world):
    svc, crm, ex, store = world
    ada, grace, _ = same_people(crm, ex)
    svc.link(MB, "account:A-1", ada)
    svc.link(MB, "account:A-2", grace)
    assert svc.unlink(MB, "account:A-1").item_id == ada
    assert svc.unlink(MB, grace).crm_key == "account:A-2"
    assert store.links == {}
    with pytest.raises(LinkError, match="no link"):
        svc.unlink(MB, "account:A-1")


def test_unlink_refuses_a_pair_that_was_synced(world):
    svc, crm, ex, store = world
    ada, _, _ = same_people(crm, ex)
    svc.link(MB, "account:A-1", ada)
    first_sync(crm, ex, store)
    with pytest.raises(LinkError, match="were synced"):
        svc.unlink(MB, "account:A-1")
    assert store.find_link(MB, crm_key="account:A-1") is not None


# ----------------------------------------------------------------------------- automatic

def test_auto_link_links_only_unambiguous_pairs_and_lists_the_rest(world):
    svc, crm, ex, store = world
    ada, grace, _ = same_people(crm, ex)
    # two CRM records of one person (a copy) and one Outlook contact: nobody can tell which
    crm.put("account:B-1", first_name="Barbara", last_name="Liskov", company_name="MIT")
    crm.put("account:B-2", first_name="Barbara", last_name="Liskov", company_name="MIT")
    barbara = ex.put(first_name="Barbara", last_name="Liskov", company_name="MIT")

    dry = svc.auto_link(MB, dry_run=True)
    assert store.links == {}
    result = svc.auto_link(MB)

    assert {(c.crm_key, c.exchange_key) for c in result.linked} == {("account:A-1", ada), ("account:A-2", grace)}
    assert {(c.crm_key, c.exchange_key) for c in dry.linked} == {("account:A-1", ada), ("account:A-2", grace)}
    assert store.find_link(MB, item_id=barbara) is None
    assert {n.key for n in result.needs_person} >= {"account:B-1", "account:B-2"}


# ----------------------------------------------------------------------------- plan

def test_plan_predicts_merges_creates_and_duplicates_and_writes_nothing(world):
    svc, crm, ex, store = world
    ada, grace, margaret = same_people(crm, ex)
    ex.put(private=True, first_name="Secret")
    before = state(crm, ex, store)

    plan = svc.plan(MB)

    assert state(crm, ex, store) == before
    assert plan.counts() == {"merge": 2, "create in Exchange": 1, "create in CRM": 1, "skip (private)": 1}
    by_action = {(r.action, r.crm_key, r.item_id) for r in plan.rows}
    assert ("create in Exchange", "account:A-3", None) in by_action
    assert ("create in CRM", None, margaret) in by_action
    assert plan.held and "crmsync link auto" in plan.held      # nothing linked yet: the gate would hold


def test_plan_with_create_all_warns_about_each_probable_duplicate(world):
    svc, crm, ex, _ = world
    svc.sync_policy_for = lambda mb: Policy(on_new_record="create")   # a new record is always created
    same_people(crm, ex)
    plan = svc.plan(MB, mode="create-all")
    assert plan.counts() == {"create in Exchange": 3, "create in CRM": 3}
    assert len(plan.warnings) == 2 and all("probable duplicate" in w for w in plan.warnings)
    assert plan.held is None


@pytest.mark.parametrize("on_new_record", ["match-then-create", "review"])
def test_with_create_all_the_plan_shows_second_source_links_and_reviews_as_the_sync_does_them(search_world,
                                                                                          on_new_record):
    """[sync] first_sync = "create-all" does not link pairs before the sync, but the sync's
    second-source matching links a strong unambiguous pair (or holds it for review) instead of
    creating it twice: the plan says so."""
    svc, crm, ex, store = search_world
    policy = Policy(on_new_record=on_new_record)
    svc.sync_policy_for = lambda mb: policy
    ada, grace, margaret = same_people(crm, ex)
    plan = svc.plan(MB, mode="create-all")
    by_action = {}
    for row in plan.rows:
        by_action.setdefault(row.action, set()).add(row.crm_key or row.item_id)
    if on_new_record == "match-then-create":
        assert plan.counts() == {"merge": 2, "create in Exchange": 1, "create in CRM": 1}
        assert by_action["merge"] == {"account:A-1", "account:A-2"}
        assert all("second source" in r.note for r in plan.rows if r.action == "merge")
    else:
        assert plan.counts() == {"wait for review": 4, "create in Exchange": 1, "create in CRM": 1}
        assert by_action["wait for review"] == {"account:A-1", "account:A-2", ada, grace}

    services = SyncServices(store=store, crm=crm, exchange_for=lambda mb: ex, policy=policy,
                            clock=lambda: NOW, new_account_no=crm.new_account_no)
    ids = [store.event(source="crm", op="upsert", crm_key=k) for k in crm.all_keys()]
    ids += [store.event(source="exchange", op="upsert", item_id=i) for i in list(ex.items)]
    assert not apply_events(services, ids).errors
    counts = plan.counts()
    assert len(ex.items) == 3 + counts["create in Exchange"]
    assert len(crm.rows) == 3 + counts["create in CRM"]
    synced = {link.crm_key: link.item_id for link in store.links.values() if link.base is not None}
    if on_new_record == "match-then-create":
        assert synced["account:A-1"] == ada and synced["account:A-2"] == grace
    else:
        assert "account:A-1" not in synced and "account:A-2" not in synced and margaret in synced.values()


def test_the_plan_equals_what_the_sync_does_after_link_auto(world):
    svc, crm, ex, store = world
    same_people(crm, ex)
    svc.auto_link(MB)
    plan = svc.plan(MB)
    assert plan.held is None and plan.warnings == ()
    counts = plan.counts()

    first_sync(crm, ex, store)

    assert len(ex.items) == 3 + counts["create in Exchange"]
    assert len(crm.rows) == 3 + counts["create in CRM"]
    assert counts["merge"] == 2


def test_the_plans_field_diffs_are_the_writes_the_sync_makes(world):
    svc, crm, ex, store = world
    ada, grace, _ = same_people(crm, ex)
    svc.auto_link(MB)
    merges = {r.crm_key: r for r in svc.plan(MB).rows if r.action == "merge"}
    assert set(merges) == {"account:A-1", "account:A-2"}
    # Ada's company differs on both sides (newest wins: Outlook's); Grace has none in Outlook
    assert (merges["account:A-1"].to_crm, merges["account:A-1"].to_exchange) == ({"company_name": "Acme Inc."}, {})
    assert (merges["account:A-2"].to_crm, merges["account:A-2"].to_exchange) == ({}, {"company_name": "Navy"})
    items = {"account:A-1": ada, "account:A-2": grace}
    before = {k: (crm.read(k).record.model_dump(), ex.read(items[k]).record.model_dump()) for k in merges}

    first_sync(crm, ex, store)

    for key, row in merges.items():
        crm_after, ex_after = crm.read(key).record.model_dump(), ex.read(items[key]).record.model_dump()
        crm_before, ex_before = before[key]
        assert {f: v for f, v in crm_after.items() if v != crm_before[f]} == row.to_crm, key
        assert {f: v for f, v in ex_after.items() if v != ex_before[f]} == row.to_exchange, key
    assert any(r.to_crm for r in merges.values()) and any(r.to_exchange for r in merges.values())


# ----------------------------------------------------------------------------- the gate

def test_the_gate_holds_a_first_sync_with_probable_duplicates_and_names_the_ways_out(world):
    svc, crm, ex, store = world
    same_people(crm, ex)
    why = svc.first_sync_gate(MB, "refuse-duplicates", "auto")
    assert why is not None
    for hint in ("2 pair(s)", "crmsync plan", "crmsync link suggest", "crmsync link auto", "crmsync link add",
                 'first_sync = "link-certain"'):
        assert hint in why
    assert store.links == {}
    assert svc.first_sync_gate(MB, "create-all", "auto") is None


def test_the_gate_lets_an_empty_folder_or_a_linked_mailbox_through(world):
    svc, crm, ex, _ = world
    crm.put("account:A-1", first_name="Ada", last_name="Lovelace", email="ada@acme.example")
    assert svc.first_sync_gate(MB, "refuse-duplicates", "auto") is None
    ex.put(first_name="Ada", last_name="Lovelace", email="ADA@acme.example")
    assert svc.first_sync_gate(MB, "refuse-duplicates", "auto") is not None
    svc.auto_link(MB)
    assert svc.first_sync_gate(MB, "refuse-duplicates", "auto") is None


def test_link_certain_links_exact_email_pairs_one_to_one_then_lets_the_sync_go(world):
    svc, crm, ex, store = world
    ada, grace, _ = same_people(crm, ex)
    crm.put("account:C-1", first_name="Carl", last_name="Sagan", company_name="Cosmos")
    ex.put(first_name="Carl", last_name="Sagan", company_name="Cosmos")     # name only: not certain
    assert svc.first_sync_gate(MB, "link-certain", "auto") is None
    linked = {link.crm_key: link.item_id for link in store.links.values()}
    assert linked == {"account:A-1": ada, "account:A-2": grace}


def test_a_non_empty_never_synced_folder_waits_for_approval_whatever_the_duplicates_mode(world):
    svc, crm, ex, store = world
    crm.put("account:A-1", first_name="Ada", last_name="Lovelace", email="ada@acme.example")
    ex.put(first_name="Carl", last_name="Sagan", email="carl@cosmos.example")
    for mode in ("refuse-duplicates", "link-certain", "create-all"):
        why = svc.first_sync_gate(MB, mode)
        assert why is not None and "waiting for approval: its folder holds 1 item(s)" in why
        assert f"crmsync sync --mailbox {MB} --approve-plan" in why and 'first_sync = "auto"' in why
        assert svc.waiting(MB) == why                                    # for `crmsync status`
    assert store.links == {}                                             # link-certain linked nothing yet
    assert svc.first_sync_gate(MB, "create-all", "auto") is None
    assert svc.waiting(MB) is None

    plan = svc.approve_first_sync(MB, "refuse-duplicates")
    assert plan.counts() == {"create in CRM": 1, "create in Exchange": 1}
    assert svc.first_sync_gate(MB, "refuse-duplicates") is None and svc.waiting(MB) is None


def test_an_empty_folder_needs_no_approval_and_contacts_added_before_the_first_sync_do_not_hold_it(world):
    svc, crm, ex, store = world
    crm.put("account:A-1", first_name="Ada", last_name="Lovelace", email="ada@acme.example")
    assert svc.first_sync_gate(MB, "create-all") is None
    ex.put(first_name="Carl", last_name="Sagan", email="carl@cosmos.example")
    assert svc.first_sync_gate(MB, "create-all") is None and svc.waiting(MB) is None


def test_approval_is_refused_while_the_plan_is_held_by_probable_duplicates(world):
    svc, crm, ex, store = world
    same_people(crm, ex)
    with pytest.raises(LinkError, match=r"2 pair\(s\)(.|\n)*Nothing was approved"):
        svc.approve_first_sync(MB, "refuse-duplicates")
    assert not svc.approved(MB)
    svc.auto_link(MB)
    svc.approve_first_sync(MB, "refuse-duplicates")
    assert svc.approved(MB) and svc.first_sync_gate(MB, "refuse-duplicates") is None


def test_a_mailbox_with_a_synced_pair_needs_no_approval(world):
    svc, crm, ex, store = world
    same_people(crm, ex)
    svc.auto_link(MB)
    assert svc.first_sync_gate(MB, "refuse-duplicates") is not None     # linked, never synced
    first_sync(crm, ex, store)                                           # e.g. init-folder, or a synced pair
    assert svc.first_sync_gate(MB, "refuse-duplicates") is None


# ----------------------------------------------------------------------------- the producer loop

def test_a_held_mailbox_gets_no_first_sync_and_no_events_while_the_others_sync():
    clock = Clock()
    store, changelog = EventStore(clock), FakeChangelog()
    crm = KeysCrm({"A-1": [], "A-2": []})
    feeds = {"alice@example.com": FakeFeed(), "bob@example.com": FakeFeed()}
    feeds["alice@example.com"].log.append(Change("I1", "ck1", "upsert"))
    held = {"alice@example.com": "mailbox alice@example.com: first sync held"}
    asked: list[str] = []

    def gate(mailbox):
        asked.append(mailbox)
        return held.get(mailbox)

    loop = make_loop(changelog, crm, store, clock, feeds, FakePublisher(), first_sync_gate=gate, gate_recheck_s=0)
    loop.run_once()
    changelog.add("accounts", "A-1", "update")
    loop.run_once()

    alice = [e for e in store.events.values() if e.mailbox == "alice@example.com"]
    bob = [e for e in store.events.values() if e.mailbox == "bob@example.com"]
    assert alice == [] and feeds["alice@example.com"].calls == []
    assert len(bob) == 2 + 1                       # bob's first sync, then the CRM change
    assert "crm-initial:alice@example.com" not in store.cursors

    held.clear()                                   # `crmsync link auto` was run
    loop.run_once()
    assert {e.crm_key for e in store.events.values() if e.mailbox == "alice@example.com"} >= {"account:A-1",
                                                                                             "account:A-2"}
    assert any(e.item_id == "I1" for e in store.events.values())
    asked.clear()
    loop.run_once()
    assert asked == []                             # a mailbox synced once is never asked again


def test_a_failing_gate_holds_the_mailbox_and_is_asked_again():
    clock = Clock()
    store, changelog = EventStore(clock), FakeChangelog()
    crm = KeysCrm({"A-1": []})
    calls = []

    def gate(mailbox):
        calls.append(mailbox)
        raise ConnectionError("EWS endpoint unreachable")

    loop = make_loop(changelog, crm, store, clock, {}, FakePublisher(), first_sync_gate=gate, gate_recheck_s=0)
    loop.run_once()
    loop.run_once()
    assert store.events == {} and len(calls) == 4        # two mailboxes, two cycles




# ----------------------------------------------------------------------------- search and rebuild

def test_search_finds_a_contact_by_name_company_email_or_phone_and_shows_its_link(search_world):
    svc, crm, ex, _ = search_world
    ada, grace, margaret = same_people(crm, ex)
    ex.put(private=True, first_name="Ada", last_name="Secret")
    svc.link(MB, "account:A-1", ada)

    def found(text):
        return {(h.item.item_id, h.matched, h.linked_to) for h in svc.search(MB, text)}

    assert found("ada") == {(ada, ("name", "email"), "account:A-1")}  # the private Ada is never shown
    assert found("lovelace ADA") == {(ada, ("name",), "account:A-1")}
    assert found("hamil marg") == {(margaret, ("name",), None)}
    assert found("mit") == {(margaret, ("company",), None)}
    assert found("grace@navy") == {(grace, ("email",), None)}
    assert found("+1 415 555 0101") == {(ada, ("phone",), "account:A-1")}
    assert found("4155550101") == {(ada, ("phone",), "account:A-1")}
    assert found("nobody") == set()
    with pytest.raises(LinkError, match="give a name"):
        svc.search(MB, "  ")


def test_rebuild_links_stamped_and_exact_email_pairs_and_reports_the_rest(world):
    svc, crm, ex, store = world
    ada, grace, margaret = same_people(crm, ex)
    crm.put("account:A-4", first_name="Tim", last_name="Berners-Lee", company_name="CERN")
    tim = ex.put(crm_key="account:A-4", first_name="Timothy", last_name="Berners Lee")   # stamped, names differ
    ghost = ex.put(crm_key="account:A-99", first_name="Gone", last_name="Away")            # stamp of no record
    crm.put("account:A-5", first_name="Hedy", last_name="Lamarr", email="hedy@films.example")
    crm.put("account:A-6", first_name="Hedy", last_name="Lamarr", email="h.lamarr@films.example")
    hedy = ex.put(crm_key="account:A-6", first_name="Hedy", last_name="Lamarr",
                  email="hedy@films.example")          # stamped A-6, e-mail of A-5: the stamp wins
    crm.put("account:A-7", first_name="Alan", last_name="Kay")
    kay1 = ex.put(crm_key="account:A-7", first_name="Alan", last_name="Kay")        # a copied contact:
    kay2 = ex.put(crm_key="account:A-7", first_name="Alan", last_name="Kay")        # two stamps of one key

    result = svc.rebuild(MB)

    assert {(c.crm_key, c.exchange_key) for c in result.linked} == {
        ("account:A-1", ada), ("account:A-2", grace), ("account:A-4", tim), ("account:A-6", hedy)}
    assert {(link.crm_key, link.item_id, link.base) for link in store.links.values()} == {
        ("account:A-1", ada, None), ("account:A-2", grace, None), ("account:A-4", tim, None),
        ("account:A-6", hedy, None)}
    left = {(k, i): why for k, i, why in result.left}
    assert set(left) == {("", margaret), ("", ghost), ("account:A-3", ""), ("account:A-5", hedy),
                         ("account:A-7", kay1), ("account:A-7", kay2)}
    assert "ambiguous" in left[("account:A-7", kay1)] and "ambiguous" in left[("account:A-7", kay2)]
    assert left[("account:A-5", hedy)] == f"its e-mail match, item {hedy}, was linked to account:A-6 by its stamp"
    assert "stamped account:A-99" in left[("", ghost)]
    assert "no stamp and no exact e-mail match" in left[("", margaret)]
    # a second rebuild finds everything linked already and links nothing twice
    again = svc.rebuild(MB)
    assert again.linked == () and len(again.left) == 6


def test_suggestions_for_a_searched_crm_record_or_outlook_contact_skip_linked_and_private_ones(search_world):
    svc, crm, ex, _ = search_world
    ada, grace, margaret = same_people(crm, ex)
    ex.put(private=True, first_name="Grace", last_name="Hopper", email="grace@navy.example")

    def for_records(text):
        return [(k, [c.exchange_key for c, _ in cands]) for k, _, cands in svc.suggest_for(MB, text)]

    def for_contacts(text):
        return [(i, [c.crm_key for c, _ in cands]) for i, _, cands in svc.suggest_for_contacts(MB, text)]

    assert for_records("grace") == [("account:A-2", [grace])]           # the private Grace is no candidate
    assert for_records("torvalds") == [("account:A-3", [])]             # a record without a counterpart
    assert for_contacts("grace") == [(grace, ["account:A-2"])]          # the private Grace is not listed
    assert for_contacts("mit") == [(margaret, [])]
    svc.link(MB, "account:A-2", grace)
    assert for_records("grace") == [] and for_contacts("grace") == []   # linked: nothing to suggest
    with pytest.raises(LinkError, match="give a name"):
        svc.suggest_for(MB, " ")
    with pytest.raises(LinkError, match="give a name"):
        svc.suggest_for_contacts(MB, "")


def test_searches_and_suggestions_never_read_a_whole_side(search_world):
    """The Link page's look-ups are bounded (issue 12): the folder is never listed nor read in
    batches, the CRM's keys never listed; the sides' own searches answer, the matcher decides
    (a coarse hit of the side's search that ``search_fields`` refuses is not shown)."""
    svc, crm, ex, _ = search_world
    ada, grace, margaret = same_people(crm, ex)
    crm.put("account:A-9", first_name="Adam", last_name="Adalbert", company_name="Nadal")   # "ada" inside words
    ex.put(first_name="Nadalie", last_name="Zadar")

    def refuse(*_args, **_kw):
        raise AssertionError("a whole side was read")

    ex.changes = refuse
    ex.read_many = refuse
    crm.all_keys = refuse
    assert [h.item.item_id for h in svc.search(MB, "ada")] == [ada]
    assert [(k, [c.exchange_key for c, _ in cands]) for k, _, cands in svc.suggest_for(MB, "grace")] == [
        ("account:A-2", [grace])]
    assert [(i, [c.crm_key for c, _ in cands]) for i, _, cands in svc.suggest_for_contacts(MB, "lovelace")] == [
        (ada, ["account:A-1"])]
    assert crm.searches == 1 and ex.searches == 2
    hits = svc.search(MB, "lovelace")     # the console: one search of the folder serves the suggestions too
    assert [(i, [c.crm_key for c, _ in cands]) for i, _, cands in svc.suggest_for_contacts(MB, "lovelace", hits=hits)] == [
        (ada, ["account:A-1"])]
    assert ex.searches == 3
