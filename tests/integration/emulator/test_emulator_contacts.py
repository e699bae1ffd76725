"""Contacts through exchangelib: every field round-trips, updates, deletes, moves, queries."""

from __future__ import annotations

import datetime

import pytest
from exchangelib import Contact, ExtendedProperty, Folder, HTMLBody
from exchangelib.errors import ErrorFolderExists, ErrorIrresolvableConflict, ErrorItemNotFound
from exchangelib.ewsdatetime import UTC, EWSDate, EWSDateTime
from exchangelib.folders import DEEP, Contacts, FolderCollection, SingleFolderQuerySet
from exchangelib.indexed_properties import EmailAddress, ImAddress, PhoneNumber, PhysicalAddress
from exchangelib.items import ALWAYS_OVERWRITE, AUTO_RESOLVE, NEVER_OVERWRITE

from .conftest import make_account

LONG = "Lorem ipsum dolor sit amet — ünïcödé ✓ 漢字 <tag> & 'quote' \"dq\"\n" * 300


class CrmAccountId(ExtendedProperty):
    distinguished_property_set_id = "PublicStrings"
    property_name = "CrmAccountId"
    property_type = "String"


class CrmRevision(ExtendedProperty):
    distinguished_property_set_id = "PublicStrings"
    property_name = "CrmRevision"
    property_type = "Integer"


class CrmSyncedAt(ExtendedProperty):
    property_set_id = "c11ff724-aa03-4555-9952-8fa248a11c3e"
    property_name = "CrmSyncedAt"
    property_type = "SystemTime"


@pytest.fixture
def crm_props():
    """Register the named properties on Contact for one test."""
    Contact.register("crm_id", CrmAccountId)
    Contact.register("crm_revision", CrmRevision)
    Contact.register("crm_synced_at", CrmSyncedAt)
    yield
    Contact.deregister("crm_id")
    Contact.deregister("crm_revision")
    Contact.deregister("crm_synced_at")


def full_contact(folder, n: int = 1) -> Contact:
    return Contact(
        folder=folder,
        display_name=f"Ünïcode & <Co> {n}",
        given_name="Zoë",
        middle_name="Q",
        surname="O'Brien-Łukasz",
        nickname="Zo",
        initials="Z.Q.O.",
        generation="Jr.",
        file_as="O'Brien, Zoë",
        company_name="Acme & Söhne <GmbH>",
        department="R&D",
        job_title="Chief \"Quoted\" Officer",
        manager="M. Anager",
        assistant_name="Ass Istant",
        office="Bldg 7",
        profession="Engineer",
        spouse_name="Sam",
        mileage="12",
        business_homepage="https://acme.example/ü?a=1&b=2",
        birthday=EWSDate(1980, 2, 29),
        wedding_anniversary=EWSDate(2005, 6, 1),
        children=["Kid A", "Kid B"],
        companies=["Acme", "Beta"],
        categories=["CRM", "Kunden & Partner"],
        sensitivity="Private",
        body=LONG,
        email_addresses=[EmailAddress(email=f"zoe{n}@acme.example", label="EmailAddress1"),
                         EmailAddress(email="zoe.private@example.org", label="EmailAddress2"),
                         EmailAddress(email="z@example.net", label="EmailAddress3")],
        phone_numbers=[PhoneNumber(label=label, phone_number=f"+49 30 {i:04d}")
                       for i, label in enumerate(PhoneNumber.LABEL_CHOICES)],
        physical_addresses=[
            PhysicalAddress(label="Business", street="Hauptstraße 1\nHof 2", city="Berlin", state="BE",
                            country="Germany", zipcode="10115"),
            PhysicalAddress(label="Home", street="1 <Home> Rd", city="Köln", zipcode="50667"),
            PhysicalAddress(label="Other", city="Zürich", country="Switzerland"),
        ],
        im_addresses=[ImAddress(label="ImAddress1", im_address="zoe@im.example")],
    )


SCALARS = ["display_name", "given_name", "middle_name", "surname", "nickname", "initials", "generation",
           "file_as", "company_name", "department", "job_title", "manager", "assistant_name", "office",
           "profession", "spouse_name", "mileage", "business_homepage", "birthday", "wedding_anniversary",
           "children", "companies", "categories", "sensitivity", "body"]


def by_label(values):
    return {v.label: v for v in values or []}


def test_every_contact_field_round_trips_through_create_and_get(account):
    sent = full_contact(account.contacts)
    sent.save()
    got = account.contacts.get(id=sent.id)
    for name in SCALARS:
        assert getattr(got, name) == getattr(sent, name), name
    assert by_label(got.email_addresses) == by_label(sent.email_addresses)
    assert by_label(got.phone_numbers) == by_label(sent.phone_numbers)
    assert len(got.phone_numbers) == 19
    assert by_label(got.physical_addresses) == by_label(sent.physical_addresses)
    assert by_label(got.im_addresses) == by_label(sent.im_addresses)
    assert got.changekey == sent.changekey
    assert got.parent_folder_id.id == account.contacts.id


