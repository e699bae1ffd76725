"""Sync policy through the real pipeline (issue 9): a one-way mailbox, switching it to two-way
later, and a field rule. One stack for the module; each test sets the mailbox policy it needs
(the config file is rewritten and the worker restarted, as an administrator would)."""

from __future__ import annotations

import re
import uuid

import pytest
from exchangelib import Contact
from exchangelib.indexed_properties import EmailAddress

from tests.support.pipeline import FOLDER, Pipeline, wait_until

BEGIN, END = "# policy-begin\n", "# policy-end\n"


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def pipeline(request, tmp_path_factory, redis_server):
    p = Pipeline(tmp_path_factory.mktemp(f"e2e-policy-{request.param}"), request.param,
                 broker_url=redis_server.url(redis_server.new_database()))
    text = p.config_path.read_text()
    p.config_path.write_text(text.replace(f'folder = "{FOLDER}"\n', f'folder = "{FOLDER}"\n{BEGIN}{END}', 1))
    p.policy = None
    p.start_producer()
    try:
        p.outlook()
        yield p
    finally:
        p.close()


def set_policy(p: Pipeline, policy: str) -> None:
    """Write the mailbox's policy keys and (re)start the worker with them."""
    if p.policy == policy:
        return
    text = p.config_path.read_text()
    p.config_path.write_text(re.sub(f"{BEGIN}.*?{END}", lambda _: f"{BEGIN}{policy}\n{END}", text, flags=re.S))
    p.stop("worker")
    p.start_worker()
    p.policy = policy
    p.settle()


def insert_account(p: Pipeline, **values) -> str:
    values.setdefault("account_no", f"P-{uuid.uuid4().hex[:8]}")
    values.setdefault("is_active", True)
    p.crm.execute(f"INSERT INTO accounts ({', '.join(values)}) VALUES ({', '.join(':' + k for k in values)})",
                  **values)
    return values["account_no"]


def account(p: Pipeline, account_no: str) -> dict:
    return p.crm.query("SELECT * FROM accounts WHERE account_no = :no", no=account_no)[0]


def contact_by_email(p: Pipeline, email: str):
    found = [c for c in p.contacts() if any(e.email == email for e in (c.email_addresses or []))]
    return found[0] if len(found) == 1 else None


def outlook_edit(p: Pipeline, contact, **fields) -> None:
    for name, value in fields.items():
        setattr(contact, name, value)
    contact.save(update_fields=list(fields))


def test_a_crm_to_exchange_mailbox_pushes_and_never_writes_the_crm(pipeline):
    p = pipeline
    set_policy(p, 'direction = "crm-to-exchange"')
    email = f"ada.{uuid.uuid4().hex[:6]}@oneway.example"
    no = insert_account(p, company_name="One Way Ltd", first_name="Ada", last_name="Lovelace", email=email)
    contact = wait_until(lambda: contact_by_email(p, email), 60, what="the pushed contact")
    p.settle()
    accounts_before = p.crm.query("SELECT count(*) AS n FROM accounts")[0]["n"]
    changelog_before = p.crm_changelog_count()

    outlook_edit(p, contact, job_title="Countess")                          # edited in Outlook
    account_, folder = p.outlook()
    Contact(account=account_, folder=folder, given_name="Only", surname="Outlook", display_name="Only Outlook",
            email_addresses=[EmailAddress(email=f"only.{uuid.uuid4().hex[:6]}@outlook.example")]).save()
    wait_until(lambda: (contact_by_email(p, email) or contact).job_title is None, 60,
               what="Outlook to mirror the CRM again")
    p.settle()

    assert p.crm_changelog_count() == changelog_before                       # not one CRM write
    assert p.crm.query("SELECT count(*) AS n FROM accounts")[0]["n"] == accounts_before
    assert account(p, no)["job_title"] is None
    outcomes = {r["outcome"] for r in p.state("SELECT outcome FROM events WHERE source = 'exchange'")}
    assert "skipped-one-way" in outcomes

    p.crm.execute("UPDATE accounts SET job_title = 'Engineer' WHERE account_no = :no", no=no)  # CRM edits go out
    wait_until(lambda: contact_by_email(p, email).job_title == "Engineer", 60, what="the CRM edit in Outlook")


