"""The whole pipeline with ``[exchange] api = "graph"``: crmsync's producer and worker reach the
mailbox through the emulator's Microsoft Graph front door (msal token, HTTPS, delta feed). The
mailbox owner acts through Graph as well (Outlook on the web), with a token of their own app.
"""

from __future__ import annotations

import ssl
import uuid
from urllib.parse import quote

import httpx
import msal
import pytest
import requests

from tests.support.pipeline import FOLDER, GRAPH_APP, GRAPH_SECRET, GRAPH_TENANT, MAILBOX, Pipeline, wait_until

STAMP_ID = "String {00020329-0000-0000-C000-000000000046} Name crmsync-crm-key"


class Outlook:
    """The mailbox owner's client over Graph (plain httpx + msal)."""

    def __init__(self, p: Pipeline) -> None:
        session = requests.Session()
        session.verify, session.trust_env = p.graph_ca, False
        app = msal.ConfidentialClientApplication(GRAPH_APP, client_credential=GRAPH_SECRET,
                                                 authority=f"{p.emulator.base_url}/{GRAPH_TENANT}",
                                                 instance_discovery=False, http_client=session)
        token = app.acquire_token_for_client(scopes=["https://graph.microsoft.com/.default"])["access_token"]
        self.http = httpx.Client(base_url=p.emulator.graph_base + "/", verify=ssl.create_default_context(cafile=p.graph_ca), timeout=30,
                                 headers={"Authorization": f"Bearer {token}"})
        self.user = f"users/{MAILBOX}"

    def folder(self) -> str | None:
        folders = self.http.get(f"{self.user}/contactFolders", params={"$top": "100"}).json()["value"]
        return next((f["id"] for f in folders if f["displayName"] == FOLDER), None)

    def contacts(self) -> list[dict]:
        folder = self.folder()
        if folder is None:
            return []
        return self.http.get(f"{self.user}/contactFolders/{quote(folder, safe='')}/contacts",
                             params={"$top": "1000", "$expand": f"singleValueExtendedProperties($filter=id eq"
                                                                  f" '{STAMP_ID}')"}).json()["value"]

    def by_email(self, email: str) -> list[dict]:
        return [c for c in self.contacts() if any(e["address"] == email for e in c["emailAddresses"])]

    def patch(self, contact: dict, body: dict) -> None:
        r = self.http.patch(f"{self.user}/contacts/{quote(contact['id'], safe='')}", json=body)
        assert r.status_code == 200, r.text

    def delete(self, contact: dict) -> None:
        r = self.http.delete(f"{self.user}/contacts/{quote(contact['id'], safe='')}")
        assert r.status_code == 204, r.text


@pytest.fixture(scope="module")
def graph_pipeline(tmp_path_factory, redis_server):
    p = Pipeline(tmp_path_factory.mktemp("e2e-graph"), "sqlite", api="graph",
                 broker_url=redis_server.url(redis_server.new_database()))
    p.start_worker()
    p.start_producer()
    try:
        outlook = Outlook(p)
        wait_until(outlook.folder, 60, what=f"folder {FOLDER} (created by the producer over Graph)")
        p.settle()
        yield p, outlook
    finally:
        p.close()


def _insert_account(p: Pipeline, **values) -> str:
    account_no = values.setdefault("account_no", f"G-{uuid.uuid4().hex[:8]}")
    values.setdefault("is_active", True)
    p.crm.execute(f"INSERT INTO accounts ({', '.join(values)}) VALUES ({', '.join(':' + k for k in values)})",
                  **values)
    return account_no


def _account(p: Pipeline, account_no: str) -> dict:
    return p.crm.query("SELECT * FROM accounts WHERE account_no = :n", n=account_no)[0]


