"""The CRM adapter (SqlCrm) on SQLite and PostgreSQL."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from sqlalchemy import Engine, text

from crmsync.adapters.crm.changelog import Changelog
from crmsync.adapters.crm.sqlalchemy_crm import SqlCrm
from crmsync.errors import BadRecord, Stale
from tests.contract.dbhelpers import race, run_sql

A1 = "(SELECT id FROM accounts WHERE account_no = 'A-1')"


@pytest.fixture
def crm(crm_engine: Engine, crm_dbapi) -> SqlCrm:
    run_sql(
        crm_dbapi,
        "INSERT INTO accounts (account_no, company_name, first_name, last_name, email, "
        "phone_business, postal_code) VALUES "
        "('A-1', 'Acme GmbH', 'Anna', 'Berg', 'anna@acme.example', '+49 30 1234', '10115')",
        "INSERT INTO accounts (account_no, company_name, is_active) VALUES ('A-2', 'Old Co', false)",
        "INSERT INTO contacts (id, account_id, first_name, last_name, email) VALUES "
        f"(5, {A1}, 'Carl', 'Dahl', 'carl@acme.example')",
        f"INSERT INTO contacts (id, account_id, first_name) VALUES (6, {A1}, 'Dora')",
    )
    return SqlCrm(crm_engine)


def test_read_an_account_and_a_secondary_contact(crm: SqlCrm) -> None:
    acc = crm.read("account:A-1")
    assert acc is not None and acc.active and acc.account_key is None
    assert (acc.record.company_name, acc.record.first_name, acc.record.postal_code) == (
        "Acme GmbH", "Anna", "10115")
    con = crm.read("contact:5")
    assert con is not None and con.account_key == "account:A-1"
    assert (con.record.first_name, con.record.company_name) == ("Carl", "Acme GmbH")
    assert crm.read("account:nope") is None and crm.read("contact:999") is None
    assert crm.read("account:A-2").active is False
    with pytest.raises(BadRecord, match="contact:x"):
        crm.read("contact:x")


def test_read_many_matches_read(crm: SqlCrm) -> None:
    keys = ["account:A-1", "account:A-2", "contact:5", "contact:6", "account:missing", "contact:404"]
    many = crm.read_many(keys)
    assert set(many) == {"account:A-1", "account:A-2", "contact:5", "contact:6"}
    for key, rec in many.items():
        assert crm.read(key) == rec


def test_update_writes_and_changes_the_version(crm: SqlCrm, crm_engine: Engine) -> None:
    before = crm.read("account:A-1")
    after = crm.update("account:A-1", {"phone_business": "+49 30 9999", "city": "Berlin"}, before.version)
    assert (after.record.phone_business, after.record.city) == ("+49 30 9999", "Berlin")
    assert after.version != before.version and after.modified_at is not None
    assert crm.read("account:A-1") == after


def test_update_with_a_stale_version_is_refused(crm: SqlCrm, crm_dbapi) -> None:
    before = crm.read("account:A-1")
    run_sql(crm_dbapi, "UPDATE accounts SET notes = 'edited by a person' WHERE account_no = 'A-1'")
    with pytest.raises(Stale, match="account:A-1"):
        crm.update("account:A-1", {"city": "Berlin"}, before.version)
    assert crm.read("account:A-1").record.city is None


def test_contact_version_follows_its_account_company_name(crm: SqlCrm, crm_dbapi) -> None:
    before = crm.read("contact:5")
    run_sql(crm_dbapi, "UPDATE accounts SET company_name = 'Acme AG' WHERE account_no = 'A-1'")
    now = crm.read("contact:5")
    assert now.record.company_name == "Acme AG" and now.version != before.version
    with pytest.raises(Stale):
        crm.update("contact:5", {"job_title": "CTO"}, before.version)


def test_contact_update_never_writes_company_name(crm: SqlCrm) -> None:
    before = crm.read("contact:5")
    after = crm.update("contact:5", {"job_title": "CTO", "company_name": "Other"}, before.version)
    assert after.record.job_title == "CTO" and after.record.company_name == "Acme GmbH"
    assert crm.read("account:A-1").record.company_name == "Acme GmbH"


def test_update_with_nothing_new_writes_nothing(crm: SqlCrm, crm_engine: Engine) -> None:
    log = Changelog(crm_engine)
    before_rows = log.count()
    rec = crm.read("account:A-1")
    same = crm.update("account:A-1", {"email": "anna@acme.example"}, rec.version)
    assert same == rec and log.count() == before_rows


def test_update_of_an_unknown_field_names_the_record(crm: SqlCrm) -> None:
    rec = crm.read("account:A-1")
    with pytest.raises(BadRecord, match="account:A-1.*shoe_size"):
        crm.update("account:A-1", {"shoe_size": "44"}, rec.version)


def test_create_account_is_idempotent(crm: SqlCrm, crm_engine: Engine) -> None:
    no = crm.new_account_no()
    assert no.startswith("EX-") and len(no) == 13 and crm.read(f"account:{no}") is None
    first = crm.create_account(no, {"first_name": "Eve", "company_name": "Eve Ltd"})
    again = crm.create_account(no, {"first_name": "Someone else"})
    assert first == again and first.key == f"account:{no}" and first.active
    assert first.record.first_name == "Eve"
    with crm_engine.connect() as conn:
        n = conn.execute(text("SELECT count(*) FROM accounts WHERE account_no = :n"), {"n": no}).scalar()
    assert n == 1


def test_concurrent_create_account_makes_one_row(crm: SqlCrm, crm_engine: Engine) -> None:
    no = crm.new_account_no()
    results: list[Any] = []
    errors: list[BaseException] = []

    def create() -> None:
        try:
            results.append(crm.create_account(no, {"last_name": "Race"}))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=create) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and len(results) == 4 and len({r.version for r in results}) == 1
    with crm_engine.connect() as conn:
        n = conn.execute(text("SELECT count(*) FROM accounts WHERE account_no = :n"), {"n": no}).scalar()
    assert n == 1


def test_deactivate_keeps_the_row(crm: SqlCrm, crm_engine: Engine) -> None:
    rec = crm.read("account:A-1")
    gone = crm.deactivate("account:A-1", rec.version)
    assert gone is not None and gone.active is False
    assert crm.read("account:A-1").active is False
    assert crm.deactivate("account:A-1", None).active is False          # idempotent
    assert crm.deactivate("account:missing", None) is None
    with crm_engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM accounts WHERE account_no = 'A-1'")).scalar() == 1
    assert "account:A-1" not in crm.all_keys()


def test_deactivate_with_a_stale_version_is_refused(crm: SqlCrm, crm_dbapi) -> None:
    rec = crm.read("account:A-1")
    run_sql(crm_dbapi, "UPDATE accounts SET city = 'Hamburg' WHERE account_no = 'A-1'")
    with pytest.raises(Stale):
        crm.deactivate("account:A-1", rec.version)
    assert crm.read("account:A-1").active is True


def test_keys_for_the_initial_sync_and_the_fan_out(crm: SqlCrm) -> None:
    assert crm.all_keys() == ["account:A-1", "contact:5", "contact:6"]
    assert crm.contact_keys_of_account("A-1") == ["contact:5", "contact:6"]
    assert crm.contact_keys_of_account("A-2") == []


def test_modified_at_is_the_database_clock_in_utc_whatever_a_program_writes(crm: SqlCrm, crm_dbapi) -> None:
    from datetime import UTC, datetime, timedelta

    before = datetime.now(UTC)
    run_sql(crm_dbapi, "UPDATE accounts SET city = 'Bonn', updated_at = '2026-01-02 03:04:05' "
                       "WHERE account_no = 'A-1'")
    rec = crm.read("account:A-1")
    assert rec.modified_at is not None and rec.modified_at.tzinfo is not None
    assert rec.modified_at.utcoffset() == timedelta(0)
    assert before - timedelta(seconds=1) <= rec.modified_at <= datetime.now(UTC) + timedelta(seconds=1)


def test_crmsync_own_write_is_timed_by_the_database_and_logged_once(crm: SqlCrm, crm_engine: Engine) -> None:
    from datetime import UTC, datetime, timedelta

    log = Changelog(crm_engine)
    rows_before = log.count()
    rec = crm.read("contact:5")
    before = datetime.now(UTC)
    after = crm.update("contact:5", {"job_title": "CTO"}, rec.version)
    assert after.modified_at is not None and after.modified_at.tzinfo is not None
    assert before - timedelta(seconds=1) <= after.modified_at <= datetime.now(UTC) + timedelta(seconds=1)
    assert log.count() == rows_before + 1
    assert crm.read("contact:5") == after


def test_concurrent_updates_from_one_version_have_one_winner(crm: SqlCrm) -> None:
    """The compare-and-set is safe under concurrency: of N writers that read the same version,
    exactly one writes, the others get Stale (BEGIN IMMEDIATE / SELECT ... FOR UPDATE)."""
    for round_ in range(3):
        rec = crm.read("account:A-1")
        results = race([
            lambda city=f"City {round_}-{i}", v=rec.version: crm.update("account:A-1", {"city": city}, v)
            for i in range(4)])
        won = [r for r in results if not isinstance(r, BaseException)]
        stale = [r for r in results if isinstance(r, Stale)]
        assert len(won) == 1 and len(stale) == 3, results
        assert crm.read("account:A-1") == won[0]


# --------------------------------------------------------------------------- keys a link cannot hold
# The reference schema lets any text be an account_no; a link (and the stamp on the Exchange
# contact) cannot hold every one. Such an account is a bad record naming its row, at once.

BAD_ACCOUNT_NOS = [
    pytest.param("", r"account_no is empty; give the account a number", id="empty"),
    pytest.param("   ", r"account_no is only white space; give the account a number", id="white_space"),
    pytest.param("ACC\x0b1", r"account_no contains the character U\+000B at position 3, which .*cannot", id="control_character"),
    pytest.param("A" * 300, r"account_no has 300 characters, at most 255", id="over_long"),
]


@pytest.mark.parametrize(("account_no", "why"), BAD_ACCOUNT_NOS)
def test_an_account_no_a_link_cannot_hold_is_a_bad_record_naming_the_row(
        crm: SqlCrm, crm_dbapi, account_no: str, why: str) -> None:
    run_sql(crm_dbapi, f"INSERT INTO accounts (id, account_no, company_name) VALUES (17, '{account_no}', 'Keyless')",
            "INSERT INTO contacts (id, account_id, first_name) VALUES (40, 17, 'Kim')")
    key = f"account:{account_no}"
    assert key in crm.all_keys()          # listed, so that it surfaces as a dead letter
    with pytest.raises(BadRecord, match=rf"^accounts row id=17: {why}"):
        crm.read(key)
    with pytest.raises(BadRecord, match=rf"^accounts row id=17: {why}"):
        crm.read_many(["account:A-1", key])
    with pytest.raises(BadRecord, match=rf"^contact:40: its account, accounts row id=17: {why}"):
        crm.read("contact:40")
    with pytest.raises(BadRecord, match=rf"^accounts row id=17: {why}"):
        crm.update(key, {"city": "Nowhere"}, "any-version")
    with pytest.raises(BadRecord, match=why):
        crm.create_account(account_no, {"first_name": "New"})
    assert crm.read("account:A-1") is not None   # the other accounts are unaffected


def test_a_malformed_key_that_matches_no_row_is_a_bad_record_naming_the_key(crm: SqlCrm) -> None:
    with pytest.raises(BadRecord, match=r"CRM key 'account:': account_no is empty"):
        crm.read("account:")
    with pytest.raises(BadRecord, match=r"CRM key 'contact:x'"):
        crm.read_many(["contact:x"])
    with pytest.raises(BadRecord, match=r"CRM key 'lead:7'"):
        crm.read("lead:7")


def test_delete_account_deletes_a_row_without_contacts_and_deactivates_one_with(crm: SqlCrm, crm_engine: Engine,
                                                                                crm_dbapi) -> None:
    assert crm.delete_account("account:A-1", crm.read("account:A-1").version) == "deactivated"   # has contacts
    assert crm.read("account:A-1").active is False
    run_sql(crm_dbapi, "UPDATE accounts SET city = 'Hamburg' WHERE account_no = 'A-2'")
    with pytest.raises(Stale):
        crm.delete_account("account:A-2", "not-its-version")
    assert crm.delete_account("account:A-2", crm.read("account:A-2").version) == "deleted"
    assert crm.read("account:A-2") is None
    with crm_engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM accounts WHERE account_no = 'A-2'")).scalar() == 0
    assert crm.delete_account("account:A-2", None) == "gone"


def test_the_initial_listing_with_inactive_accounts(crm: SqlCrm) -> None:
    assert "account:A-2" not in crm.all_keys()                       # inactive in the seed
    assert crm.all_keys(inactive=True) == ["account:A-1", "account:A-2", "contact:5", "contact:6"]
