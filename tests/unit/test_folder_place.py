"""Where a mailbox's sync folder is: under its Contacts, a public folder ("public:A/B"), or
under another mailbox's Contacts (``folder_owner``); validated, and refused over Graph."""

from __future__ import annotations

import pytest

from crmsync.cli.config_check import effective_policy
from tests.unit.test_mailbox_access import BASE, load, problem


def test_a_public_folder_and_a_delegate_folder_read_clearly(tmp_path):
    s = load(tmp_path, BASE + """
[[mailbox]]
address = "alice@example.com"
folder = " Public: /Company / Contacts/ "
[[mailbox]]
address = "bob@example.com"
folder = "Team"
folder_owner = "Boss@Example.com"
[[mailbox]]
address = "carol@example.com"
""", env={"SVC_PW": "x"})
    alice, bob, carol = (s.mailbox(a) for a in ("alice@example.com", "bob@example.com", "carol@example.com"))
    assert (alice.folder, alice.public_folder, alice.folder_path, alice.folder_owner) == \
        ("public:Company/Contacts", True, "Company/Contacts", None)
    assert alice.folder_place == "public folders/Company/Contacts"
    assert (bob.folder, bob.public_folder, bob.folder_path, bob.folder_owner) == ("Team", False, "Team", "Boss@Example.com")
    assert bob.folder_place == "Boss@Example.com's Contacts/Team"
    assert (carol.public_folder, carol.folder_owner, carol.folder_place) == (False, None, "Contacts/CRM Accounts")
    rows = {key: (value, source) for key, value, source in effective_policy(s, "bob@example.com")}
    assert rows["folder"] == ("Team", "mailbox") and rows["folder_owner"] == ("Boss@Example.com", "mailbox")


@pytest.mark.parametrize(("extra", "expected"), [
    ('folder = "public:"\n', "config key mailbox[0].folder: must be a folder path"),
    ('folder = "public:A//B"\n', "or 'public:Company/Contacts' (a public folder)"),
    ('folder_owner = "not an address"\n', "config key mailbox[0].folder_owner"),
    ('folder = "public:A"\nfolder_owner = "boss@example.com"\n', "a public folder has no owner"),
    ('folder_owner = "BOB@example.com"\n', "is this mailbox itself"),
    ('api = "graph"\nfolder = "public:Company/Contacts"\n',
     "bob@example.com: folder 'public:Company/Contacts' is a public folder, and Microsoft Graph has no public folders"),
    ('api = "graph"\nfolder_owner = "boss@example.com"\n', "bob@example.com: folder_owner needs api = 'ews'"),
])
def test_bad_folder_places_name_the_mailbox_and_the_key(tmp_path, extra, expected):
    text = BASE + """
tenant_id = "t"
client_id = "c"
[[mailbox]]
address = "bob@example.com"
""" + extra
    assert expected in problem(tmp_path, text)


def test_the_container_opens_each_folder_where_its_mailbox_says(tmp_path, monkeypatch):
    from crmsync.adapters.exchange.ews import connect as ews
    from crmsync.bootstrap import Container

    opened: dict[str, tuple] = {}
    monkeypatch.setattr(ews, "connect", lambda settings, address: ("own", address, settings.access))
    monkeypatch.setattr(ews, "connect_owner", lambda settings, owner: ("delegate", owner, settings.username))

    def open_folder(account, path, create=True, *, public=False, label=None):
        opened[label] = (account, path, public, create)
        return object()
    monkeypatch.setattr(ews, "open_folder", open_folder)
    s = load(tmp_path, BASE + """
[[mailbox]]
address = "alice@example.com"
folder = "public:Company/Contacts"
[[mailbox]]
address = "bob@example.com"
folder = "Team"
folder_owner = "boss@example.com"
username = "bob@example.com"
create_folder = false
[[mailbox]]
address = "carol@example.com"
""", env={"SVC_PW": "x"})
    c = Container(s)
    for address in ("alice@example.com", "bob@example.com", "carol@example.com"):
        c.exchange_account(address)
    assert opened == {
        "alice@example.com": (("own", "alice@example.com", "impersonation"), "Company/Contacts", True, True),
        "bob@example.com": (("delegate", "boss@example.com", "bob@example.com"), "Team", False, False),
        "carol@example.com": (("own", "carol@example.com", "impersonation"), "CRM Accounts", False, True),
    }
