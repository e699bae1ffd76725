"""A second source of accounts (issue 8): a record new on one side that matches an unlinked
record on the other side is linked, not created again; ambiguous ones, or every one under
``on_new_record = "review"``, wait in the review queue until a person accepts or rejects.

The pure decision table, then the apply path with the in-memory fakes (the fakes' look-ups
by e-mail and last name stand in for the adapters' queries)."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from crmsync.core.matching import Candidate
from crmsync.core.reconcile import Policy
from crmsync.core.second_source import REVIEW_FLOOR, decide
from crmsync.service import review
from crmsync.service.apply import SyncServices, apply_events
from tests.unit.fakes import NOW, FakeCrm, FakeExchange, FakeReviewQueue, FakeStore

MB = FakeExchange.mailbox


def cand(crm: str, ex: str, score: float, certain: bool = False) -> Candidate:
    return Candidate(crm, ex, score, certain, (), ())


# ----------------------------------------------------------------------------- the decision table

@pytest.mark.parametrize(("mode", "scores", "action"), [
    ("match-then-create", [], "create"),
    ("match-then-create", [0.3], "create"),            # below the floor: nobody's business
    ("match-then-create", [0.7], "create"),            # a weak match is not linked
    ("match-then-create", [0.99], "link"),
    ("match-then-create", [0.99, 0.6], "link"),        # a clear best
    ("match-then-create", [0.99, 0.97], "review"),     # two close: ambiguous
    ("create", [0.99], "create"),
    ("review", [0.99], "review"),
    ("review", [0.7], "review"),
    ("review", [0.3], "create"),
])
def test_decision_table(mode, scores, action):
    cands = [cand("account:A-1", f"item-{i}", s) for i, s in enumerate(scores)]
    got = decide("crm", cands, mode)
    assert got.action == action, got
    assert (got.chosen is not None) == (action == "link")
    if action == "link":
        assert got.chosen == max(cands, key=lambda c: c.score)
    if action == "review":
        assert got.reason


def test_a_stamp_beats_a_close_score():
    got = decide("crm", [cand("account:A-1", "item-2", 0.9999), cand("account:A-1", "item-1", 1.0, certain=True)])
    assert got.action == "link" and got.chosen is not None and got.chosen.exchange_key == "item-1"


def test_an_unknown_mode_is_refused_with_its_name():
    with pytest.raises(ValueError, match="'sometimes'"):
        decide("crm", [], "sometimes")  # type: ignore[arg-type]


@given(st.lists(st.floats(min_value=0, max_value=0.9999), max_size=6), st.randoms())
def test_the_decision_does_not_depend_on_order_and_never_links_an_ambiguous_record(scores, rnd):
    cands = [cand("account:A-1", f"item-{i}", s) for i, s in enumerate(scores)]
    shuffled = list(cands)
    rnd.shuffle(shuffled)
    got = decide("crm", cands)
    assert decide("crm", shuffled) == got
    assert decide("crm", cands, "create").action == "create"
    if got.action == "link":
        ranked = sorted((c.score for c in cands), reverse=True)
        assert ranked[0] >= 0.85 and (len(ranked) == 1 or ranked[1] < ranked[0] - 0.05)
    assert all(c.score >= REVIEW_FLOOR for c in got.candidates)


# ----------------------------------------------------------------------------- the apply path

class SearchCrm(FakeCrm):
    """The fake CRM with the adapter's look-up by e-mail or last name (case-insensitive)."""

    def find_similar(self, emails, last_names, limit=200):
        mails = {e.lower() for e in emails}
        names = {n.lower() for n in last_names}
        out = {}
        for key in self.rows:
            rec = self.read(key)
            if rec is None or not rec.active or not key.startswith("account:"):
                continue
            r = rec.record
            if {(r.email or "").lower(), (r.email2 or "").lower()} & mails or (r.last_name or "").lower() in names:
                out[key] = rec
        return out


class SearchExchange(FakeExchange):
    def find_similar(self, emails, surnames, limit=200):
        mails = {e.lower() for e in emails}
        names = {n.lower() for n in surnames}
        out = []
        for item_id in sorted(self.items):
            r = self.items[item_id]["record"]
            if {(r.email or "").lower(), (r.email2 or "").lower()} & mails or (r.last_name or "").lower() in names:
                out.append(self.read(item_id))
        return out


ADA_CRM = {"first_name": "Ada", "last_name": "Lovelace", "company_name": "Acme", "email": "ada@acme.example",
           "phone_mobile": "+1 415 555 0101"}
ADA_OUTLOOK = {"first_name": "Ada", "last_name": "Lovelace", "company_name": "Acme Inc.",
               "email": "ADA@ACME.EXAMPLE", "phone_mobile": "(415) 555-0101"}


@pytest.fixture
def world():
    crm, ex, store, queue = SearchCrm(), SearchExchange(), FakeStore(), FakeReviewQueue()

    def services(mode="match-then-create"):
        return SyncServices(store=store, crm=crm, exchange_for=lambda mb: ex, policy=Policy(on_new_record=mode),
                            clock=lambda: NOW, new_account_no=crm.new_account_no, review=queue)

    return services, crm, ex, store, queue