def test_an_account_arrives_over_graph_stamped_and_an_outlook_edit_comes_back(graph_pipeline):
    p, outlook = graph_pipeline
    email = f"ada.{uuid.uuid4().hex[:6]}@analytical.example"
    account_no = _insert_account(p, company_name="Analytical Engines Ltd", first_name="Ada", last_name="Lovelace",
                                 email=email, phone_business="+44 20 7946 0018", city="London",
                                 notes="Prefers <email> & letters")
    (contact,) = wait_until(lambda: outlook.by_email(email), 60, what="the contact over Graph")
    assert (contact["givenName"], contact["surname"], contact["companyName"]) == ("Ada", "Lovelace",
                                                                                 "Analytical Engines Ltd")
    assert contact["businessPhones"] == ["+44 20 7946 0018"]
    assert contact["businessAddress"]["city"] == "London"
    assert contact["personalNotes"] == "Prefers <email> & letters"
    assert contact["singleValueExtendedProperties"][0]["value"] == f"account:{account_no}"
    p.settle()

    outlook.patch(contact, {"jobTitle": "Countess", "mobilePhone": "+44 7700 900123"})
    wait_until(lambda: _account(p, account_no)["job_title"] == "Countess", 60, what="the Outlook edit in the CRM")
    assert _account(p, account_no)["phone_mobile"] == "+44 7700 900123"
    p.settle()
    assert len(outlook.by_email(email)) == 1          # no duplicate, no echo
    assert not p.dead_events()
    stats = p.emulator.stats()                         # crmsync spoke Graph only
    assert stats.get("graph:delta", 0) > 0 and stats.get("graph:batch", 0) > 0
    assert not any(stats.get(op, 0) for op in ("SyncFolderItems", "CreateItem", "UpdateItem", "FindItem"))


def test_a_crm_update_reaches_the_contact_and_an_outlook_delete_deactivates_the_account(graph_pipeline):
    p, outlook = graph_pipeline
    email = f"grace.{uuid.uuid4().hex[:6]}@navy.example"
    account_no = _insert_account(p, company_name="COBOL Inc", first_name="Grace", last_name="Hopper", email=email)
    wait_until(lambda: outlook.by_email(email), 60, what="the contact over Graph")
    p.settle()
    p.crm.execute("UPDATE accounts SET job_title = 'Rear Admiral' WHERE account_no = :n", n=account_no)
    wait_until(lambda: outlook.by_email(email)[0]["jobTitle"] == "Rear Admiral", 60, what="the CRM edit over Graph")
    p.settle()
    outlook.delete(outlook.by_email(email)[0])
    wait_until(lambda: not _account(p, account_no)["is_active"], 60, what="the account deactivated")
    assert not p.dead_events()


def test_reactivating_an_account_over_graph_creates_its_contact_again(graph_pipeline):
    """Graph cannot look into Deleted Items: the re-activated account gets a new contact (the old
    one stays deleted), not two in the folder."""
    p, outlook = graph_pipeline
    email = f"react.{uuid.uuid4().hex[:6]}@example.org"
    account_no = _insert_account(p, company_name="Again Ltd", first_name="Re", email=email)
    (first,) = wait_until(lambda: outlook.by_email(email), 60, what="the contact over Graph")
    p.settle()
    p.crm.execute("UPDATE accounts SET is_active = false WHERE account_no = :n", n=account_no)
    wait_until(lambda: not outlook.by_email(email), 60, what="the contact deleted")
    p.settle()
    p.crm.execute("UPDATE accounts SET is_active = true, job_title = 'Head Buyer' WHERE account_no = :n",
                  n=account_no)
    (back,) = wait_until(lambda: outlook.by_email(email), 60, what="the contact created again")
    p.settle()
    back = outlook.by_email(email)
    assert len(back) == 1 and back[0]["id"] != first["id"] and back[0]["jobTitle"] == "Head Buyer"
    assert outlook.http.get(f"{outlook.user}/contacts/{quote(first['id'], safe='')}").status_code == 200  # still deleted
    assert not p.dead_events()


