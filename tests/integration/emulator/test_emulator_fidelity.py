"""EWS fidelity (issue 11), each tried with exchangelib over HTTP as a client would."""

from __future__ import annotations

import pytest
from exchangelib import Contact, ExtendedProperty, Folder, Message
from exchangelib.errors import ErrorFolderNotFound, ErrorInvalidOperation, ErrorItemNotFound
from exchangelib.ewsdatetime import UTC, EWSDate, EWSDateTime, EWSTimeZone
from exchangelib.folders import Contacts, Messages, PublicFoldersRoot
from exchangelib.indexed_properties import EmailAddress, ImAddress, PhoneNumber, PhysicalAddress
from exchangelib.properties import DistinguishedFolderId
from exchangelib.services import GetFolder

BERLIN = EWSTimeZone("Europe/Berlin")


class CrmFlag(ExtendedProperty):
    distinguished_property_set_id = "PublicStrings"
    property_name = "CrmFlag"
    property_type = "Boolean"


class CrmWhen(ExtendedProperty):
    distinguished_property_set_id = "PublicStrings"
    property_name = "CrmWhen"
    property_type = "SystemTime"


class FolderTag(ExtendedProperty):
    distinguished_property_set_id = "PublicStrings"
    property_name = "CrmFolderTag"
    property_type = "String"


@pytest.fixture
def typed_props():
    Contact.register("crm_flag", CrmFlag)
    Contact.register("crm_when", CrmWhen)
    yield
    Contact.deregister("crm_flag")
    Contact.deregister("crm_when")


@pytest.fixture
def folder_tag():
    Folder.register("crm_tag", FolderTag)
    yield
    Folder.deregister("crm_tag")


# Every field of exchangelib's Contact a client can write (Contact.FIELDS minus the read-only ones,
# mime_content and attachments), with a value that is not the field's default.
WRITABLE = dict(
    subject="Subj", sensitivity="Private", body="b", categories=["A", "B"], importance="High", in_reply_to="x@y",
    reminder_due_by=EWSDateTime(2030, 1, 2, 3, 4, 5, tzinfo=BERLIN), reminder_is_set=True,
    reminder_minutes_before_start=30, culture="de-DE", file_as="F", file_as_mapping="LastCommaFirst",
    display_name="D", given_name="G", initials="I", middle_name="M", nickname="N", company_name="C",
    email_addresses=[EmailAddress(email="a@b.c", label="EmailAddress1")],
    physical_addresses=[PhysicalAddress(label="Home", city="X", street="S 1")],
    phone_numbers=[PhoneNumber(label="MobilePhone", phone_number="+1 555")], assistant_name="A",
    birthday=EWSDate(1980, 2, 29), business_homepage="http://x.example", children=["k"], companies=["c"],
    department="Dep", generation="Jr", im_addresses=[ImAddress(label="ImAddress1", im_address="im")],
    job_title="J", manager="Mg", mileage="1", office="O", postal_address_index="Home", profession="P",
    spouse_name="S", surname="Sur", wedding_anniversary=EWSDate(2000, 1, 1),
    crm_flag=True, crm_when=EWSDateTime(2024, 1, 1, 12, 0, 0, tzinfo=BERLIN),
)


def _norm(value):
    return sorted(value, key=repr) if isinstance(value, list) else value


def test_every_writable_contact_field_round_trips_on_create(account, typed_props):
    c = Contact(folder=account.contacts, **WRITABLE)
    c.save()
    got = account.contacts.get(id=c.id)
    wrong = {k: (v, getattr(got, k)) for k, v in WRITABLE.items() if _norm(getattr(got, k)) != _norm(v)}
    assert wrong == {}


def test_every_writable_contact_field_round_trips_on_update(account, typed_props):
    c = Contact(folder=account.contacts, display_name="x")
    c.save()
    wrong = {}
    for name, value in WRITABLE.items():
        setattr(c, name, value)
        c.save(update_fields=[name])
        got = getattr(account.contacts.get(id=c.id), name)
        if _norm(got) != _norm(value):
            wrong[name] = (value, got)
    assert wrong == {}


