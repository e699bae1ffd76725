"""The EWS adapter on a sync folder that is not under the mailbox's own Contacts: a public
folder (``folder = "public:A/B"``) and a folder in another mailbox reached by delegate access
(``folder_owner``). The shared ExchangeSide contract runs on each, against the emulator
started with ``--public-folders``; then what is their own: the missing-folder errors naming the
mailbox and the path, and a server without public folders."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from crmsync.adapters.exchange.ews import connect as ews_connect
from crmsync.adapters.exchange.ews.connect import open_folder
from crmsync.adapters.exchange.ews.feed import ExchangeFeed
from crmsync.adapters.exchange.ews.side import EwsExchange
from crmsync.errors import MailboxUnavailable
from tests.contract.exchange_side_contract import ExchangeSideContract
from tests.contract.test_exchange_adapter import MAX_WAIT, _EwsFaults, _EwsUser, folder_ids
from tests.support.emulator_proc import EmulatorProcess, start_emulator
from tests.support.exchange_settings import exchange_settings

ALICE, ALICE_PW = "alice@example.com", "secret1"
BOB, BOB_PW = "bob@example.com", "secret2"
CAROL, CAROL_PW = "carol@example.com", "secret3"


@pytest.fixture(scope="module")
def emulator_proc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmulatorProcess]:
    emu = start_emulator(tmp_path_factory.mktemp("ews-shared"), {ALICE: ALICE_PW, BOB: BOB_PW, CAROL: CAROL_PW},
                         extra_args=["--public-folders", "--delegate", f"{ALICE}:{BOB}"])
    try:
        yield emu
    finally:
        emu.stop()


def _settings(emu: EmulatorProcess, user: str, password: str):
    return exchange_settings(emu.endpoint, auth="basic", username=user, password=password, access="delegate",
                             max_wait=MAX_WAIT, timeout_s=30)


@pytest.fixture(scope="module")
def bob_account(emulator_proc):
    """bob's own mailbox: public folders are reached through it."""
    return ews_connect.connect(_settings(emulator_proc, BOB, BOB_PW), BOB)


@pytest.fixture(scope="module")
def alice_as_bob(emulator_proc):
    """alice's mailbox, opened by bob's login (he is her delegate)."""
    return ews_connect.connect_owner(_settings(emulator_proc, BOB, BOB_PW), ALICE)


class TestPublicFolderSide(ExchangeSideContract):
    """The port contract on a public contacts folder."""

    @pytest.fixture
    def folder(self, bob_account):
        return open_folder(bob_account, f"Company/CRM {uuid.uuid4().hex[:8]}", public=True, label=BOB)

    @pytest.fixture
    def side(self, bob_account, folder, emulator_proc):
        yield EwsExchange(bob_account, folder)
        emulator_proc.clear_faults()

    @pytest.fixture
    def user(self, folder):
        return _EwsUser(folder)

    @pytest.fixture
    def feed(self, bob_account, folder):
        return ExchangeFeed(bob_account, folder)

    @pytest.fixture
    def faults(self, emulator_proc):
        f = _EwsFaults(emulator_proc)
        yield f
        f.clear()


class TestDelegateFolderSide(ExchangeSideContract):
    """The port contract on a folder under another mailbox's Contacts (bob, alice's delegate)."""

    @pytest.fixture
    def folder(self, alice_as_bob):
        return open_folder(alice_as_bob, f"Team/CRM {uuid.uuid4().hex[:8]}", label=BOB)

    @pytest.fixture
    def side(self, alice_as_bob, folder, emulator_proc):
        yield EwsExchange(alice_as_bob, folder)
        emulator_proc.clear_faults()

    @pytest.fixture
    def user(self, folder):
        return _EwsUser(folder)

    @pytest.fixture
    def feed(self, alice_as_bob, folder):
        return ExchangeFeed(alice_as_bob, folder)

    @pytest.fixture
    def faults(self, emulator_proc):
        f = _EwsFaults(emulator_proc)
        yield f
        f.clear()


def test_every_mailbox_reaches_the_same_public_folder(emulator_proc, bob_account):
    path = f"Company/Shared {uuid.uuid4().hex[:8]}"
    bobs = open_folder(bob_account, path, public=True, label=BOB)
    created = EwsExchange(bob_account, bobs).create("account:PUB-1", {"first_name": "Pia"})
    carol = ews_connect.connect(_settings(emulator_proc, CAROL, CAROL_PW), CAROL)
    carols = open_folder(carol, path, public=True, create=False, label=CAROL)
    assert carols.id == bobs.id and folder_ids(carols) == {created.item_id}
    # and it is not under anyone's Contacts
    assert ews_connect.find_folder(bob_account, path) is None