def test_switching_to_two_way_replays_no_one_way_edit_and_a_field_rule_holds(pipeline):
    p = pipeline
    set_policy(p, 'direction = "crm-to-exchange"')
    email = f"grace.{uuid.uuid4().hex[:6]}@switch.example"
    no = insert_account(p, company_name="Switch Inc", first_name="Grace", last_name="Hopper", email=email,
                        notes="CRM notes")
    contact = wait_until(lambda: contact_by_email(p, email), 60, what="the pushed contact")
    outlook_edit(p, contact, job_title="Admiral")                             # discarded: one-way
    wait_until(lambda: contact_by_email(p, email).job_title is None, 60, what="the mirror restored")
    p.settle()
    changelog_before = p.crm_changelog_count()

    set_policy(p, 'direction = "two-way"\nfields = {notes = "crm-to-exchange"}')
    p.crm.execute("UPDATE accounts SET phone_business = '+1 202 555 0101' WHERE account_no = :no", no=no)
    wait_until(lambda: contact_by_email(p, email).phone_numbers, 60, what="the CRM edit in Outlook")
    p.settle()
    assert account(p, no)["job_title"] is None                                # nothing replayed
    assert p.crm_changelog_count() == changelog_before + 1                    # only our own UPDATE

    contact = contact_by_email(p, email)
    outlook_edit(p, contact, job_title="Rear Admiral", body="my own scribbles")
    wait_until(lambda: account(p, no)["job_title"] == "Rear Admiral", 60, what="the Outlook edit in the CRM")
    p.settle()
    assert account(p, no)["notes"] == "CRM notes"                             # the field rule
    assert "CRM notes" in str(contact_by_email(p, email).body)


def test_a_mass_delete_in_outlook_is_held_until_approved_then_exactly_those_are_deactivated(pipeline):
    """The issue's case with the shipped brake (max_delete_count 25, max_delete_percent 10): 30 of
    100 contacts deleted in Outlook in one gesture."""
    p = pipeline
    set_policy(p, "")                                   # the shipped defaults
    tag = uuid.uuid4().hex[:6]
    numbers = [insert_account(p, company_name=f"Brake {tag} {n}", first_name="B", last_name=f"N{n}",
                              email=f"b{n}.{tag}@brake.example") for n in range(100)]
    emails = {f"b{n}.{tag}@brake.example": no for n, no in enumerate(numbers)}

    def pushed():
        found = {e.email: c for c in p.contacts() for e in (c.email_addresses or []) if e.email in emails}
        return found if len(found) == 100 else None
    contacts = wait_until(pushed, 120, what="the 100 contacts in Outlook")
    p.settle()

    doomed = sorted(emails)[:30]
    account_, _ = p.outlook()
    account_.bulk_delete([contacts[e] for e in doomed], delete_type="MoveToDeletedItems")   # one gesture in Outlook

    def held():
        rows = json_rows(p.cli("deletes", "list", "--format", "json").stdout)
        return rows if len(rows) == 30 else None
    rows = wait_until(held, 90, what="30 held deletes")
    p.settle()
    assert all(account(p, no)["is_active"] for no in numbers)                 # nothing deactivated yet
    assert sorted(r["crm_key"] for r in rows) == sorted(f"account:{emails[e]}" for e in doomed)
    check = p.cli("status", "--check", check=False)
    assert check.returncode == 1 and "30 delete(s) held by the delete brake" in " ".join(check.stdout.split())

    done = p.cli("deletes", "approve", "--all")
    assert "30 held delete(s) approved; 30 carried out now" in " ".join(done.stdout.split())
    p.settle()
    inactive = sorted(no for no in numbers if not account(p, no)["is_active"])
    assert inactive == sorted(emails[e] for e in doomed)
    assert json_rows(p.cli("deletes", "list", "--format", "json").stdout) == []