def test_reminder_is_set_false_and_boolean_property_false_round_trip(account, typed_props):
    c = Contact(folder=account.contacts, display_name="F", reminder_is_set=False, crm_flag=False)
    c.save()
    got = account.contacts.get(id=c.id)
    assert (got.reminder_is_set, got.crm_flag) == (False, False)
    assert account.contacts.filter(crm_flag=False).count() == 1


def test_date_times_come_back_in_utc(account):
    c = Contact(folder=account.contacts, display_name="T",
                reminder_due_by=EWSDateTime(2030, 6, 1, 12, 0, 0, tzinfo=BERLIN))
    c.save()
    got = account.contacts.get(id=c.id).reminder_due_by
    assert got == EWSDateTime(2030, 6, 1, 10, 0, 0, tzinfo=UTC)
    assert got.tzinfo == UTC


# -- the folder hierarchy --------------------------------------------------------------------

def test_root_and_top_of_information_store_as_exchange_names_them(account):
    root = account.root
    tois = account.msg_folder_root
    assert root.name == "root"
    assert tois.name == "Top of Information Store"
    assert tois.parent.id == root.id
    assert root.tree().startswith("root\n")
    assert account.contacts.absolute == "/root/Top of Information Store/Contacts"
    assert [p.name for p in account.inbox.parts] == ["root", "Top of Information Store", "Inbox"]
    assert account.root.tois.id == tois.id


def test_distinguished_folders_are_marked_as_such(account):
    fresh = make_account_like(account)
    by_name = {f.name: f for f in fresh.root.walk()}
    assert by_name["Contacts"].is_distinguished
    assert by_name["Inbox"].is_distinguished


def make_account_like(account):
    # A new Account object: a client that has no cached folder tree yet.
    from exchangelib import Account
    return Account(primary_smtp_address=account.primary_smtp_address, config=account.protocol.config,
                   autodiscover=False, access_type=account.access_type)


def test_folder_counts(account):
    Contacts(parent=account.contacts, name="Sub").save()
    account.bulk_create(folder=account.contacts, items=[
        Contact(folder=account.contacts, display_name=f"C{i}") for i in range(3)])
    account.bulk_create(folder=account.inbox, items=[
        Message(folder=account.inbox, subject="unread", is_read=False),
        Message(folder=account.inbox, subject="read", is_read=True)])
    fresh = make_account_like(account)
    assert (fresh.contacts.total_count, fresh.contacts.child_folder_count) == (3, 1)
    assert (fresh.inbox.total_count, fresh.inbox.unread_count) == (2, 1)
    assert fresh.msg_folder_root.child_folder_count == 11


def test_generic_folders_get_their_class_from_the_folder_class(account):
    Folder(parent=account.msg_folder_root, name="Plain").save()
    Folder(parent=account.msg_folder_root, name="People", folder_class="IPF.Contact").save()
    Folder(parent=account.msg_folder_root, name="Derived", folder_class="IPF.Contact.Custom").save()
    fresh = make_account_like(account)
    tois = fresh.msg_folder_root
    assert (type(tois / "Plain"), (tois / "Plain").folder_class) == (Messages, "IPF.Note")
    assert type(tois / "People") is Contacts
    Contact(folder=tois / "Derived", display_name="in a derived contacts folder").save()
    assert [c.display_name for c in (tois / "Derived").all()] == ["in a derived contacts folder"]


def test_update_folder_renames_and_refuses_a_sibling_name(account):
    a = Contacts(parent=account.contacts, name="A")
    a.save()
    Contacts(parent=account.contacts, name="B").save()
    a.name = "A2"
    a.save(update_fields=["name"])
    assert [f.name for f in make_account_like(account).contacts.children] == ["A2", "B"]
    from exchangelib.errors import ErrorFolderExists
    a.name = "b"
    with pytest.raises(ErrorFolderExists):
        a.save(update_fields=["name"])


