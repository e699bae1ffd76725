"""The ReviewQueue port (new records waiting for a person, issue 8) against the SQL adapter on
SQLite and PostgreSQL and the in-memory fake the unit tests use; and the CRM adapter's look-up of
candidates for a contact new in Outlook (SqlCrm.find_similar)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy import Engine

from crmsync.adapters.crm.sqlalchemy_crm import SqlCrm
from crmsync.adapters.state.review import SqlReviewQueue
from tests.contract.dbhelpers import run_sql
from tests.unit.fakes import FakeReviewQueue

MB, OTHER = "alice@example.com", "bob@example.com"
T0 = datetime(2026, 12, 2, 10, 0, tzinfo=UTC)
CANDS = [{"key": "item-1", "name": "Ada Lovelace (Acme)", "score": 0.9998, "agree": ["email", "name"],
          "disagree": []},
         {"key": "item-2", "name": "Ada Lovelace", "score": 0.99, "agree": ["name"], "disagree": ["email"]}]


class ReviewQueueContract:
    @pytest.fixture
    def queue(self):
        raise NotImplementedError

    def test_a_record_is_held_once_and_its_candidates_are_kept(self, queue) -> None:
        row = queue.hold(MB, "crm", "account:A-1", "Ada Lovelace (Acme)", CANDS, "ambiguous", T0)
        again = queue.hold(MB, "crm", "account:A-1", "Ada Lovelace (Acme)", CANDS[:1], "ambiguous", T0)
        assert again.id == row.id and again.candidates == (CANDS[0],)        # refreshed, not doubled
        queue.hold(MB, "exchange", "item-9", "Grace", [], "on_new_record = review", T0)
        queue.hold(OTHER, "crm", "account:A-1", "Ada", CANDS, "ambiguous", T0)
        assert [(r.side, r.record_key) for r in queue.find(MB)] == [("crm", "account:A-1"), ("exchange", "item-9")]
        assert queue.counts() == {MB: 2, OTHER: 1}
        assert queue.for_record(MB, "crm", "account:A-1").status == "open"
        assert queue.for_record(MB, "crm", "account:NOPE") is None and queue.get(10_000) is None

    def test_a_decision_is_made_once_and_a_decided_row_is_not_reopened(self, queue) -> None:
        row = queue.hold(MB, "crm", "account:A-1", "Ada", CANDS, "ambiguous", T0)
        assert queue.decide(row.id, "accepted", "item-2", "cli:admin", T0) is True
        assert queue.decide(row.id, "rejected", None, "cli:other", T0) is False
        got = queue.get(row.id)
        assert (got.status, got.chosen, got.decided_by) == ("accepted", "item-2", "cli:admin")
        held = queue.hold(MB, "crm", "account:A-1", "Ada", [], "again", T0)   # a replayed event
        assert (held.id, held.status, held.candidates) == (row.id, "accepted", tuple(CANDS))
        assert queue.find(MB) == [] and queue.counts() == {}
        assert [r.id for r in queue.find(MB, ("accepted",))] == [row.id]


class TestSqlReviewQueue(ReviewQueueContract):
    @pytest.fixture
    def queue(self, state_engine: Engine):
        return SqlReviewQueue(state_engine)

    def test_an_unknown_decision_is_refused(self, queue) -> None:
        row = queue.hold(MB, "crm", "account:A-1", "Ada", CANDS, "ambiguous", T0)
        with pytest.raises(ValueError, match="accepted or rejected"):
            queue.decide(row.id, "maybe", None, "cli:admin", T0)


class TestFakeReviewQueue(ReviewQueueContract):
    @pytest.fixture
    def queue(self):
        return FakeReviewQueue()


def test_crm_candidates_are_found_by_email_in_any_case_or_last_name(crm_engine: Engine, crm_dbapi) -> None:
    run_sql(
        crm_dbapi,
        "INSERT INTO accounts (account_no, first_name, last_name, email) VALUES "
        "('A-1', 'Ada', 'Lovelace', 'ada@acme.example'), ('A-2', 'Grace', 'Hopper', 'grace@navy.example'), "
        "('A-3', 'Alan', 'Turing', 'alan@bletchley.example')",
        "INSERT INTO accounts (account_no, first_name, last_name, email2) VALUES "
        "('A-4', 'Edsger', 'Dijkstra', 'ewd@tue.example')",
        "INSERT INTO accounts (account_no, first_name, last_name, email, is_active) VALUES "
        "('A-5', 'Ada', 'Lovelace', 'ada@old.example', false)",
    )
    crm = SqlCrm(crm_engine)
    assert set(crm.find_similar(["ADA@Acme.Example"], [])) == {"account:A-1"}
    assert set(crm.find_similar([], ["hopper"])) == {"account:A-2"}
    assert set(crm.find_similar(["EWD@tue.example"], ["Turing"])) == {"account:A-3", "account:A-4"}
    assert crm.find_similar(["ada@old.example"], []) == {}          # inactive accounts are no candidates
    assert crm.find_similar([], []) == {}
    assert crm.find_similar(["nobody@x.example"], ["Nobody"]) == {}


def test_the_crm_search_finds_records_by_name_company_email_or_phone_within_a_limit(crm_engine: Engine,
                                                                                    crm_dbapi) -> None:
    """The Link page's CRM search (issue 12): one SQL query per table with a LIMIT; inactive
    accounts are never found, secondary contacts only when asked for; LIKE's wildcards in the
    query are plain characters."""
    from crmsync.core.matching import search_terms

    run_sql(
        crm_dbapi,
        "INSERT INTO accounts (account_no, first_name, last_name, company_name, email, phone_mobile) VALUES "
        "('A-1', 'Ada', 'Lovelace', 'Acme Works', 'Ada.L@Acme.example', '+1 (415) 555-0101'), "
        "('A-2', 'Grace', 'Hopper', 'Navy', 'grace@navy.example', NULL), "
        "('A-3', 'Alan', 'Turing', '100% Bletchley_Park', 'alan@b.example', NULL)",
        "INSERT INTO accounts (account_no, first_name, last_name, email, is_active) VALUES "
        "('A-5', 'Ada', 'Lovelace', 'ada@old.example', false)",
        "INSERT INTO contacts (account_id, first_name, last_name, email, phone_business) "
        "SELECT id, 'Adam', 'Smith', 'adam@acme.example', '044 123 45 67' FROM accounts WHERE account_no = 'A-1'",
        "INSERT INTO accounts (account_no, first_name, last_name) VALUES "
        + ", ".join(f"('L-{i}', 'Linus{i}', 'Limit')" for i in range(5)),
    )
    crm = SqlCrm(crm_engine)

    def found(text: str, limit: int = 200, with_contacts: bool = True) -> set[str]:
        return set(crm.search(search_terms(text), limit, with_contacts))

    contact = next(k for k in found("smith") if k.startswith("contact:"))
    assert found("ADA") == {"account:A-1", contact}
    assert found("ada", with_contacts=False) == {"account:A-1"}
    assert found("lovelace ada") == {"account:A-1"}
    assert found("acme works") == {"account:A-1"}
    assert found("GRACE@navy") == {"account:A-2"}
    assert found("415 555 0101") == {"account:A-1"}
    assert found("+41 44 123 45 67") == {contact}                  # the national number, written internationally
    assert found("100%") == {"account:A-3"} and found("_") == {"account:A-3"}   # not "any character"
    assert found("nobody") == set()
    assert len(found("limit", limit=3)) == 3 and len(found("limit")) == 5


def test_the_crm_search_ignores_accents_both_ways(crm_engine: Engine, crm_dbapi) -> None:
    """The Link page's CRM search folds accents as the matcher does (issue 12): "Zoe" finds
    "Zoë" and "Zoë" finds "Zoe", in any case, "obrien" finds "O'Brien", "strasse" finds
    "Straße"; still one bounded SQL query per table."""
    from crmsync.core.matching import search_terms

    run_sql(
        crm_dbapi,
        "INSERT INTO accounts (account_no, first_name, last_name, company_name) VALUES "
        "('B-1', 'Zoë', 'Brontë', 'Café Noël'), ('B-2', 'Zoe', 'Bronte', 'Cafe Noel'), "
        "('B-3', 'ZOË', 'O''Brien', 'Straße AG'), ('B-4', 'Søren', 'Łukasz', NULL), "
        "('B-5', 'Zoltan', 'Other', NULL)",
        "INSERT INTO contacts (account_id, first_name, last_name) "
        "SELECT id, 'Renée', 'Dupré' FROM accounts WHERE account_no = 'B-5'",
    )
    crm = SqlCrm(crm_engine)

    def found(text: str, limit: int = 200) -> set[str]:
        return {k for k in crm.search(search_terms(text), limit) if k.startswith("account:")}

    zoes = {"account:B-1", "account:B-2", "account:B-3"}
    assert found("zoe") == found("Zoë") == found("ZOË") == found("zoé") == zoes
    assert found("zoe bronte") == found("Zoë Brontë") == {"account:B-1", "account:B-2"}
    assert found("cafe noel") == found("café") - {"account:B-3"} == {"account:B-1", "account:B-2"}
    assert found("obrien") == found("o'brien") == {"account:B-3"}
    assert found("strasse") == found("straße") == {"account:B-3"}
    assert found("soren lukasz") == {"account:B-4"}
    assert len(found("zoe", limit=2)) == 2
    assert {k for k in crm.search(search_terms("renee dupre")) if k.startswith("contact:")} != set()