def json_rows(text: str) -> list[dict]:
    import json

    return json.loads(text) if text.strip() else []


def test_manual_conflict_keeps_both_values_syncs_the_rest_and_a_resolution_reaches_both_sides(pipeline):
    p = pipeline
    set_policy(p, 'conflict_policy = "manual"')
    email = f"hedy.{uuid.uuid4().hex[:6]}@manual.example"
    no = insert_account(p, company_name="Manual AB", first_name="Hedy", last_name="Lamarr", email=email,
                        job_title="Inventor")
    contact = wait_until(lambda: contact_by_email(p, email), 60, what="the pushed contact")
    p.settle()
    p.stop("worker")                                     # both sides edit before anything syncs
    p.crm.execute("UPDATE accounts SET job_title = 'Actress' WHERE account_no = :no", no=no)
    outlook_edit(p, contact, job_title="Engineer", department="Radio")
    p.start_worker()
    rows = wait_until(lambda: json_rows(p.cli("conflicts", "list", "--format", "json").stdout), 60,
                      what="a held conflict")
    wait_until(lambda: account(p, no)["department"] == "Radio", 60, what="the rest of the record in the CRM")
    p.settle()
    assert [(r["crm_key"], r["field"], r["crm_value"], r["exchange_value"], r["base_value"]) for r in rows] == [
        (f"account:{no}", "job_title", "Actress", "Engineer", "Inventor")]
    assert account(p, no)["job_title"] == "Actress" and contact_by_email(p, email).job_title == "Engineer"

    done = p.cli("conflicts", "resolve", str(rows[0]["id"]), "--take", "exchange")
    assert "written on both sides" in done.stdout
    p.settle()
    assert account(p, no)["job_title"] == "Engineer" and contact_by_email(p, email).job_title == "Engineer"
    assert json_rows(p.cli("conflicts", "list", "--format", "json").stdout) == []


def test_a_per_field_manual_policy_holds_that_field_while_the_mailbox_policy_decides_the_rest(pipeline):
    p = pipeline
    set_policy(p, 'conflict_policy = "crm-wins"\nconflict_fields = {job_title = "manual"}')
    email = f"joan.{uuid.uuid4().hex[:6]}@perfield.example"
    no = insert_account(p, company_name="Per Field AS", first_name="Joan", last_name="Clarke", email=email,
                        job_title="Analyst", department="Hut 8")
    contact = wait_until(lambda: contact_by_email(p, email), 60, what="the pushed contact")
    p.settle()
    p.stop("worker")                                     # both sides edit both fields before anything syncs
    p.crm.execute("UPDATE accounts SET job_title = 'Cryptanalyst', department = 'Hut 11' WHERE account_no = :no",
                  no=no)
    outlook_edit(p, contact, job_title="Numismatist", department="Bletchley")
    p.start_worker()
    rows = wait_until(lambda: [r for r in json_rows(p.cli("conflicts", "list", "--format", "json").stdout)
                               if r["crm_key"] == f"account:{no}"], 60, what="the held job title")
    wait_until(lambda: contact_by_email(p, email).department == "Hut 11", 60, what="crm-wins for the department")
    p.settle()
    assert [(r["field"], r["crm_value"], r["exchange_value"]) for r in rows] == [
        ("job_title", "Cryptanalyst", "Numismatist")]
    assert account(p, no)["department"] == "Hut 11"
    assert account(p, no)["job_title"] == "Cryptanalyst" and contact_by_email(p, email).job_title == "Numismatist"

    done = p.cli("conflicts", "resolve", str(rows[0]["id"]), "--take", "crm")
    assert "written on both sides" in done.stdout
    p.settle()
    assert contact_by_email(p, email).job_title == "Cryptanalyst"