def test_a_missing_public_folder_names_the_mailbox_and_the_path(bob_account):
    with pytest.raises(MailboxUnavailable) as info:
        open_folder(bob_account, "Company/Nowhere", public=True, create=False, label=BOB)
    message = str(info.value)
    assert f"mailbox {BOB}" in message and "'Company/Nowhere'" in message and "under the public folders" in message


def test_a_missing_delegate_folder_names_the_mailbox_the_owner_and_the_path(alice_as_bob):
    with pytest.raises(MailboxUnavailable) as info:
        open_folder(alice_as_bob, "Team/Nowhere", create=False, label=BOB)
    message = str(info.value)
    assert f"mailbox {BOB}" in message and f"under {ALICE}'s Contacts" in message and "'Team/Nowhere'" in message


def test_a_folder_owner_without_delegate_access_is_an_unavailable_mailbox(emulator_proc):
    carol_on_alice = ews_connect.connect_owner(_settings(emulator_proc, CAROL, CAROL_PW), ALICE)
    with pytest.raises(MailboxUnavailable):
        open_folder(carol_on_alice, "Team", label=CAROL)


def test_a_server_without_public_folders_is_an_unavailable_mailbox(tmp_path):
    emu = start_emulator(tmp_path / "nopf", {ALICE: ALICE_PW})
    try:
        account = ews_connect.connect(_settings(emu, ALICE, ALICE_PW), ALICE)
        with pytest.raises(MailboxUnavailable, match=r"mailbox alice@example.com: the Exchange server has no "
                                                     r"public folders \(folder 'public:Company/Contacts'\)"):
            open_folder(account, "Company/Contacts", public=True, label=ALICE)
    finally:
        emu.stop()


def test_the_doctors_probe_finds_a_public_and_a_delegate_folder_without_creating_them(emulator_proc, bob_account,
                                                                                      alice_as_bob):
    from crmsync.adapters.exchange.ews.probe import probe_mailbox

    open_folder(bob_account, "Company/Probed", public=True, label=BOB)
    open_folder(alice_as_bob, "Team/Probed", label=BOB)
    settings = _settings(emulator_proc, BOB, BOB_PW)
    assert probe_mailbox(settings, BOB, "public:Company/Probed") == {"kind": "ok"}
    assert probe_mailbox(settings, BOB, "Team/Probed", owner=ALICE) == {"kind": "ok"}
    missing = probe_mailbox(settings, BOB, "public:Company/Unprobed")
    assert missing["kind"] == "folder" and "'Company/Unprobed'" in missing["detail"]
    assert probe_mailbox(settings, BOB, "Team/Unprobed", owner=ALICE)["kind"] == "folder"
    assert ews_connect.find_folder(alice_as_bob, "Team/Unprobed") is None


def test_a_delegate_right_withdrawn_later_makes_the_syncing_mailbox_unavailable_not_the_owner(tmp_path):
    """The worker and the producer record MailboxUnavailable.mailbox for status: it must be the
    [[mailbox]] that syncs the folder (bob), never the folder's owner (alice)."""
    emu = start_emulator(tmp_path / "withdrawn", {ALICE: ALICE_PW, BOB: BOB_PW},
                         extra_args=["--delegate", f"{ALICE}:{BOB}"])
    try:
        on_alice = ews_connect.connect_owner(_settings(emu, BOB, BOB_PW), ALICE)
        folder = open_folder(on_alice, "Team", label=BOB)
        side = EwsExchange(on_alice, folder, mailbox=BOB)
        feed = ExchangeFeed(on_alice, folder, mailbox=BOB)
        created = side.create("account:W-1", {"first_name": "Wanda"})
        emu.extra_args[:] = []                     # alice withdraws bob's delegate access
        emu.restart()
        for call in (lambda: side.read(created.item_id), lambda: feed.changes(None)):
            with pytest.raises(MailboxUnavailable) as info:
                call()
            assert info.value.mailbox == BOB and f"mailbox {BOB}" in str(info.value)
    finally:
        emu.stop()