def test_a_mailbox_moved_from_ews_to_graph_keeps_its_links_and_syncs_both_ways(tmp_path_factory, redis_server):
    """The migration: a mailbox synced over EWS is switched to api = "graph" (processes restarted).
    The contact is found through its stamp, not created twice, and edits cross both ways."""
    p = Pipeline(tmp_path_factory.mktemp("e2e-graph-move"), "sqlite", api="graph",
                 broker_url=redis_server.url(redis_server.new_database()))
    graph_config = p.config_path.read_text()
    # Over EWS first; exchangelib is not given the emulator's CA, so that phase does not verify TLS.
    p.config_path.write_text(graph_config.replace('api = "graph"\n', 'api = "ews"\nverify_tls = false\n', 1))
    try:
        p.start_worker()
        p.start_producer()
        outlook = Outlook(p)
        email = f"moved.{uuid.uuid4().hex[:6]}@example.com"
        account_no = _insert_account(p, company_name="Moving Co", first_name="Mo", last_name="Ved", email=email)
        wait_until(lambda: outlook.by_email(email), 60, what="the contact, written over EWS")
        p.settle()
        assert p.emulator.stats().get("graph:delta", 0) == 0          # EWS only so far
        p.stop("producer")
        p.stop("worker")

        p.config_path.write_text(graph_config)
        p.emulator.reset_stats()
        p.start_worker()
        p.start_producer()
        (contact,) = outlook.by_email(email)
        outlook.patch(contact, {"jobTitle": "Edited after the move"})
        wait_until(lambda: _account(p, account_no)["job_title"] == "Edited after the move", 60,
                   what="the Outlook edit in the CRM, over Graph")
        p.crm.execute("UPDATE accounts SET department = 'Logistics' WHERE account_no = :n", n=account_no)
        wait_until(lambda: outlook.by_email(email)[0]["department"] == "Logistics", 60,
                   what="the CRM edit in the contact, over Graph")
        p.settle()
        assert len(outlook.by_email(email)) == 1 and len(outlook.contacts()) == 1
        assert _account(p, account_no)["is_active"]
        assert not p.dead_events()
        (link,) = p.state("SELECT item_id FROM links WHERE crm_key = :k", k=f"account:{account_no}")
        assert link["item_id"] == outlook.by_email(email)[0]["id"]   # the Graph id, re-learned
        stats = p.emulator.stats()
        assert stats.get("graph:delta", 0) > 0 and stats.get("SyncFolderItems", 0) == 0
    finally:
        p.close()


def _create(outlook: Outlook, body: dict) -> dict:
    """A contact created in Outlook over Graph (POST to the sync folder)."""
    r = outlook.http.post(f"{outlook.user}/contactFolders/{quote(outlook.folder(), safe='')}/contacts", json=body)
    assert r.status_code == 201, r.text
    return r.json()


def test_a_contact_created_in_outlook_over_graph_becomes_one_new_crm_account(graph_pipeline):
    p, outlook = graph_pipeline
    email = f"olga.{uuid.uuid4().hex[:6]}@outlook.example"
    created = _create(outlook, {"givenName": "Olga", "surname": "Outlook", "displayName": "Olga Outlook",
                                "companyName": "Fresh Leads GmbH", "jobTitle": "Buyer",
                                "emailAddresses": [{"address": email, "name": "Olga Outlook"}]})
    (row,) = wait_until(lambda: p.crm.query("SELECT * FROM accounts WHERE email = :e", e=email), 60,
                        what="the new CRM account")
    assert (row["first_name"], row["last_name"], row["company_name"], row["job_title"]) == (
        "Olga", "Outlook", "Fresh Leads GmbH", "Buyer")
    assert row["is_active"] and row["account_no"]
    p.settle()
    assert len(p.crm.query("SELECT * FROM accounts WHERE email = :e", e=email)) == 1      # once
    (contact,) = outlook.by_email(email)                                                    # not duplicated
    assert contact["id"] == created["id"]
    assert contact["singleValueExtendedProperties"][0]["value"] == f"account:{row['account_no']}"
    assert not p.dead_events()


