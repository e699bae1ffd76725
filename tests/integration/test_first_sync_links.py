"""The first sync without duplicates, on real parts: a SQLite CRM with its triggers, the state
database, the EWS adapter (exchangelib) against the emulator, the real producer loop and the
real apply service (events applied in this process instead of through Redis and Celery), and the
`crmsync` command line as a subprocess.

The issue's scenario scaled down: a CRM with 50 accounts, an Outlook folder with 40 contacts,
30 of them the same people (e-mail in capitals, phone written differently).
"""

from __future__ import annotations

import csv
import io
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa
from structlog.testing import capture_logs

from crmsync.adapters.database import init_crm, init_state
from crmsync.adapters.exchange.ews.seed import seed_contacts
from crmsync.bootstrap import Container
from crmsync.cli.linking import first_sync_gate
from crmsync.config import load_settings
from crmsync.service.apply import apply_events
from producers.doorbells import NullDoorbell
from producers.factory import build_loop
from tests.support.emulator_proc import start_emulator

MB, PW = "alice@example.com", "alice-secret"
FIRSTS = ["Ada", "Grace", "Alan", "Edsger", "Barbara", "Donald", "Frances", "Ken", "Radia", "John"]
LASTS = ["Lovelace", "Hopper", "Turing", "Dijkstra", "Liskov", "Knuth", "Allen", "Thompson", "Perlman", "Backus"]


