"""--public-folders: a public folder tree every mailbox reaches through exchangelib's
``account.public_folders_root`` (the distinguished id ``publicfoldersroot``), with contacts
folders that take the same item operations as a mailbox's own folders."""

from __future__ import annotations

import pytest
from exchangelib import Contact, EWSDateTime
from exchangelib.errors import ErrorFolderNotFound
from exchangelib.folders import Folder
from exchangelib.indexed_properties import EmailAddress

from .conftest import make_account


@pytest.fixture
def public_emulator(start_emulator):
    return start_emulator(public_folders=True)


def test_every_mailbox_sees_one_public_tree_and_its_contacts(public_emulator):
    alice = make_account(public_emulator, "alice@example.com")
    bob = make_account(public_emulator, "bob@example.com")
    root = alice.public_folders_root
    Folder(parent=root, name="Company", folder_class="IPF.Contact").save()
    alice.root.clear_cache()
    company = alice.public_folders_root // "Company"
    Folder(parent=company, name="Contacts", folder_class="IPF.Contact").save()
    alice.root.clear_cache()
    shared = alice.public_folders_root // "Company" // "Contacts"
    assert shared.folder_class == "IPF.Contact"

    made = Contact(account=alice, folder=shared, display_name="Ada Public", given_name="Ada", surname="Public",
                   email_addresses=[EmailAddress(email="ada@pub.example", label="EmailAddress1")])
    made.save()
    # bob finds the same folder and the contact alice made, and can change it
    bob_folder = bob.public_folders_root // "Company" // "Contacts"
    assert bob_folder.id == shared.id
    (seen,) = list(bob_folder.all())
    assert (seen.given_name, seen.surname) == ("Ada", "Public")
    seen.surname = "Shared"
    seen.save(update_fields=["surname"])
    assert alice.fetch(ids=[(made.id, None)]).__next__().surname == "Shared"
    # a FindItem restriction and SyncFolderItems work there as in a mailbox folder
    assert [c.id for c in shared.filter(surname="Shared")] == [made.id]
    changes = list(shared.sync_items(sync_state=None))
    assert any(kind == "create" and item.id == made.id for kind, item in changes)
    # deleting (move to Deleted Items) takes it out of the public folder, into its dumpster
    since = EWSDateTime.now(tz=alice.default_timezone)
    seen.refresh()
    seen.move_to_trash()
    assert list(shared.all()) == []
    assert list(alice.trash.filter(datetime_received__gte=since)) == []
    # the mailboxes' own trees know nothing of it
    with pytest.raises(ErrorFolderNotFound):
        alice.contacts // "Company"


def test_without_the_option_the_root_is_still_missing(start_emulator):
    alice = make_account(start_emulator(), "alice@example.com")
    with pytest.raises(ErrorFolderNotFound):
        alice.public_folders_root  # noqa: B018 - the lookup is the test