def in_trash(p: Pipeline, email: str) -> list:
    account_, _ = p.outlook()
    return [c for c in account_.trash.all() if isinstance(c, Contact)
            and any(e.email == email for e in (c.email_addresses or []))]


def test_delete_rules_delete_the_crm_row_and_hard_delete_the_contact(pipeline):
    p = pipeline
    set_policy(p, 'on_exchange_delete = "delete"\non_crm_delete = "hard-delete"')
    tag = uuid.uuid4().hex[:6]
    emails = [f"del{n}.{tag}@rules.example" for n in range(3)]
    numbers = [insert_account(p, company_name=f"Rules {tag} {n}", first_name="R", last_name=f"N{n}", email=e)
               for n, e in enumerate(emails)]
    contacts = [wait_until(lambda e=e: contact_by_email(p, e), 60, what=f"contact {e}") for e in emails]
    p.crm.execute("INSERT INTO contacts (account_id, first_name, last_name, email) "
                  "SELECT id, 'Sec', 'Ondary', :email FROM accounts WHERE account_no = :no",
                  email=f"sec.{tag}@rules.example", no=numbers[2])
    wait_until(lambda: contact_by_email(p, f"sec.{tag}@rules.example"), 60, what="the secondary contact")
    p.settle()

    account_, _ = p.outlook()
    account_.bulk_delete([contacts[0], contacts[2]], delete_type="MoveToDeletedItems")   # deleted in Outlook
    wait_until(lambda: not p.crm.query("SELECT 1 FROM accounts WHERE account_no = :no", no=numbers[0]), 60,
               what="the account row deleted")
    wait_until(lambda: not account(p, numbers[2])["is_active"], 60, what="the account with a contact deactivated")
    assert account(p, numbers[1])["is_active"]

    p.crm.execute("UPDATE accounts SET is_active = false WHERE account_no = :no", no=numbers[1])   # CRM side
    wait_until(lambda: contact_by_email(p, emails[1]) is None, 60, what="the contact hard-deleted")
    p.settle()
    assert in_trash(p, emails[1]) == []                          # gone for good, not in Deleted Items
    assert len(in_trash(p, emails[0])) == 1                      # the user's own delete stays recoverable
    outcomes = {r["outcome"] for r in p.state("SELECT DISTINCT outcome FROM events")}
    assert {"deleted-crm", "deleted-exchange"} <= outcomes
    assert p.dead_events() == []


def test_only_active_false_pushes_inactive_accounts_and_deactivating_keeps_the_contact(pipeline):
    p = pipeline
    set_policy(p, "only_active = false")
    tag = uuid.uuid4().hex[:6]
    dormant = insert_account(p, company_name=f"Dormant {tag}", first_name="D", last_name="Ormant",
                             email=f"dormant.{tag}@inactive.example", is_active=False)
    live = insert_account(p, company_name=f"Live {tag}", first_name="L", last_name="Ive",
                          email=f"live.{tag}@inactive.example")
    wait_until(lambda: contact_by_email(p, f"dormant.{tag}@inactive.example"), 60, what="the inactive account pushed")
    wait_until(lambda: contact_by_email(p, f"live.{tag}@inactive.example"), 60, what="the active account pushed")
    p.settle()
    p.crm.execute("UPDATE accounts SET is_active = false, job_title = 'Retired' WHERE account_no = :no", no=live)
    wait_until(lambda: contact_by_email(p, f"live.{tag}@inactive.example").job_title == "Retired", 60,
               what="the deactivated account's edit in Outlook")
    p.settle()
    assert in_trash(p, f"live.{tag}@inactive.example") == []
    assert not account(p, dormant)["is_active"] and not account(p, live)["is_active"]
    assert p.dead_events() == []


# The guard tests empty and then delete the module's sync folder: they stay the module's last.
LAX_BRAKE = "max_delete_count = 100000\nmax_delete_percent = 100\nmin_delete_count_for_percent = 100000"


