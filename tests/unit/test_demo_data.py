"""The demo's seed data: the same every run, unique keys, realistic and tricky enough."""

from __future__ import annotations

import phonenumbers

from crmsync.cli.demo_data import demo_accounts, demo_exchange_contacts, demo_secondary_contacts
from schemas.canonical import ACCOUNT_FIELDS, CONTACT_FIELDS, CanonicalContact

REGION = {"United States": "US", "United Kingdom": "GB", "Germany": "DE"}


def test_the_data_is_deterministic() -> None:
    assert demo_accounts() == demo_accounts()
    assert demo_secondary_contacts(demo_accounts()) == demo_secondary_contacts(demo_accounts())
    assert demo_exchange_contacts() == demo_exchange_contacts()
    assert demo_accounts(seed=1) != demo_accounts(seed=2)


def test_accounts_have_unique_numbers_and_emails_and_all_columns() -> None:
    accounts = demo_accounts(30)
    assert len(accounts) == 30
    assert [a["account_no"] for a in accounts] == [f"ACC-{1001 + i}" for i in range(30)]
    assert len({a["email"] for a in accounts}) == 30
    assert len({a["company_name"] for a in accounts}) == 30
    for account in accounts:
        assert set(ACCOUNT_FIELDS) <= set(account), account["account_no"]
        assert account["is_active"] is True
        assert account["email"].endswith("@" + account["website"].removeprefix("https://www."))


def test_many_accounts_stay_unique() -> None:
    accounts = demo_accounts(500)
    assert len({a["account_no"] for a in accounts}) == 500
    assert len({a["email"] for a in accounts}) == 500


def test_the_tricky_values_are_there() -> None:
    accounts = demo_accounts(30)
    names = {f"{a['first_name']} {a['last_name']}" for a in accounts}
    assert {"Zoë Müller", "José Núñez"} <= names
    assert "O'Brien & Sons" in {a["company_name"] for a in accounts}
    assert any("<Tags> & ampersands" in (a["notes"] or "") for a in accounts)
    assert {a["country"] for a in accounts} == set(REGION)


def test_phone_numbers_parse_in_their_country() -> None:
    for record in demo_accounts(30) + demo_exchange_contacts(10):
        for field in ("phone_business", "phone_mobile", "fax"):
            value = record.get(field)
            if value:
                number = phonenumbers.parse(value, REGION[record["country"]])
                assert phonenumbers.is_valid_number(number), (record["email"], field, value)


def test_a_third_of_the_accounts_get_one_to_three_secondary_contacts() -> None:
    accounts = demo_accounts(30)
    contacts = demo_secondary_contacts(accounts)
    per_account: dict[str, int] = {}
    for contact in contacts:
        per_account[contact["account_no"]] = per_account.get(contact["account_no"], 0) + 1
    assert len(per_account) == 10
    assert all(1 <= count <= 3 for count in per_account.values())
    emails = [c["email"] for c in contacts] + [a["email"] for a in accounts]
    assert len(set(emails)) == len(emails)
    domains = {a["account_no"]: a["email"].split("@")[1] for a in accounts}
    for contact in contacts:
        assert contact["email"].endswith("@" + domains[contact["account_no"]])
        assert set(CONTACT_FIELDS) - {"company_name"} <= set(contact)


def test_exchange_contacts_are_canonical_at_other_companies_and_one_is_private() -> None:
    contacts = demo_exchange_contacts(10)
    assert len(contacts) == 10
    assert len({c["email"] for c in contacts}) == 10
    assert [c.get("private", False) for c in contacts].count(True) == 1
    crm_companies = {a["company_name"] for a in demo_accounts(30)}
    for contact in contacts:
        fields = {k: v for k, v in contact.items() if k != "private"}
        CanonicalContact(**fields)  # every key is a canonical field name
        assert contact["company_name"] not in crm_companies
