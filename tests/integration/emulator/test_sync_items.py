"""SyncFolderItems through exchangelib: first sync, incremental changes, paging, Ignore, shapes,
and a sync state that keeps working after the emulator restarts on the same data."""

from __future__ import annotations

import uuid

import pytest
from exchangelib import Contact
from exchangelib.errors import ErrorInvalidSyncStateData
from exchangelib.folders import Contacts

from .conftest import admin_call, make_account, spawn_emulator


@pytest.fixture
def folder(account):
    """A fresh contacts folder under Contacts, so each test sees only its own items."""
    f = Contacts(parent=account.contacts, name=f"sync-{uuid.uuid4().hex[:8]}")
    f.save()
    return f


def add(folder, *names: str) -> list[Contact]:
    items = []
    for name in names:
        c = Contact(folder=folder, given_name=name, surname="Sync", display_name=f"{name} Sync")
        c.save()
        items.append(c)
    return items


def changes(folder, **kwargs) -> list[tuple[str, str, Contact]]:
    """(change type, item id, item or ItemId) for every change since folder.item_sync_state."""
    out = []
    for change, item in folder.sync_items(**kwargs):
        out.append((change, item.id, item))
    return out


def test_first_sync_reports_every_contact_as_create_and_a_second_sync_nothing(folder):
    created = add(folder, "Ann", "Ben", "Cid")

    first = changes(folder)
    assert sorted((c, i) for c, i, _ in first) == sorted(("create", c.id) for c in created)
    assert {item.given_name for _, _, item in first} == {"Ann", "Ben", "Cid"}
    assert all(item.changekey for _, _, item in first)

    assert changes(folder) == []


def test_incremental_sync_reports_create_update_and_delete_since_the_state(folder):
    ann, ben, cid = add(folder, "Ann", "Ben", "Cid")
    changes(folder)

    (dan,) = add(folder, "Dan")
    ben.given_name = "Benjamin"
    ben.save(update_fields=["given_name"])
    cid_id = cid.id
    cid.delete()

    got = {(c, i): item for c, i, item in changes(folder)}
    assert set(got) == {("create", dan.id), ("update", ben.id), ("delete", cid_id)}
    assert got[("update", ben.id)].given_name == "Benjamin"
    assert got[("update", ben.id)].changekey == ben.changekey
    assert got[("create", dan.id)].given_name == "Dan"
    assert ann.id not in {i for _, i in got}


def test_changes_collapse_per_item_created_and_updated_is_one_create_created_and_deleted_is_nothing(folder):
    add(folder, "Ann")
    changes(folder)

    (eve,) = add(folder, "Eve")
    eve.surname = "Edited"
    eve.save(update_fields=["surname"])
    eve.surname = "Edited twice"
    eve.save(update_fields=["surname"])
    (ghost,) = add(folder, "Ghost")
    ghost_id = ghost.id
    ghost.delete()

    got = changes(folder)
    assert [(c, i) for c, i, _ in got] == [("create", eve.id)]
    assert got[0][2].surname == "Edited twice"
    assert ghost_id not in {i for _, i, _ in got}


def test_moving_a_contact_out_is_a_delete_here_and_a_create_there(account, folder):
    other = Contacts(parent=account.contacts, name=f"other-{uuid.uuid4().hex[:8]}")
    other.save()
    (ann,) = add(folder, "Ann")
    changes(folder)
    changes(other)

    old_id = ann.id
    ann.move(to_folder=other)

    assert [(c, i) for c, i, _ in changes(folder)] == [("delete", old_id)]
    moved = changes(other)
    assert [(c, i) for c, i, _ in moved] == [("create", ann.id)]
    assert moved[0][2].given_name == "Ann"


def test_max_changes_returned_pages_the_changes_and_the_pages_add_up(emulator, folder):
    created = add(folder, *[f"P{i}" for i in range(7)])
    admin_call(emulator, "POST", "stats/reset")

    got = changes(folder, max_changes_returned=3)

    assert sorted(i for _, i, _ in got) == sorted(c.id for c in created)
    assert all(c == "create" for c, _, _ in got)
    # 7 changes at 3 per response: 3 + 3 + 1, each response but the last saying more remain.
    assert admin_call(emulator, "GET", "stats")["requests"]["SyncFolderItems"] == 3