def test_an_emptied_folder_is_held_by_the_guard_whatever_the_brake_allows(pipeline):
    p = pipeline
    set_policy(p, LAX_BRAKE)
    tag = uuid.uuid4().hex[:6]
    numbers = [insert_account(p, company_name=f"Guard {tag} {n}", first_name="G", last_name=f"N{n}",
                              email=f"g{n}.{tag}@guard.example") for n in range(6)]
    wait_until(lambda: sum(1 for c in p.contacts() for e in (c.email_addresses or []) if tag in e.email) == 6, 90,
               what="the 6 contacts in Outlook")
    p.settle()
    active = {r["account_no"] for r in p.crm.query("SELECT account_no FROM accounts WHERE is_active")}
    linked = {r["crm_key"] for r in p.state("SELECT crm_key FROM links WHERE base_json IS NOT NULL AND NOT deleted "
                                           "AND crm_key LIKE 'account:%'")}
    linked = {key for key in linked if key.split(":", 1)[1] in active}   # inactive ones are not deletes to cross
    _, folder = p.outlook()
    folder.empty(delete_sub_folders=False)                 # EmptyFolder: every contact of the folder at once

    def held():
        rows = json_rows(p.cli("deletes", "list", "--format", "json").stdout)
        return rows if {r["crm_key"] for r in rows} >= linked else None
    rows = wait_until(held, 90, what="every linked account's delete held")
    p.settle()
    assert {r["reason"] for r in rows} == {"the sync folder reads empty (the empty-folder guard)"}
    assert {r["account_no"] for r in p.crm.query("SELECT account_no FROM accounts WHERE is_active")} == active
    assert set(numbers) <= active
    check = p.cli("status", "--check", check=False)
    assert check.returncode == 1
    assert "held: the sync folder reads empty (the empty-folder guard)" in " ".join(check.stdout.split())
    doctor = p.cli("doctor", "--format", "json", check=False)
    assert any(r["check"].startswith("deletes ") and "the empty-folder guard" in r["detail"]
               for r in json_rows(doctor.stdout))

    done = p.cli("deletes", "discard", "--all")            # the administrator keeps the CRM as it is
    assert f"{len(rows)} held delete(s) discarded" in done.stdout
    p.settle()
    assert {r["account_no"] for r in p.crm.query("SELECT account_no FROM accounts WHERE is_active")} == active
    assert json_rows(p.cli("deletes", "list", "--format", "json").stdout) == []


def test_a_deleted_folder_is_held_by_the_guard_and_nothing_is_deactivated(pipeline):
    p = pipeline
    set_policy(p, LAX_BRAKE)
    tag = uuid.uuid4().hex[:6]
    numbers = [insert_account(p, company_name=f"Gone {tag} {n}", first_name="F", last_name=f"N{n}",
                              email=f"f{n}.{tag}@gone.example") for n in range(4)]
    wait_until(lambda: sum(1 for c in p.contacts() for e in (c.email_addresses or []) if tag in e.email) == 4, 90,
               what="the 4 contacts in Outlook")
    p.settle()
    _, folder = p.outlook()
    folder.delete()                                        # DeleteFolder (HardDelete): the folder and its contacts
    p.crm.execute("UPDATE accounts SET city = 'Nowhere' WHERE account_no IN ("
                  + ", ".join(f"'{no}'" for no in numbers) + ")")   # CRM edits make the workers look

    def held():
        rows = [r for r in json_rows(p.cli("deletes", "list", "--format", "json").stdout)
                if r["crm_key"] in {f"account:{no}" for no in numbers}]
        return rows if len(rows) == 4 else None
    rows = wait_until(held, 90, what="the 4 deletes held")
    assert {r["reason"] for r in rows} == {"the sync folder has disappeared (the empty-folder guard)"}
    assert all(account(p, no)["is_active"] for no in numbers)
    check = p.cli("status", "--check", check=False)
    assert check.returncode == 1 and "held: the sync folder has disappeared" in " ".join(check.stdout.split())
