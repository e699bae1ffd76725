"""The remaining per-mailbox policy options through the real pipeline (issue 9): `enabled = false`,
`categories`, `direction = "exchange-to-crm"` and the `unlink` delete rules. One stack (emulator,
Redis, producer, Celery worker) per CRM backend for the module, with two mailboxes: alice, whose
policy each test sets (config rewritten, worker restarted), and bob, disabled throughout."""

from __future__ import annotations

import uuid

import pytest
from exchangelib import BASIC, DELEGATE, Account, Configuration, Contact, Credentials, Folder
from exchangelib.indexed_properties import EmailAddress

from tests.e2e.test_sync_policy_e2e import (
    BEGIN,
    END,
    account,
    contact_by_email,
    in_trash,
    insert_account,
    outlook_edit,
    set_policy,
)
from tests.support.pipeline import FOLDER, Pipeline, wait_until

BOB, BOB_PASSWORD = "bob@example.com", "bob-pw"


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def pipeline(request, tmp_path_factory, redis_server):
    p = Pipeline(tmp_path_factory.mktemp(f"e2e-options-{request.param}"), request.param,
                 broker_url=redis_server.url(redis_server.new_database()), extra_users={BOB: BOB_PASSWORD})
    try:
        text = p.config_path.read_text()
        alice = f'folder = "{FOLDER}"\nfirst_sync = "auto"\n'
        assert alice in text
        bob = f'[[mailbox]]\naddress = "{BOB}"\nfolder = "{FOLDER}"\nenabled = false\n'
        p.config_path.write_text(text.replace(alice, f"{alice}{BEGIN}{END}{bob}", 1))
        p.policy = None
        p.start_producer()
        p.outlook()
        yield p
    finally:
        p.close()


def bob_outlook(p: Pipeline) -> Account:
    config = Configuration(service_endpoint=p.emulator.endpoint, credentials=Credentials(BOB, BOB_PASSWORD),
                           auth_type=BASIC)
    return Account(BOB, config=config, autodiscover=False, access_type=DELEGATE)


def folder_named(acct: Account, name: str) -> Folder | None:
    acct.root.clear_cache()   # exchangelib caches the folder tree
    return next((f for f in acct.contacts.children if f.name == name), None)


def emails_in(folder: Folder) -> set[str]:
    return {e.email for c in folder.all() if isinstance(c, Contact) for e in (c.email_addresses or [])}


def test_a_disabled_mailbox_is_neither_read_nor_written_while_the_enabled_one_syncs(pipeline):
    p = pipeline
    set_policy(p, "")
    tag = uuid.uuid4().hex[:6]
    email = f"both.{tag}@enabled.example"
    no = insert_account(p, company_name=f"Enabled {tag}", first_name="En", last_name="Abled", email=email)
    wait_until(lambda: contact_by_email(p, email), 60, what="the CRM insert in alice's folder")
    p.settle()
    bob_account = bob_outlook(p)
    assert folder_named(bob_account, FOLDER) is None, "crmsync created a folder in the disabled mailbox"

    folder = Folder(parent=bob_account.contacts, name=FOLDER, folder_class="IPF.Contact")   # bob makes his own
    folder.save()
    own = f"own.{tag}@bob.example"
    Contact(account=bob_account, folder=folder, given_name="Bobs", surname="Own", display_name="Bobs Own",
            company_name=f"Bob Own {tag}", email_addresses=[EmailAddress(email=own)]).save()
    p.settle()
    mine = next(c for c in folder.all() if isinstance(c, Contact))
    outlook_edit(p, mine, job_title="Edited in bob's Outlook")                 # an edit in the disabled one
    p.crm.execute("UPDATE accounts SET job_title = 'Buyer' WHERE account_no = :no", no=no)
    wait_until(lambda: contact_by_email(p, email).job_title == "Buyer", 60, what="the CRM edit in alice's folder")
    p.settle()

    assert emails_in(folder) == {own}                                          # nothing pushed to bob
    assert p.crm.query("SELECT count(*) AS n FROM accounts WHERE email = :e", e=own)[0]["n"] == 0
    assert p.crm.query("SELECT count(*) AS n FROM accounts WHERE job_title = :t",
                       t="Edited in bob's Outlook")[0]["n"] == 0
    assert p.state("SELECT count(*) AS n FROM events WHERE mailbox = :m", m=BOB)[0]["n"] == 0
    assert p.state("SELECT count(*) AS n FROM links WHERE mailbox = :m", m=BOB)[0]["n"] == 0
    assert account(p, no)["job_title"] == "Buyer"


