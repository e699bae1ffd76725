"""The first-sync gate with the real producer process (and a Celery worker, Redis, the EWS
emulator): a mailbox whose folder is not empty and was never synced is not touched until
`crmsync sync --mailbox M --approve-plan`; `crmsync status` and the producer's log say it waits;
the other mailbox syncs meanwhile.
"""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from exchangelib import BASIC, DELEGATE, Account, Configuration, Credentials
from exchangelib.folders import Contacts

from crmsync.adapters.exchange.ews.seed import seed_contacts
from tests.support.pipeline import FOLDER, MAILBOX, SERVICE_PASSWORD, SERVICE_USER, Pipeline, wait_until

OTHER = SERVICE_USER        # a second mailbox of the emulator, with an empty (new) folder


@pytest.fixture
def pipeline(tmp_path, redis_server):
    # no first_sync key in either [[mailbox]]: the shipped default ("approve") holds alice's folder
    p = Pipeline(tmp_path, "sqlite", broker_url=redis_server.url(redis_server.new_database()), first_sync=None)
    try:
        text = p.config_path.read_text()
        assert "first_sync" not in text
        p.config_path.write_text(text.replace(
            "[sync]\n", f'[[mailbox]]\naddress = "{OTHER}"\nfolder = "{FOLDER}"\n[sync]\n', 1))
        yield p
    finally:
        p.close()


def folder_of(p: Pipeline, address: str, password: str):
    config = Configuration(service_endpoint=p.emulator.endpoint, credentials=Credentials(address, password),
                           auth_type=BASIC)
    account = Account(address, config=config, autodiscover=False, access_type=DELEGATE)

    def find():
        account.root.clear_cache()
        return next((f for f in account.contacts.children if f.name == FOLDER), None)
    return find


def items(folder) -> list[tuple[str, str]]:
    return sorted((c.id, c.changekey) for c in folder.all().only("id", "changekey"))


def test_by_default_a_non_empty_never_synced_folder_waits_for_approval_while_the_other_mailbox_syncs(pipeline):
    p = pipeline
    with p.crm.engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO accounts (account_no, company_name, first_name, last_name, email, "
                             "is_active) VALUES (:no, :co, :first, :last, :email, :active)"),
                     [{"no": f"G-{i}", "co": f"Gate Co {i}", "first": "Crm", "last": f"Person{i}",
                       "email": f"crm{i}@gate.example", "active": True} for i in range(2)])
    # alice's folder, made in Outlook before crmsync ever ran, holds 3 contacts of her own
    account = p.outlook_account()
    folder = Contacts(parent=account.contacts, name=FOLDER)
    folder.save()
    seed_contacts(folder, [{"first_name": "Own", "last_name": f"Contact{i}", "email": f"own{i}@alice.example"}
                           for i in range(3)])
    before = items(folder)

    p.start_worker()
    p.start_producer()
    other = wait_until(folder_of(p, OTHER, SERVICE_PASSWORD), 90, what=f"{OTHER}'s folder")
    wait_until(lambda: len(items(other)) == 2, 120, what=f"the first sync of {OTHER}")
    def status() -> str:
        return " ".join(p.cli("status").stdout.split())      # rich wraps long lines
    wait_until(lambda: "waiting for approval" in status(), 60, what="status to show the waiting mailbox")
    assert (f"waiting: {MAILBOX}: mailbox {MAILBOX}: first sync waiting for approval: its folder holds 3 "
            "item(s)") in status()
    check = p.cli("status", "--check", check=False)
    assert check.returncode == 1 and "NEEDS ATTENTION" in check.stdout and "--approve-plan" in check.stdout
    assert "producer.first_sync_held" in p.log("producer")
    p.settle()
    # not touched: alice's items unchanged, none of her contacts in the CRM, no link of hers
    assert items(folder) == before
    assert len(p.crm.query("SELECT id FROM accounts")) == 2
    assert p.state("SELECT count(*) AS n FROM links WHERE mailbox = :mb", mb=MAILBOX)[0]["n"] == 0

    # a CRM change meanwhile reaches the other mailbox only
    p.crm.execute("UPDATE accounts SET company_name = 'Gate Co Renamed' WHERE account_no = 'G-0'")
    wait_until(lambda: any(c.company_name == "Gate Co Renamed" for c in other.all()), 60,
               what=f"the change in {OTHER}")
    assert items(folder) == before

    approved = p.cli("sync", "--mailbox", MAILBOX, "--approve-plan").stdout
    assert "approved (3 create in CRM, 2 create in Exchange)" in " ".join(approved.split())
    # the producer checks a held mailbox again within a minute
    wait_until(lambda: len(items(folder)) == 5, 180, what=f"the first sync of {MAILBOX} after approval")
    wait_until(lambda: len(p.crm.query("SELECT id FROM accounts")) == 5 and len(items(other)) == 5, 120,
               what="alice's contacts in the CRM and in the other mailbox")
    p.settle()
    assert "waiting for approval" not in status() and "waiting: " not in status()
    assert not p.dead_events()
