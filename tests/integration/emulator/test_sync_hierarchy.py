"""SyncFolderHierarchy through exchangelib: the first sync lists the folder tree, later syncs
report created, renamed and deleted folders, and the state survives a restart."""

from __future__ import annotations

import pytest
from exchangelib.errors import ErrorInvalidSyncStateData
from exchangelib.folders import Contacts

from .conftest import make_account


def sync(folder, **kwargs) -> list[tuple[str, str, object]]:
    """(change type, folder id, folder or FolderId) since folder.folder_sync_state."""
    return [(change, f.id, f) for change, f in folder.sync_hierarchy(**kwargs)]


def test_first_hierarchy_sync_lists_the_folders_below_the_sync_folder(account):
    got = sync(account.msg_folder_root)

    assert {c for c, _, _ in got} == {"create"}
    names = {f.name for _, _, f in got}
    assert {"Contacts", "Inbox", "Deleted Items"} <= names
    contacts = next(f for _, _, f in got if f.name == "Contacts")
    assert contacts.id == account.contacts.id
    assert contacts.folder_class == "IPF.Contact"
    assert sync(account.msg_folder_root) == []


def test_hierarchy_sync_reports_created_renamed_and_deleted_folders(account):
    root = account.contacts
    keep = Contacts(parent=root, name="Keep")
    keep.save()
    doomed = Contacts(parent=root, name="Doomed")
    doomed.save()
    first = sync(root)
    assert {(c, f.name) for c, _, f in first} == {("create", "Keep"), ("create", "Doomed")}

    new = Contacts(parent=keep, name="Nested")
    new.save()
    keep.name = "Kept"
    keep.save(update_fields=["name"])
    doomed_id = doomed.id
    doomed.delete()

    got = {(c, i): f for c, i, f in sync(root)}
    assert set(got) == {("create", new.id), ("update", keep.id), ("delete", doomed_id)}
    assert got[("update", keep.id)].name == "Kept"
    assert got[("create", new.id)].name == "Nested"


def test_a_hierarchy_sync_state_survives_a_restart_and_a_bad_one_is_rejected(emulator, account):
    root = account.contacts
    sync(root)
    state = root.folder_sync_state

    emulator.restart()
    account = make_account(emulator)
    added = Contacts(parent=account.contacts, name="After restart")
    added.save()

    got = sync(account.contacts, sync_state=state)
    assert [(c, i) for c, i, _ in got] == [("create", added.id)]

    with pytest.raises(ErrorInvalidSyncStateData):
        sync(account.contacts, sync_state="bm90IGEgc3luYyBzdGF0ZQ==")