def test_one_page_of_max_changes_returned_says_it_does_not_include_the_last_item(account, folder):
    from exchangelib.properties import FieldPath
    from exchangelib.services import SyncFolderItems

    add(folder, "A", "B", "C")
    svc = SyncFolderItems(account=account)
    shape_fields = {FieldPath(field=f) for f in folder.allowed_item_fields(version=account.version)}
    page = list(svc.call(folder=folder, shape="IdOnly", additional_fields=shape_fields, sync_state=None,
                         ignore=None, max_changes_returned=2, sync_scope=None))
    assert len(page) == 2 and svc.includes_last_item_in_range is False
    rest = list(svc.call(folder=folder, shape="IdOnly", additional_fields=shape_fields,
                         sync_state=svc.sync_state, ignore=None, max_changes_returned=2, sync_scope=None))
    assert len(rest) == 1 and svc.includes_last_item_in_range is True
    assert {i.id for _, i in page} | {i.id for _, i in rest} == {c.id for c in folder.all()}


def test_ignored_items_are_left_out_of_the_sync(folder):
    ann, ben = add(folder, "Ann", "Ben")

    got = changes(folder, ignore=[ann])

    assert [(c, i) for c, i, _ in got] == [("create", ben.id)]


def test_only_fields_limits_what_a_synced_contact_carries(folder):
    add(folder, "Ann")

    ((change, _, item),) = changes(folder, only_fields=["given_name"])

    assert change == "create"
    assert item.given_name == "Ann"
    assert item.surname is None and item.display_name is None


def test_a_sync_state_keeps_working_after_the_emulator_restarts(emulator, account):
    folder = Contacts(parent=account.contacts, name="survives-restart")
    folder.save()
    before = add(folder, "Ann", "Ben")
    changes(folder)
    state = folder.item_sync_state

    emulator.restart()
    account = make_account(emulator)
    folder = account.contacts // "survives-restart"
    (cid,) = add(folder, "Cid")
    ben = folder.get(id=before[1].id)
    ben.given_name = "Benjamin"
    ben.save(update_fields=["given_name"])

    got = changes(folder, sync_state=state)

    assert sorted((c, i) for c, i, _ in got) == sorted([("create", cid.id), ("update", ben.id)])


def test_a_sync_state_survives_the_emulator_process_being_killed_and_started_again(tmp_path):
    data = tmp_path / "killed"
    proc = spawn_emulator(data)
    try:
        account = make_account(proc)
        folder = Contacts(parent=account.contacts, name="survives-kill")
        folder.save()
        (ann,) = add(folder, "Ann")
        changes(folder)
        state = folder.item_sync_state
    finally:
        proc.proc.kill()  # a crash, not a clean stop: committed changes and states must survive
        proc.proc.wait()

    proc = spawn_emulator(data)
    try:
        account = make_account(proc)
        folder = account.contacts // "survives-kill"
        (ben,) = add(folder, "Ben")
        ann = folder.get(id=ann.id)
        ann_id = ann.id
        ann.delete()

        got = changes(folder, sync_state=state)
    finally:
        proc.stop()

    assert sorted((c, i) for c, i, _ in got) == sorted([("create", ben.id), ("delete", ann_id)])


def test_a_corrupt_sync_state_is_rejected_as_exchange_does(folder):
    add(folder, "Ann")
    changes(folder)
    state = folder.item_sync_state
    tampered = state[:-4] + ("AAAA" if state[-4:] != "AAAA" else "BBBB")

    with pytest.raises(ErrorInvalidSyncStateData):
        changes(folder, sync_state=tampered)


def test_a_sync_state_of_another_folder_is_rejected(account, folder):
    add(folder, "Ann")
    changes(folder)

    with pytest.raises(ErrorInvalidSyncStateData):
        list(account.contacts.sync_items(sync_state=folder.item_sync_state))
