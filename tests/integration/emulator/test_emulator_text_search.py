"""FindItem with Contains and IsEqualTo restrictions through exchangelib: the emulator's text index (issue 12)
gives exactly what evaluating the restriction on every item gives, after creates, updates,
moves and deletes, and on a store made before the index existed; and Contains with
ContainmentComparison="IgnoreCaseAndNonSpacingCharacters" ignores case and accents, as the EWS
reference documents ("Zoe" finds "Zoë", "Zoë" finds "Zoe"), while IgnoreCase does not."""

from __future__ import annotations

import sqlite3
import unicodedata

from exchangelib import Contact, Q
from exchangelib.indexed_properties import EmailAddress, PhoneNumber

from .conftest import make_account

NAMES = [("Zoë", "Brontë", "Café Ltd"), ("Zoe", "Bronte", "Cafe Ltd"), ("ZOË", "Müller", "Acme"),
         ("Chloé", "Muller", "ACME GmbH"), ("Ann", "Smith", "Café Ltd"), ("Ánn", "Şmith", None)]


def _contacts(folder) -> list[Contact]:
    out = []
    for i, (given, surname, company) in enumerate(NAMES * 3):
        out.append(Contact(folder=folder, display_name=f"{given} {surname} {i}", given_name=given, surname=surname, company_name=company,
                           categories=["CRM", f"Group {i % 4}"],
                           email_addresses=[EmailAddress(email=f"{given.lower()}.{i}@example.org", label="EmailAddress1")],
                           phone_numbers=[PhoneNumber(phone_number=f"+1 555 {i:07d}", label="BusinessPhone")]))
    return out


def _fold(text: str, case: bool, marks: bool) -> str:
    if case:
        text = text.casefold()
    if marks:
        text = "".join(c for c in unicodedata.normalize("NFD", text) if unicodedata.category(c) != "Mn")
    return text


class AccentQ(Q):
    """Q whose case-insensitive lookups ask for IgnoreCaseAndNonSpacingCharacters."""

    @classmethod
    def _op_to_xml(cls, op):
        elem = super()._op_to_xml(op)
        if elem.get("ContainmentComparison") == "IgnoreCase":
            elem.set("ContainmentComparison", "IgnoreCaseAndNonSpacingCharacters")
        return elem


class MarksQ(Q):
    """Q whose case-sensitive Contains lookups ask for IgnoreNonSpacingCharacters."""

    @classmethod
    def _op_to_xml(cls, op):
        elem = super()._op_to_xml(op)
        if elem.get("ContainmentComparison") == "Exact":
            elem.set("ContainmentComparison", "IgnoreNonSpacingCharacters")
        return elem


def _names(qs) -> list[tuple[str, str]]:
    return sorted((c.given_name, c.surname) for c in qs.only("given_name", "surname"))


def _expected(items: list[Contact], pred) -> list[tuple[str, str]]:
    return sorted((c.given_name, c.surname) for c in items if pred(c))