def test_move_folder_keeps_its_items_and_subfolders(account):
    crm = Contacts(parent=account.contacts, name="CRM")
    crm.save()
    Contacts(parent=crm, name="Archive").save()
    c = Contact(folder=crm, display_name="moves along")
    c.save()
    crm.move(account.msg_folder_root)
    fresh = make_account_like(account)
    moved = fresh.msg_folder_root / "CRM"
    assert moved.id == crm.id
    assert moved.absolute == "/root/Top of Information Store/CRM"
    assert [f.name for f in moved.children] == ["Archive"]
    assert [x.display_name for x in moved.all()] == ["moves along"]
    assert [f.name for f in fresh.contacts.children] == []


def test_move_folder_refusals(account):
    from exchangelib.errors import ErrorFolderExists, ErrorMoveCopyFailed, ErrorMoveDistinguishedFolder
    crm = Contacts(parent=account.contacts, name="CRM")
    crm.save()
    below = Contacts(parent=crm, name="Below")
    below.save()
    Contacts(parent=account.msg_folder_root, name="crm").save()
    with pytest.raises(ErrorMoveDistinguishedFolder):
        account.contacts.move(account.inbox)
    with pytest.raises(ErrorMoveCopyFailed):
        crm.move(below)
    with pytest.raises(ErrorFolderExists):
        crm.move(account.msg_folder_root)


def test_extended_properties_on_folders(account, folder_tag):
    f = Contacts(parent=account.contacts, name="Tagged", crm_tag="v1")
    f.save()
    assert list(make_account_like(account).contacts.children)[0].crm_tag == "v1"
    f.crm_tag = "v2"
    f.save(update_fields=["crm_tag"])
    assert list(make_account_like(account).contacts.children)[0].crm_tag == "v2"
    f.crm_tag = None
    f.save(update_fields=["crm_tag"])
    assert list(make_account_like(account).contacts.children)[0].crm_tag is None


def test_empty_folder(account):
    sub = Contacts(parent=account.contacts, name="Sub")
    sub.save()
    Contact(folder=sub, display_name="in sub").save()
    account.bulk_create(folder=account.contacts, items=[
        Contact(folder=account.contacts, display_name=f"C{i}") for i in range(3)])
    account.contacts.empty(delete_sub_folders=False)
    assert account.contacts.all().count() == 0
    fresh = make_account_like(account)
    assert [f.name for f in fresh.contacts.children] == ["Sub"]
    assert (fresh.contacts / "Sub").all().count() == 1
    account.contacts.empty(delete_sub_folders=True)
    assert [f.name for f in make_account_like(account).contacts.children] == []


def test_empty_folder_refuses_to_delete_distinguished_subfolders(account):
    from exchangelib.errors import ErrorCannotEmptyFolder
    with pytest.raises(ErrorCannotEmptyFolder):
        account.msg_folder_root.empty(delete_sub_folders=True)
    assert make_account_like(account).contacts.name == "Contacts"


def test_missing_user_configuration_is_item_not_found(account):
    with pytest.raises(ErrorItemNotFound):
        account.inbox.get_user_configuration(name="CRM.Settings")


def test_public_folders_root_of_a_mailbox_without_public_folders(account):
    with pytest.raises(ErrorFolderNotFound):
        account.public_folders_root  # noqa: B018 - the lookup is the test
    folder = PublicFoldersRoot(account=account, _distinguished_id=DistinguishedFolderId(id="publicfoldersroot"))
    [answer] = list(GetFolder(account=account).call(folders=[folder], additional_fields=[], shape="IdOnly"))
    from exchangelib.errors import ErrorNoPublicFolderReplicaAvailable
    assert isinstance(answer, ErrorNoPublicFolderReplicaAvailable)


def test_find_people_and_get_persona_are_refused_as_invalid_operations(account):
    Contact(folder=account.contacts, display_name="Person").save()
    with pytest.raises(ErrorInvalidOperation):
        list(account.contacts.people())
    from exchangelib.services import GetPersona
    with pytest.raises(ErrorInvalidOperation):
        GetPersona(account=account).get(personas=["AAMkADEzAGRlZmF1bHQ="])