def test_html_body_is_kept_as_html(account):
    c = Contact(folder=account.contacts, display_name="Html", body=HTMLBody("<p>Hi &amp; <b>bye</b></p>"))
    c.save()
    got = account.contacts.get(id=c.id)
    assert isinstance(got.body, HTMLBody)
    assert got.body == "<p>Hi &amp; <b>bye</b></p>"


def test_update_sets_and_deletes_indexed_fields_and_changes_the_changekey(account):
    c = full_contact(account.contacts)
    c.save()
    first_ck = c.changekey
    c.given_name = "Zoé"
    c.email_addresses = [EmailAddress(email="new@acme.example", label="EmailAddress2")]
    c.phone_numbers = [PhoneNumber(label="MobilePhone", phone_number="+1 555 0100")]
    c.physical_addresses = [PhysicalAddress(label="Home", street="New St 5", city="Bonn")]
    c.categories = None
    c.job_title = None
    c.save(update_fields=["given_name", "email_addresses", "phone_numbers", "physical_addresses",
                          "categories", "job_title"])
    assert c.changekey != first_ck
    got = account.contacts.get(id=c.id)
    assert got.given_name == "Zoé"
    assert by_label(got.email_addresses) == {"EmailAddress2": EmailAddress(email="new@acme.example",
                                                                           label="EmailAddress2")}
    assert [(p.label, p.phone_number) for p in got.phone_numbers] == [("MobilePhone", "+1 555 0100")]
    assert [(a.label, a.street, a.city, a.zipcode) for a in got.physical_addresses] == [
        ("Home", "New St 5", "Bonn", None)]
    assert got.categories is None
    assert got.job_title is None
    assert got.surname == "O'Brien-Łukasz"  # untouched fields stay


def test_every_save_gives_a_new_changekey(account):
    c = Contact(folder=account.contacts, display_name="CK")
    c.save()
    seen = {c.changekey}
    for i in range(3):
        c.nickname = f"n{i}"
        c.save(update_fields=["nickname"])
        seen.add(c.changekey)
    assert len(seen) == 4


def test_stale_changekey_is_rejected_under_never_overwrite(account):
    c = Contact(folder=account.contacts, display_name="Race")
    c.save()
    stale = account.contacts.get(id=c.id)
    c.surname = "Winner"
    c.save(update_fields=["surname"])
    stale.surname = "Loser"
    with pytest.raises(ErrorIrresolvableConflict):
        stale.save(update_fields=["surname"], conflict_resolution=NEVER_OVERWRITE)
    assert account.contacts.get(id=c.id).surname == "Winner"
    stale.save(update_fields=["surname"], conflict_resolution=ALWAYS_OVERWRITE)
    assert account.contacts.get(id=c.id).surname == "Loser"
    c.refresh()
    c.surname = "Auto"
    c.save(update_fields=["surname"], conflict_resolution=AUTO_RESOLVE)
    assert account.contacts.get(id=c.id).surname == "Auto"


def test_extended_properties_round_trip_and_filter(account, crm_props):
    when = EWSDateTime(2024, 5, 6, 7, 8, 9, tzinfo=UTC)
    items = [Contact(folder=account.contacts, display_name=f"X{i}", crm_id=f"acc-{i}", crm_revision=i,
                     crm_synced_at=when) for i in range(5)]
    account.bulk_create(folder=account.contacts, items=items)
    found = list(account.contacts.filter(crm_id="acc-3"))
    assert [(c.display_name, c.crm_id, c.crm_revision, c.crm_synced_at) for c in found] == [
        ("X3", "acc-3", 3, when)]
    assert account.contacts.filter(crm_revision__gte=2).count() == 3
    one = found[0]
    one.crm_id = "acc-33 <&>"
    one.save(update_fields=["crm_id"])
    assert account.contacts.get(crm_id="acc-33 <&>").display_name == "X3"
    one.crm_revision = None
    one.save(update_fields=["crm_revision"])
    assert account.contacts.get(id=one.id).crm_revision is None


def test_find_item_restrictions_sort_and_paging(account):
    names = [f"Person {i:03d}" for i in range(250)]
    account.bulk_create(folder=account.contacts, items=[
        Contact(folder=account.contacts, display_name=n, given_name=n.split()[1], surname="Even" if i % 2 == 0
                else "Odd", company_name=f"Company {i % 7}") for i, n in enumerate(names)])
    qs = account.contacts.all()
    qs.page_size = 40
    assert qs.count() == 250
    assert sorted(c.display_name for c in qs.only("display_name")) == names
    assert account.contacts.filter(surname="even").count() == 125          # case-insensitive
    assert account.contacts.exclude(surname="Even").count() == 125
    assert account.contacts.filter(company_name__contains="any 3").count() == 36
    assert account.contacts.filter(given_name__startswith="01").count() == 10
    both = account.contacts.filter(surname="Odd", company_name="Company 1")
    assert sorted(c.given_name for c in both) == sorted(f"{i:03d}" for i in range(250) if i % 2 and i % 7 == 1)
    from exchangelib import Q
    either = account.contacts.filter(Q(given_name="001") | Q(given_name="002"))
    assert sorted(c.given_name for c in either) == ["001", "002"]
    desc = list(account.contacts.all().order_by("-display_name").values_list("display_name", flat=True)[:3])
    assert desc == ["Person 249", "Person 248", "Person 247"]
    assert account.contacts.filter(display_name__in=["Person 001", "Person 010"]).count() == 2