def _check(account, items: list[Contact]) -> None:
    """Every query's result against the same rule evaluated here on what was stored."""
    f = account.contacts
    for word in ("zo", "ZOË", "brontë", "café", "ltd", "x"):
        got = _names(f.filter(Q(given_name__icontains=word) | Q(surname__icontains=word) | Q(company_name__icontains=word)))
        w = _fold(word, True, False)
        assert got == _expected(items, lambda c, w=w: any(w in _fold(v or "", True, False)
                                                          for v in (c.given_name, c.surname, c.company_name))), word
        got = _names(f.filter(AccentQ(given_name__icontains=word) | AccentQ(surname__icontains=word)))
        w = _fold(word, True, True)
        assert got == _expected(items, lambda c, w=w: any(w in _fold(v or "", True, True)
                                                          for v in (c.given_name, c.surname))), word
    assert _names(f.filter(given_name__contains="Zo")) == _expected(items, lambda c: "Zo" in c.given_name)
    assert _names(f.filter(surname__startswith="M")) == _expected(items, lambda c: c.surname.startswith("M"))
    assert _names(f.filter(given_name__iexact="zoë")) == _expected(items, lambda c: c.given_name.casefold() == "zoë")
    assert _names(f.filter(Q(given_name__icontains="zo") & Q(company_name__icontains="ltd"))) == _expected(
        items, lambda c: "zo" in c.given_name.casefold() and "ltd" in (c.company_name or "").casefold())
    assert _names(f.filter(Q(given_name__icontains="zo") & ~Q(surname__icontains="bront"))) == _expected(
        items, lambda c: "zo" in c.given_name.casefold() and "bront" not in c.surname.casefold())
    assert _names(f.filter(email_addresses__EmailAddress1__icontains="ZOË.1")) == _expected(
        items, lambda c: any("zoë.1" in e.email for e in c.email_addresses or ()))
    assert _names(f.filter(phone_numbers__BusinessPhone__contains="0000011")) == _expected(
        items, lambda c: any("0000011" in p.phone_number for p in c.phone_numbers or ()))
    assert _names(f.filter(categories__contains="Group 2")) == _expected(
        items, lambda c: "Group 2" in (c.categories or ()))
    assert _names(f.filter(surname="müller")) == _expected(items, lambda c: c.surname.casefold() == "müller")
    similar = Q(email_addresses__EmailAddress1="ZOË.1@example.org") | Q(surname="smith") | Q(surname="Nobody")
    assert _names(f.filter(similar)) == _expected(items, lambda c: c.surname.casefold() == "smith" or any(
        e.email.casefold() == "zoë.1@example.org" for e in c.email_addresses or ()))
    assert _names(f.filter(Q(surname="Bronte") & Q(given_name__icontains="zo"))) == _expected(
        items, lambda c: c.surname.casefold() == "bronte" and "zo" in c.given_name.casefold())
    assert _names(f.filter(company_name__icontains="")) == _expected(items, lambda c: c.company_name is not None)


def test_contains_answers_from_the_index_as_a_scan_would(emulator):
    account = make_account(emulator)
    account.bulk_create(folder=account.contacts, items=_contacts(account.contacts))
    items = list(account.contacts.all())
    _check(account, items)

    zoe = next(c for c in items if c.given_name == "Zoe")
    zoe.given_name, zoe.company_name = "Renée", "Noël SA"
    zoe.save(update_fields=["given_name", "company_name"])
    ann = next(c for c in items if c.given_name == "Ann")
    ann.move(account.trash)
    chloe = next(c for c in items if c.given_name == "Chloé")
    chloe.delete()
    items = list(account.contacts.all())
    assert len(items) == len(NAMES) * 3 - 2
    _check(account, items)
    renee = AccentQ(given_name__icontains="renee") | AccentQ(surname__icontains="renee")   # (a lone leaf would
    assert _names(account.contacts.filter(renee)) == [("Renée", "Bronte")]                # become a plain Q)
    marks = MarksQ(given_name__contains="Zoe") | MarksQ(surname__contains="Zoe")
    assert _names(account.contacts.filter(marks)) == _expected(items, lambda c: "Zoe" in _fold(c.given_name, False, True))
    assert {g for g, _ in _names(account.contacts.filter(marks))} == {"Zoë", "Zoe"}   # not ZOË: case counts
    assert _names(account.trash.filter(given_name__icontains="ann")) == [("Ann", "Smith")]
    assert _names(account.contacts.filter(given_name__icontains="renee")) == []   # IgnoreCase keeps accents


def test_a_store_made_before_the_index_is_indexed_when_opened(start_emulator, tmp_path):
    data = tmp_path / "old"
    emu = start_emulator(data)
    account = make_account(emu)
    account.bulk_create(folder=account.contacts, items=_contacts(account.contacts))
    emu.stop()
    with sqlite3.connect(data / "store" / "mailboxes.sqlite3") as conn:   # as an emulator before the index left it
        conn.execute("DROP TABLE item_text")
        conn.execute("DELETE FROM meta WHERE key='item_text'")
    emu = start_emulator(data)
    account = make_account(emu)
    _check(account, list(account.contacts.all()))
    zoe = AccentQ(given_name__icontains="zoe") | AccentQ(surname__icontains="zoe")
    assert len(_names(account.contacts.filter(zoe))) == 9