def person(i: int) -> dict[str, str]:
    first, last = FIRSTS[i % 10], LASTS[i // 10]
    return {"first_name": first, "last_name": last, "company_name": f"Company {i}",
            "email": f"{first.lower()}.{last.lower()}@c{i}.example", "phone_mobile": f"+1 415 555 {1000 + i}"}


@pytest.fixture(scope="module")
def emulator(tmp_path_factory):
    emu = start_emulator(tmp_path_factory.mktemp("ews"), {MB: PW})
    try:
        yield emu
    finally:
        emu.stop()


class Deployment:
    """A config file, the databases and a container for one folder of alice's mailbox."""

    def __init__(self, tmp: Path, endpoint: str, folder: str, first_sync: str = "refuse-duplicates",
                 crm_path: Path | None = None, mailbox_extra: str = "") -> None:
        tmp.mkdir(parents=True, exist_ok=True)
        self.tmp = tmp
        self.crm_path = crm_path or tmp / "crm.db"
        self.config = tmp / "crmsync.toml"
        self.config.write_text(f"""
[crm]
url = "sqlite:///{self.crm_path}"
[state]
url = "sqlite:///{tmp / 'state.db'}"
[broker]
url = "redis://127.0.0.1:9/0"
[exchange]
endpoint = "{endpoint}"
auth = "basic"
username = "{MB}"
password_env = "CRMSYNC_TEST_EXCHANGE_PASSWORD"
access = "delegate"
max_wait_s = 2
timeout_s = 10
[[mailbox]]
address = "{MB}"
folder = "{folder}"
first_sync = "approve"
{mailbox_extra}
[sync]
first_sync = "{first_sync}"
[log]
level = "WARNING"
""")
        self.env = {**os.environ, "CRMSYNC_TEST_EXCHANGE_PASSWORD": PW}
        self.env.pop("CRMSYNC_CONFIG", None)
        self.settings = load_settings(str(self.config), env=self.env)
        self.c = Container(self.settings)
        init_crm(self.c.crm_engine)
        init_state(self.c.state_engine)

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        done = subprocess.run([sys.executable, "-m", "crmsync", "--config", str(self.config), *args],
                              env=self.env, capture_output=True, text=True, timeout=300)
        if check:
            assert done.returncode == 0, f"crmsync {' '.join(args)}: {done.returncode}\n{done.stdout}\n{done.stderr}"
        return done

    def sql(self, statement: str, rows: list[tuple]) -> None:
        with sqlite3.connect(self.crm_path, timeout=30) as db:
            db.executemany(statement, rows)

    @property
    def folder(self):
        return self.c.exchange_account(MB)[1]

    def outlook_emails(self) -> list[str]:
        return sorted((c.email_addresses[0].email.lower() if c.email_addresses else "")
                      for c in self.folder.all().only("email_addresses"))

    def crm_emails(self) -> list[str]:
        with self.c.crm_engine.connect() as conn:
            return sorted(r[0].lower() for r in conn.execute(sa.text("SELECT email FROM accounts")))

    def dump(self) -> tuple:
        """Everything a sync could write: both databases' tables and the folder's items."""
        out = []
        for engine, tables in ((self.c.crm_engine, ("accounts", "contacts", "crm_changelog")),
                               (self.c.state_engine, ("links", "events", "cursors", "conflicts"))):
            with engine.connect() as conn:
                out += [sorted(map(tuple, conn.execute(sa.text(f"SELECT * FROM {t}")))) for t in tables]
        out.append(sorted((c.id, c.changekey) for c in self.folder.all().only("id", "changekey")))
        return tuple(out)

    def loop(self):
        svcs = self.c.sync_services

        class ApplyNow:
            """The workers' service, called in this process for each published batch."""

            def publish(self, store, ids):
                store.mark_published(list(ids))
                result = apply_events(svcs, list(ids))
                assert not result.errors, result.errors
                return len(ids)

        loop = build_loop(self.settings, changelog=self.c.changelog, crm=self.c.crm, store=self.c.store,
                          feeds={MB: self.c.exchange_feed(MB)}, publisher=ApplyNow(), doorbell=NullDoorbell(),
                          first_sync_gate=first_sync_gate(self.c))
        loop.gate_recheck_s = 0
        return loop

    def sync(self, loop, cycles: int = 8) -> None:
        """Producer cycles until two in a row create no event (the folder's own creates come back
        once through its feed and are recognised as crmsync's writes)."""
        quiet = 0
        for _ in range(cycles):
            quiet = quiet + 1 if loop.run_once() == 0 else 0
            if quiet == 2:
                return
        raise AssertionError("the sync did not settle")


def seed_scenario(d: Deployment) -> None:
    d.sql("INSERT INTO accounts (account_no, company_name, first_name, last_name, email, phone_mobile, is_active) "
          "VALUES (?, ?, ?, ?, ?, ?, 1)",
          [(f"A-{i:02d}", p["company_name"], p["first_name"], p["last_name"], p["email"], p["phone_mobile"])
           for i in range(50) for p in [person(i)]])
    outlook = []
    for i in range(20, 60):        # 20..49 are the same people as CRM accounts 20..49
        p = person(i)
        outlook.append({**p, "email": p["email"].upper(), "phone_mobile": f"(415) 555-{1000 + i}"})
    seed_contacts(d.folder, outlook)


def test_plan_predicts_30_merges_and_link_auto_then_sync_gives_60_and_60(tmp_path, emulator):
    d = Deployment(tmp_path, emulator.endpoint, "CRM Accounts")
    seed_scenario(d)
    assert (len(d.outlook_emails()), len(d.crm_emails())) == (40, 50)

    # the producer holds the first sync of this mailbox (a folder with contacts, never synced)
    # until a person approves its plan, and says why
    loop = d.loop()
    with capture_logs() as logs:
        loop.run_once()
    held = [e for e in logs if e["event"] == "producer.first_sync_held"]
    assert held and "waiting for approval: its folder holds 40 item(s)" in held[0]["reason"]
    assert f"crmsync sync --mailbox {MB} --approve-plan" in held[0]["reason"]
    assert (len(d.outlook_emails()), len(d.crm_emails())) == (40, 50)
    # approval is refused while probable duplicates are unlinked
    refused = d.cli("sync", "--mailbox", MB, "--approve-plan", check=False)
    assert refused.returncode == 2
    assert "30 pair(s)" in refused.stderr and "crmsync link auto" in refused.stderr
    assert "Nothing was approved" in refused.stderr

    # the plan: 30 merges, 20 contacts and 10 accounts to create; it writes nothing anywhere
    before = d.dump()
    plan = json.loads(d.cli("plan", "--format", "json").stdout)
    assert plan["counts"] == {"merge": 30, "create in Exchange": 20, "create in CRM": 10}
    assert plan["held"] and "crmsync link suggest" in plan["held"]

    suggested = d.cli("link", "suggest", "--format", "csv").stdout.splitlines()
    assert len(suggested) == 1 + 30 and suggested[0].startswith("crm_key,crm_name,item_id")
    assert all(line.endswith(",yes") for line in suggested[1:])
    # search the folder for account A-21's person by name, company, e-mail and phone (any format)
    for text in ("grace turing", "company 21", "GRACE.turing@c21", "+1 415-555-1021"):
        hits = json.loads(d.cli("link", "search", "--mailbox", MB, text, "--format", "json").stdout)
        assert [h["email"] for h in hits] == ["GRACE.TURING@C21.EXAMPLE"], text
    assert d.dump() == before                               # plan, suggest and search read only

    dry = json.loads(d.cli("link", "auto", "--min-score", "0.9", "--dry-run", "--format", "json").stdout)
    assert len(dry) == 30 and {r["result"] for r in dry} == {"would link"}
    assert d.dump() == before
    out = d.cli("link", "auto", "--min-score", "0.9").stdout
    assert "30 pair(s) linked, 0 record(s) need a person, 0 failed" in out
    listed = json.loads(d.cli("link", "list", "--format", "json").stdout)
    assert len(listed) == 30 and {r["state"] for r in listed} == {"linked, not synced yet"}
    # the CSV and table forms of the plan carry each merge's field writes (none here: the e-mail
    # case and the phone format are the same values to the sync)
    csv_plan = d.cli("plan", "--format", "csv").stdout.splitlines()
    assert csv_plan[0] == "action,crm_key,item_id,name,note,writes"
    merges = [line for line in csv_plan[1:] if line.startswith("merge,")]
    assert len(merges) == 30 and all(line.endswith(",") for line in merges)
    assert "what the first sync would do" in d.cli("plan", "--all").stdout

    # a second link of a linked record is refused with one clear line and a non-zero exit
    link = d.c.store.find_link(MB, crm_key="account:A-20")
    other = d.c.store.find_link(MB, crm_key="account:A-21")
    refused = d.cli("link", "add", "account:A-20", other.item_id, check=False)
    assert refused.returncode == 2
    assert " ".join(refused.stderr.split()) == (f"crmsync: account:A-20 is already linked in {MB} (to item {link.item_id}); "
                                                "`crmsync link remove account:A-20` first if that link is wrong")
    # remove and add again by hand: the same pair, made by a person
    removed = d.cli("link", "remove", "account:A-20", "--format", "csv").stdout.splitlines()
    assert removed == ["result,mailbox,crm_key,item_id", f"removed,{MB},account:A-20,{link.item_id}"]
    assert "linked" in d.cli("link", "add", "account:A-20", link.item_id).stdout
    assert d.c.store.find_link(MB, crm_key="account:A-20").item_id == link.item_id
    # the old spellings are gone
    for old in (["match"], ["unlink", "account:A-20"], ["link", "--auto"]):
        assert d.cli(*old, check=False).returncode != 0

    loop.run_once()
    assert (len(d.outlook_emails()), len(d.crm_emails())) == (40, 50)      # linked, still not approved
    approved = d.cli("sync", "--mailbox", MB, "--approve-plan").stdout
    assert " ".join(approved.split()) == (f"first sync of {MB} approved (10 create in CRM, 20 create in "
                                          "Exchange, 30 merge); the producer starts it at its next check (within "
                                          "a minute)")
    d.sync(loop)

    outlook, crm = d.outlook_emails(), d.crm_emails()
    assert (len(outlook), len(crm)) == (60, 60)
    assert len(set(outlook)) == 60 and len(set(crm)) == 60          # one per person on each side
    assert set(outlook) == set(crm)
    links = d.c.store.links_for_mailbox(MB)
    assert len(links) == 60 and all(link.base is not None for link in links)


WRITES = ("CreateItem", "UpdateItem", "DeleteItem", "MoveItem", "CreateFolder", "DeleteFolder")


def writes(emulator) -> dict[str, int]:
    return {op: n for op, n in emulator.stats().items() if op in WRITES and n}


def changelog_ids(d: Deployment) -> list[int]:
    with d.c.crm_engine.connect() as conn:
        return [r[0] for r in conn.execute(sa.text("SELECT id FROM crm_changelog ORDER BY id"))]


def test_link_certain_syncs_then_rebuild_after_a_lost_state_database_gives_the_same_links(tmp_path, emulator):
    d = Deployment(tmp_path, emulator.endpoint, "CRM Certain", first_sync="link-certain")
    seed_scenario(d)
    d.cli("sync", "--mailbox", MB, "--approve-plan")
    d.sync(d.loop())
    assert (len(d.outlook_emails()), len(d.crm_emails())) == (60, 60)
    links = {(link.crm_key, link.item_id) for link in d.c.store.links_for_mailbox(MB)}
    assert len(links) == 60

    # the state database is lost: a new, empty one (same CRM, same folder)
    d.c.dispose()
    (tmp_path / "state.db").unlink()
    lost = Deployment(tmp_path, emulator.endpoint, "CRM Certain")      # refuse-duplicates: the gate links nothing
    assert lost.c.store.links_for_mailbox(MB) == []
    folder_before = sorted((c.id, c.changekey) for c in lost.folder.all().only("id", "changekey"))
    emulator.reset_stats()

    rebuilt = json.loads(lost.cli("link", "rebuild", "--mailbox", MB, "--format", "json").stdout)
    assert len(rebuilt) == 60 and {r["result"] for r in rebuilt} == {"linked"}
    assert {r["how"] for r in rebuilt} == {"stamp"}                 # every synced contact carries its CRM key
    assert {(link.crm_key, link.item_id) for link in lost.c.store.links_for_mailbox(MB)} == links
    assert writes(emulator) == {}

    # the next sync merges 60 equal pairs: nothing written to Exchange or the CRM
    changelog = changelog_ids(lost)
    lost.cli("sync", "--mailbox", MB, "--approve-plan")         # a new state database: a new first sync
    lost.sync(lost.loop())
    assert writes(emulator) == {}
    assert changelog_ids(lost) == changelog
    assert sorted((c.id, c.changekey) for c in lost.folder.all().only("id", "changekey")) == folder_before
    after = lost.c.store.links_for_mailbox(MB)
    assert {(link.crm_key, link.item_id) for link in after} == links and all(link.base is not None for link in after)


def test_rebuild_reports_what_it_cannot_link(tmp_path, emulator):
    """Before any sync nothing is stamped: only the exact e-mail pairs come back; the other
    records are listed with the reason, and the table says how many."""
    d = Deployment(tmp_path, emulator.endpoint, "CRM Rebuild Report")
    seed_scenario(d)
    rows = list(csv.DictReader(io.StringIO(d.cli("link", "rebuild", "--mailbox", MB, "--format", "csv").stdout)))
    assert sum(r["result"] == "linked" for r in rows) == 30
    assert {r["how"] for r in rows if r["result"] == "linked"} == {"exact e-mail"}
    left = [r for r in rows if r["result"] == "not linked"]
    assert len(left) == 20 + 10
    assert sum("creates it in Exchange" in r["how"] for r in left) == 20
    assert sum("creates it in the CRM" in r["how"] for r in left) == 10
    assert "0 link(s) rebuilt, 30 record(s) not linked" in d.cli("link", "rebuild", "--mailbox", MB).stdout


def test_a_new_dedicated_folder_receives_every_account_without_duplicates(tmp_path, emulator):
    """The second way out: the CRM pushed into a new, empty folder of its own (created by the
    first sync); the user's existing contacts in another folder are left alone."""
    d = Deployment(tmp_path, emulator.endpoint, "CRM Accounts")
    seed_scenario(d)
    # the same CRM and mailbox, a new folder and a new state database
    dedicated = Deployment(tmp_path / "dedicated", emulator.endpoint, "CRM Dedicated/Accounts",
                           crm_path=d.crm_path)
    before = sorted((c.id, c.changekey) for c in d.folder.all().only("id", "changekey"))

    dedicated.sync(dedicated.loop())

    assert len(dedicated.outlook_emails()) == 50 and len(set(dedicated.outlook_emails())) == 50
    assert len(dedicated.crm_emails()) == 50
    assert sorted((c.id, c.changekey) for c in d.folder.all().only("id", "changekey")) == before


def test_init_folder_refuses_a_folder_with_contacts_and_writes_nothing(tmp_path, emulator):
    d = Deployment(tmp_path, emulator.endpoint, "CRM Busy")
    seed_scenario(d)
    before = d.dump()
    emulator.reset_stats()

    refused = d.cli("init-folder", "--mailbox", MB, "--folder", "crm busy", check=False)
    assert refused.returncode == 2
    assert " ".join(refused.stderr.split()) == (
        f"crmsync: mailbox {MB}: folder 'crm busy' exists and holds 40 item(s); init-folder fills only a new or "
        "empty folder (pick a new name, or link the contacts with `crmsync link suggest` / `crmsync link auto`); "
        "nothing was written")
    # a folder that is not the one the config syncs is refused before anything is looked at
    other = d.cli("init-folder", "--mailbox", MB, "--folder", "CRM Elsewhere", check=False)
    assert other.returncode == 2
    assert "syncs folder 'CRM Busy'" in other.stderr and 'set folder = "CRM Elsewhere"' in other.stderr
    assert writes(emulator) == {}
    assert d.dump() == before


@pytest.mark.parametrize(("folder", "extra", "place"), [
    ("public:Company/CRM", "", "public folders/Company/CRM"),
    ("Team", 'folder_owner = "boss@example.com"', "boss@example.com's Contacts/Team"),
])
def test_init_folder_refuses_a_shared_folder_before_connecting(tmp_path, emulator, folder, extra, place):
    d = Deployment(tmp_path, emulator.endpoint, folder, mailbox_extra=extra)
    emulator.reset_stats()
    refused = d.cli("init-folder", "--mailbox", MB, "--folder", folder, check=False)
    assert refused.returncode == 2
    assert f"init-folder fills a new folder under the mailbox's own Contacts; this mailbox syncs {place}" in \
        " ".join(refused.stderr.split())
    assert emulator.stats() == {}                     # refused before any request


def test_init_folder_pushes_every_account_into_a_new_folder_and_the_next_sync_writes_nothing(tmp_path, emulator):
    d = Deployment(tmp_path, emulator.endpoint, "CRM Source")
    seed_scenario(d)                                         # 50 accounts; 40 contacts in another folder
    with d.c.crm_engine.begin() as conn:                     # and 3 secondary contacts of account A-00
        conn.execute(sa.text("INSERT INTO contacts (account_id, first_name, last_name, email) "
                             "SELECT id, 'Assistant', :n, :e FROM accounts WHERE account_no = 'A-00'"),
                     [{"n": f"No{i}", "e": f"assistant{i}@c0.example"} for i in range(3)])
    old_folder = sorted((c.id, c.changekey) for c in d.folder.all().only("id", "changekey"))
    dedicated = Deployment(tmp_path / "dedicated", emulator.endpoint, "CRM Init/Accounts", crm_path=d.crm_path)
    changelog = changelog_ids(d)

    done = dedicated.cli("init-folder", "--mailbox", MB, "--folder", "CRM Init/Accounts")
    assert "created contacts folder 'CRM Init/Accounts'" in done.stdout
    assert "53 created-exchange" in done.stdout
    assert sorted(dedicated.outlook_emails()) == sorted(dedicated.crm_emails() + [f"assistant{i}@c0.example"
                                                                                 for i in range(3)])
    links = dedicated.c.store.links_for_mailbox(MB)
    assert len(links) == 53 and all(link.base is not None for link in links)
    assert changelog_ids(d) == changelog                       # the CRM was only read

    emulator.reset_stats()
    contacts = sorted((c.id, c.changekey) for c in dedicated.folder.all().only("id", "changekey"))
    dedicated.sync(dedicated.loop())
    assert writes(emulator) == {}
    assert changelog_ids(d) == changelog
    assert sorted((c.id, c.changekey) for c in dedicated.folder.all().only("id", "changekey")) == contacts
    assert sorted((c.id, c.changekey) for c in d.folder.all().only("id", "changekey")) == old_folder

    # run again: refused, the mailbox is set up already
    again = dedicated.cli("init-folder", "--mailbox", MB, "--folder", "CRM Init/Accounts", check=False)
    assert again.returncode == 2 and "already has 53 link(s)" in again.stderr

    # a mailbox without secondary contacts gets the accounts only
    accounts_only = Deployment(tmp_path / "accounts-only", emulator.endpoint, "CRM Init/Accounts Only",
                               crm_path=d.crm_path, mailbox_extra="secondary_contacts = false")
    assert "50 created-exchange" in accounts_only.cli("init-folder", "--mailbox", MB,
                                                      "--folder", "CRM Init/Accounts Only").stdout
    assert sorted(accounts_only.outlook_emails()) == sorted(accounts_only.crm_emails())


def test_init_folder_signs_in_with_the_mailboxs_own_credentials(tmp_path, emulator):
    """A mailbox with its own username / password_env is reached with those, as the sync reaches
    it; [exchange]'s account (here with a wrong password) is not used."""
    d = Deployment(tmp_path, emulator.endpoint, "CRM Own Creds", mailbox_extra=(
        f'username = "{MB}"\npassword_env = "CRMSYNC_TEST_ALICE_PASSWORD"'))
    d.sql("INSERT INTO accounts (account_no, company_name, first_name, last_name, email, is_active) "
          "VALUES (?, ?, ?, ?, ?, 1)",
          [(f"OWN-{i}", f"Own {i}", "Own", f"Creds{i}", f"own{i}@creds.example") for i in range(3)])
    d.env.update({"CRMSYNC_TEST_EXCHANGE_PASSWORD": "not-alices-password", "CRMSYNC_TEST_ALICE_PASSWORD": PW})
    done = d.cli("init-folder", "--mailbox", MB, "--folder", "CRM Own Creds", check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "3 created-exchange" in done.stdout
    assert "not-alices-password" not in done.stdout + done.stderr