def test_filter_on_indexed_email_phone_and_address_fields(account):
    a = full_contact(account.contacts, n=1)
    b = Contact(folder=account.contacts, display_name="Other",
                email_addresses=[EmailAddress(email="zoe1@acme.example", label="EmailAddress2")])
    account.bulk_create(folder=account.contacts, items=[a, b])
    by_email = account.contacts.filter(email_addresses__EmailAddress1="ZOE1@acme.example")
    assert [c.display_name for c in by_email] == [a.display_name]
    assert account.contacts.filter(phone_numbers__MobilePhone__contains="30").count() == 1
    assert account.contacts.filter(physical_addresses__Business__city="berlin").count() == 1
    assert account.contacts.filter(physical_addresses__Home__city="berlin").count() == 0


def test_delete_kinds_and_move(account):
    hard, soft, trash, moved = (Contact(folder=account.contacts, display_name=n) for n in
                                ("hard", "soft", "trash", "moved"))
    for c in (hard, soft, trash, moved):
        c.save()
    hard_id, soft_id, trash_id = hard.id, soft.id, trash.id
    hard.delete()
    soft.soft_delete()
    trash.move_to_trash()
    assert sorted(c.display_name for c in account.contacts.all()) == ["moved"]
    assert [c.display_name for c in account.trash.all()] == ["trash"]
    with pytest.raises(ErrorItemNotFound):
        account.contacts.get(id=hard_id)
    assert isinstance(list(account.fetch(ids=[(soft_id, None)]))[0], Contact)  # in the dumpster
    assert isinstance(list(account.fetch(ids=[(hard_id, None)]))[0], ErrorItemNotFound)
    sub = Contacts(parent=account.contacts, name="CRM Accounts")
    sub.save()
    moved.move(sub)
    assert [c.display_name for c in sub.all()] == ["moved"]
    assert account.contacts.all().count() == 0
    assert trash_id


def test_folders_create_find_and_delete(account):
    crm = Contacts(parent=account.contacts, name="CRM Accounts")
    crm.save()
    Folder(parent=crm, name="Archive").save()
    with pytest.raises(ErrorFolderExists):
        Contacts(parent=account.contacts, name="CRM Accounts").save()
    account.root.refresh()
    assert (account.contacts / "CRM Accounts").id == crm.id
    assert [f.name for f in account.contacts.walk()] == ["CRM Accounts", "Archive"]
    assert [f.name for f in account.contacts.children] == ["CRM Accounts"]
    assert [f.name for f in account.root.glob("**/Archive")] == ["Archive"]
    deep = SingleFolderQuerySet(account=account, folder=account.contacts).depth(DEEP)
    assert [f.name for f in deep.filter(name="Archive")] == ["Archive"]
    assert [f.name for f in deep.filter(name__icontains="crm")] == ["CRM Accounts"]
    c = Contact(folder=crm, display_name="in sub")
    c.save()
    crm.delete()
    account.root.refresh()
    assert [f.name for f in account.contacts.children] == []
    with pytest.raises(ErrorItemNotFound):
        account.contacts.get(id=c.id)


def test_find_folder_pages_through_many_folders(account):
    parent = Contacts(parent=account.contacts, name="Many")
    parent.save()
    for i in range(30):
        Contacts(parent=parent, name=f"F{i:02d}").save()
    found = FolderCollection(account=account, folders=[parent]).find_folders(page_size=7)
    assert sorted(f.name for f in found) == [f"F{i:02d}" for i in range(30)]
    page = list(FolderCollection(account=account, folders=[parent]).find_folders(max_items=5, offset=28))
    assert len(page) == 2


def test_delegate_sees_owner_contacts(emulator):
    alice = make_account(emulator)
    Contact(folder=alice.contacts, display_name="Shared").save()
    bob_on_alice = make_account(emulator, user="bob@example.com", mailbox="alice@example.com")
    assert [c.display_name for c in bob_on_alice.contacts.all()] == ["Shared"]
    Contact(folder=bob_on_alice.contacts, display_name="Written by bob").save()
    assert alice.contacts.all().count() == 2
    bob = make_account(emulator, user="bob@example.com")
    assert bob.contacts.all().count() == 0
    assert datetime.date.today()


def test_concurrent_clients_create_without_losing_or_duplicating(emulator):
    import threading

    ids: list[str] = []
    errors: list[BaseException] = []

    def writer(n: int) -> None:
        try:
            acc = make_account(emulator)
            made = acc.bulk_create(folder=acc.contacts, items=[
                Contact(folder=acc.contacts, display_name=f"T{n}-{i}") for i in range(25)])
            ids.extend(r.id for r in made)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert errors == []
    assert len(set(ids)) == 100
    assert make_account(emulator).contacts.all().count() == 100