def applied(svc, ids):
    result = apply_events(svc, ids)
    assert not result.errors, result.errors
    return result.outcomes


def test_an_account_imported_into_the_crm_is_linked_to_the_matching_outlook_contact(world):
    services, crm, ex, store, _ = world
    item = ex.put(**ADA_OUTLOOK)
    crm.put("account:ACC-9", **ADA_CRM)      # by the accounting package, later
    event = store.event(source="crm", op="upsert", crm_key="account:ACC-9")
    assert applied(services(), [event]) == {event: "linked-new"}
    assert list(ex.items) == [item] and ex.items[item]["crm_key"] == "account:ACC-9"   # stamped, no copy
    link = store.find_link(MB, crm_key="account:ACC-9")
    assert link.item_id == item and link.base is not None
    # the replayed event and a later one change nothing, and the contact's own event finds the link
    again = store.event(source="crm", op="upsert", crm_key="account:ACC-9")
    own = store.event(source="exchange", op="upsert", item_id=item)
    assert applied(services(), [event, again, own]) == {event: "done-already", again: "noop", own: "noop"}
    assert len(ex.items) == 1 and len(crm.rows) == 1


def test_a_contact_new_in_outlook_is_linked_to_the_matching_unlinked_crm_account(world):
    services, crm, ex, store, _ = world
    crm.put("account:ACC-9", **ADA_CRM)
    item = ex.put(**ADA_OUTLOOK)
    event = store.event(source="exchange", op="upsert", item_id=item)
    assert applied(services(), [event])[event] in ("updated", "noop")
    assert list(crm.rows) == ["account:ACC-9"]                  # no second account
    assert store.find_link(MB, item_id=item).crm_key == "account:ACC-9"
    assert ex.items[item]["crm_key"] == "account:ACC-9"


def test_both_new_records_in_one_batch_become_one_pair(world):
    services, crm, ex, store, _ = world
    crm.put("account:ACC-9", **ADA_CRM)
    item = ex.put(**ADA_OUTLOOK)
    ids = [store.event(source="exchange", op="upsert", item_id=item),
           store.event(source="crm", op="upsert", crm_key="account:ACC-9")]
    applied(services(), ids)
    assert len(ex.items) == 1 and len(crm.rows) == 1
    assert store.find_link(MB, crm_key="account:ACC-9").item_id == item


def test_create_mode_keeps_the_old_behaviour(world):
    services, crm, ex, store, _ = world
    ex.put(**ADA_OUTLOOK)
    crm.put("account:ACC-9", **ADA_CRM)
    event = store.event(source="crm", op="upsert", crm_key="account:ACC-9")
    assert applied(services("create"), [event]) == {event: "created-exchange"}
    assert len(ex.items) == 2


def test_an_ambiguous_match_waits_in_the_review_queue_once_and_nothing_is_created(world):
    services, crm, ex, store, queue = world
    first = ex.put(**ADA_OUTLOOK)
    second = ex.put(**{**ADA_OUTLOOK, "email": "ada@acme.example"})   # the owner has her twice
    crm.put("account:ACC-9", **ADA_CRM)
    ids = [store.event(source="crm", op="upsert", crm_key="account:ACC-9") for _ in range(2)]
    assert set(applied(services(), ids[:1]).values()) == {"review-held"}
    assert set(applied(services(), ids[1:]).values()) == {"review-held"}   # replayed: held, not twice
    assert len(ex.items) == 2 and ex.writes == 0
    (row,) = queue.find(MB)
    assert (row.side, row.record_key) == ("crm", "account:ACC-9") and "ambiguous" in row.reason
    assert {c["key"] for c in row.candidates} == {first, second}
    assert all("email" in c["agree"] for c in row.candidates)

    # a person picks the second contact: the next apply links and merges, creates nothing
    decided, events = review.accept(queue, store, row.id, second, "test", lambda: NOW)
    assert decided.status == "accepted" and decided.chosen == second
    assert applied(services(), events) == {events[0]: "linked-new"}
    assert store.find_link(MB, crm_key="account:ACC-9").item_id == second
    assert len(ex.items) == 2 and ex.items[second]["crm_key"] == "account:ACC-9"
    with pytest.raises(review.ReviewError, match="already accepted"):
        review.reject(queue, store, row.id, "test", lambda: NOW)


def test_review_mode_holds_a_new_contact_and_reject_creates_it(world):
    services, crm, ex, store, queue = world
    crm.put("account:ACC-9", **ADA_CRM)
    item = ex.put(**ADA_OUTLOOK)
    event = store.event(source="exchange", op="upsert", item_id=item)
    assert applied(services("review"), [event]) == {event: "review-held"}
    assert len(crm.rows) == 1 and store.find_link(MB, item_id=item) is None
    assert review.counts(queue) == {MB: 1}
    (row,) = review.list_items(queue, MB)
    assert row.candidates[0]["key"] == "account:ACC-9"
    with pytest.raises(review.ReviewError, match="not one of its candidates"):
        review.accept(queue, store, row.id, "account:NOPE", "test", lambda: NOW)
    _, events = review.reject(queue, store, row.id, "test", lambda: NOW)
    assert applied(services("review"), events) == {events[0]: "created-crm"}
    assert len(crm.rows) == 2 and review.counts(queue) == {}
    assert store.find_link(MB, item_id=item).crm_key != "account:ACC-9"