def test_a_private_contact_created_over_graph_never_reaches_the_crm(graph_pipeline):
    """PidTagSensitivity 2 (Private), set as Outlook on the web does, through ``Integer 0x0036``."""
    p, outlook = graph_pipeline
    tag = uuid.uuid4().hex[:6]
    private_email, public_email = f"private.{tag}@home.example", f"public.{tag}@home.example"
    private = _create(outlook, {"givenName": "Priv", "surname": f"Ate{tag}", "displayName": f"Priv Ate{tag}",
                                "emailAddresses": [{"address": private_email, "name": "Priv"}],
                                "singleValueExtendedProperties": [{"id": "Integer 0x0036", "value": "2"}]})
    _create(outlook, {"givenName": "Pub", "surname": f"Lic{tag}", "displayName": f"Pub Lic{tag}",
                      "emailAddresses": [{"address": public_email, "name": "Pub"}]})
    wait_until(lambda: p.crm.query("SELECT * FROM accounts WHERE email = :e", e=public_email), 60,
               what="the public contact in the CRM (so the private one was seen too)")
    p.settle()
    assert p.crm.query("SELECT * FROM accounts WHERE email = :e OR last_name = :n", e=private_email,
                       n=f"Ate{tag}") == []
    # No link; the event that names it by id (the feed reports ids only, README "privacy") carries no
    # CRM key and ended as private-skipped; nothing of its data is anywhere in the state database.
    links = " ".join(str(v) for r in p.state("SELECT * FROM links") for v in r.values())
    assert private["id"] not in links
    events = p.state("SELECT * FROM events WHERE item_id = :i", i=private["id"])
    assert events and all((e["crm_key"], e["status"], e["outcome"]) == (None, "applied", "private-skipped")
                          for e in events), events
    state = " ".join(str(v) for table in ("links", "events", "conflicts") for r in p.state(f"SELECT * FROM {table}")
                     for v in r.values())
    assert private_email not in state and f"Ate{tag}" not in state
    assert public_email in " ".join(str(v) for r in p.crm.query("SELECT email FROM accounts") for v in r.values())
    logs = p.log("worker") + p.log("producer")
    assert private_email not in logs and f"Priv Ate{tag}" not in logs
    (still,) = outlook.by_email(private_email)                    # left alone: not stamped
    assert not still.get("singleValueExtendedProperties")
    assert not p.dead_events()


def test_a_stale_etag_between_the_workers_read_and_write_is_merged_nothing_lost(graph_pipeline):
    """The worker's PATCH is held (emulator ``delay`` fault) after it read the contact; Outlook edits
    another field meanwhile, so the worker's ``If-Match`` is stale (412): it re-reads and merges."""
    p, outlook = graph_pipeline
    email = f"etag.{uuid.uuid4().hex[:6]}@example.org"
    account_no = _insert_account(p, company_name="Race Conditions Ltd", first_name="Ray", last_name="Ce", email=email)
    (contact,) = wait_until(lambda: outlook.by_email(email), 60, what="the contact over Graph")
    p.settle()
    p.emulator.inject_fault("graph:update contact", "delay", count=1, delay_ms=2500)
    p.crm.execute("UPDATE accounts SET job_title = 'CRM Title' WHERE account_no = :n", n=account_no)
    wait_until(lambda: not p.emulator.admin("/_emulator/faults")["faults"], 60,
               what="the worker's PATCH to be held by the delay fault")
    outlook.patch(contact, {"department": "Outlook Dept"})        # lands while the worker's write waits
    wait_until(lambda: outlook.by_email(email)[0]["jobTitle"] == "CRM Title", 60, what="the CRM edit over Graph")
    wait_until(lambda: _account(p, account_no)["department"] == "Outlook Dept", 60, what="the Outlook edit in the CRM")
    p.settle()
    (after,) = outlook.by_email(email)
    assert (after["jobTitle"], after["department"]) == ("CRM Title", "Outlook Dept")
    assert (_account(p, account_no)["job_title"], _account(p, account_no)["department"]) == ("CRM Title",
                                                                                            "Outlook Dept")
    assert any("apply.stale_reread" in line and account_no in line for line in p.log("worker").splitlines()), \
        "the worker's write must have met the stale ETag"
    assert not p.dead_events()


def test_a_crm_row_deleted_removes_the_contact_over_graph(graph_pipeline):
    """Deactivation is covered above (test_reactivating_...); here the account row itself goes."""
    p, outlook = graph_pipeline
    email = f"gone.{uuid.uuid4().hex[:6]}@example.org"
    account_no = _insert_account(p, company_name="Gone Ltd", first_name="Gene", last_name="Gone", email=email)
    (contact,) = wait_until(lambda: outlook.by_email(email), 60, what="the contact over Graph")
    p.settle()
    p.crm.execute("DELETE FROM accounts WHERE account_no = :n", n=account_no)
    wait_until(lambda: not outlook.by_email(email), 60, what="the contact to leave the folder")
    p.settle()
    # Moved to Deleted Items (recoverable), still readable by id, and not created again.
    assert outlook.http.get(f"{outlook.user}/contacts/{quote(contact['id'], safe='')}").status_code == 200
    assert not outlook.by_email(email)
    assert not p.dead_events()