def test_pushed_contacts_carry_the_categories_and_a_users_own_category_survives_a_crm_edit(pipeline):
    p = pipeline
    set_policy(p, 'categories = ["CRM"]')
    email = f"cat.{uuid.uuid4().hex[:6]}@categories.example"
    no = insert_account(p, company_name="Category GmbH", first_name="Cat", last_name="Egory", email=email)
    contact = wait_until(lambda: contact_by_email(p, email), 60, what="the pushed contact")
    p.settle()
    assert list(contact.categories or []) == ["CRM"]

    outlook_edit(p, contact, categories=["CRM", "Golf partners"])              # the user adds their own
    p.settle()
    p.crm.execute("UPDATE accounts SET job_title = 'Treasurer' WHERE account_no = :no", no=no)
    wait_until(lambda: contact_by_email(p, email).job_title == "Treasurer", 60, what="the CRM edit in Outlook")
    p.settle()
    assert sorted(contact_by_email(p, email).categories or []) == ["CRM", "Golf partners"]
    assert account(p, no)["job_title"] == "Treasurer"
    assert p.dead_events() == []


def test_an_exchange_to_crm_mailbox_imports_outlook_edits_and_never_writes_the_folder(pipeline):
    p = pipeline
    set_policy(p, "")                                   # two-way first: the account gets its contact
    email = f"inbound.{uuid.uuid4().hex[:6]}@oneway.example"
    no = insert_account(p, company_name="Inbound Oy", first_name="In", last_name="Bound", email=email)
    contact = wait_until(lambda: contact_by_email(p, email), 60, what="the pushed contact")
    p.settle()

    set_policy(p, 'direction = "exchange-to-crm"')
    outlook_edit(p, contact, job_title="Harbour master")
    wait_until(lambda: account(p, no)["job_title"] == "Harbour master", 60, what="the Outlook edit in the CRM")
    p.settle()
    last = p.state("SELECT max(id) AS n FROM events")[0]["n"]
    writes = p.ews_writes()

    p.crm.execute("UPDATE accounts SET department = 'Docks' WHERE account_no = :no", no=no)
    crm_events = wait_until(lambda: p.state(
        "SELECT status, outcome FROM events WHERE source = 'crm' AND crm_key = :k AND id > :last "
        "AND status = 'applied'", k=f"account:{no}", last=last), 60, what="the CRM event applied or skipped")
    p.settle()
    assert crm_events
    assert contact_by_email(p, email).department is None                       # never reached the folder
    assert contact_by_email(p, email).job_title == "Harbour master"
    assert p.ews_writes() == writes                                             # not one EWS write
    assert p.dead_events() == []


def test_unlink_delete_rules_keep_the_other_side_and_unlink_the_pair(pipeline):
    p = pipeline
    set_policy(p, 'on_exchange_delete = "unlink"\non_crm_delete = "unlink"')
    tag = uuid.uuid4().hex[:6]
    emails = [f"un{n}.{tag}@unlink.example" for n in range(2)]
    numbers = [insert_account(p, company_name=f"Unlink {tag} {n}", first_name="U", last_name=f"N{n}", email=e)
               for n, e in enumerate(emails)]
    contacts = [wait_until(lambda e=e: contact_by_email(p, e), 60, what=f"contact {e}") for e in emails]
    p.settle()
    keys = [f"account:{no}" for no in numbers]

    def marked(key: str):
        rows = p.state("SELECT status FROM held_deletes WHERE mailbox = :m AND crm_key = :k",
                       m="alice@example.com", k=key)
        return rows if any(r["status"] == "unlinked" for r in rows) else None

    def deleted_link(key: str) -> bool:
        rows = p.state("SELECT deleted FROM links WHERE mailbox = :m AND crm_key = :k", m="alice@example.com", k=key)
        return bool(rows) and all(bool(r["deleted"]) for r in rows)

    account_, _ = p.outlook()
    account_.bulk_delete([contacts[0]], delete_type="MoveToDeletedItems")     # deleted in Outlook
    wait_until(lambda: marked(keys[0]), 60, what="the Outlook delete kept as unlinked")
    p.settle()
    assert account(p, numbers[0])["is_active"]                               # the CRM account untouched
    assert deleted_link(keys[0])

    p.crm.execute("UPDATE accounts SET is_active = false WHERE account_no = :no", no=numbers[1])  # CRM side
    wait_until(lambda: marked(keys[1]), 60, what="the CRM deactivation kept as unlinked")
    p.settle()
    assert contact_by_email(p, emails[1]) is not None                        # the contact stays in Outlook
    assert in_trash(p, emails[1]) == []
    assert deleted_link(keys[1])
    outcomes = {r["outcome"] for r in p.state("SELECT outcome FROM events WHERE crm_key IN (:a, :b) OR item_id = :i",
                                              a=keys[0], b=keys[1], i=contacts[0].id)}
    assert "unlinked" in outcomes and not {"deactivated-crm", "deleted-exchange", "deleted-crm"} & outcomes
    assert p.dead_events() == []