def test_review_mode_accept_links_a_new_contact_to_the_chosen_account(world):
    services, crm, ex, store, queue = world
    crm.put("account:ACC-9", **ADA_CRM)
    item = ex.put(**ADA_OUTLOOK)
    applied(services("review"), [store.event(source="exchange", op="upsert", item_id=item)])
    (row,) = review.list_items(queue)
    _, events = review.accept(queue, store, row.id, None, "test", lambda: NOW)   # the best candidate
    applied(services("review"), events)
    assert list(crm.rows) == ["account:ACC-9"] and store.find_link(MB, item_id=item).crm_key == "account:ACC-9"


def test_a_candidate_linked_to_another_record_is_never_chosen(world):
    services, crm, ex, store, _ = world
    item = ex.put(**ADA_OUTLOOK)
    crm.put("account:ACC-1", **ADA_CRM)
    applied(services(), [store.event(source="crm", op="upsert", crm_key="account:ACC-1")])
    assert store.find_link(MB, crm_key="account:ACC-1").item_id == item
    crm.put("account:ACC-2", **{**ADA_CRM, "company_name": "Acme"})   # imported again by the other system
    event = store.event(source="crm", op="upsert", crm_key="account:ACC-2")
    assert applied(services(), [event]) == {event: "created-exchange"}
    assert store.find_link(MB, crm_key="account:ACC-1").item_id == item


def test_on_new_record_is_checked_by_the_policy():
    with pytest.raises(ValueError, match="on_new_record 'maybe'"):
        replace(Policy(), on_new_record="maybe")


def test_review_mode_holds_both_new_records_and_one_accept_settles_the_pair(world):
    services, crm, ex, store, queue = world
    crm.put("account:ACC-9", **ADA_CRM)
    item = ex.put(**ADA_OUTLOOK)
    ids = [store.event(source="crm", op="upsert", crm_key="account:ACC-9"),
           store.event(source="exchange", op="upsert", item_id=item)]
    assert set(applied(services("review"), ids).values()) == {"review-held"}
    assert review.counts(queue) == {MB: 2}
    crm_row = next(r for r in review.list_items(queue) if r.side == "crm")
    _, events = review.accept(queue, store, crm_row.id, item, "test", lambda: NOW)
    assert review.counts(queue) == {}
    applied(services("review"), events)
    again = store.event(source="exchange", op="upsert", item_id=item)
    assert applied(services("review"), [again])[again] == "noop"
    assert len(crm.rows) == 1 and len(ex.items) == 1
    assert store.find_link(MB, crm_key="account:ACC-9").item_id == item


def test_a_new_contact_is_linked_to_an_account_that_waited_unlinked(world):
    """An account the push filter kept out of Outlook has a link row without a contact; the
    person added in Outlook later is linked to it, not made a second account."""
    _, crm, ex, store, queue = world
    svc = SyncServices(store=store, crm=crm, exchange_for=lambda mb: ex, clock=lambda: NOW, review=queue,
                       policy=Policy(push_filter=(("country", frozenset({"NO"})),)), new_account_no=crm.new_account_no)
    crm.put("account:ACC-9", **ADA_CRM)
    first = store.event(source="crm", op="upsert", crm_key="account:ACC-9")
    assert applied(svc, [first]) == {first: "skipped-filter"}
    item = ex.put(**ADA_OUTLOOK)
    event = store.event(source="exchange", op="upsert", item_id=item)
    assert applied(svc, [event])[event] in ("updated", "noop")
    assert list(crm.rows) == ["account:ACC-9"] and list(ex.items) == [item]
    link = store.find_link(MB, crm_key="account:ACC-9")
    assert link.item_id == item and link.base is not None and ex.items[item]["crm_key"] == "account:ACC-9"


def test_a_waiting_record_linked_meanwhile_is_no_longer_listed_nor_decided(world):
    services, crm, ex, store, queue = world
    crm.put("account:ACC-9", **ADA_CRM)
    item = ex.put(**ADA_OUTLOOK)
    applied(services("review"), [store.event(source="exchange", op="upsert", item_id=item)])
    (row,) = review.list_items(queue, MB, store)
    # the administrator switches back to match-then-create: the account's own event links the pair
    event = store.event(source="crm", op="upsert", crm_key="account:ACC-9")
    assert applied(services(), [event]) == {event: "linked-new"}
    assert review.list_items(queue, MB, store) == [] and review.counts(queue, store) == {}
    with pytest.raises(review.ReviewError, match="linked meanwhile"):
        review.reject(queue, store, row.id, "test", lambda: NOW)
    assert len(crm.rows) == 1 and len(ex.items) == 1
