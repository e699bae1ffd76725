"""Changes on either side arrive on the other, once, and nothing echoes back."""

from __future__ import annotations

import time
import uuid

from exchangelib import Contact
from exchangelib.indexed_properties import EmailAddress, PhoneNumber

from tests.support.pipeline import wait_until


def _insert_account(pipeline, **values) -> str:
    account_no = values.setdefault("account_no", f"T-{uuid.uuid4().hex[:8]}")
    values.setdefault("is_active", True)
    cols = ", ".join(values)
    params = ", ".join(f":{k}" for k in values)
    pipeline.crm.execute(f"INSERT INTO accounts ({cols}) VALUES ({params})", **values)
    return account_no


def _by_email(pipeline, email: str) -> list:
    return [c for c in pipeline.contacts()
            if any(e.email == email for e in (c.email_addresses or []))]


def _phone(contact, label: str) -> str | None:
    return next((p.phone_number for p in (contact.phone_numbers or []) if p.label == label), None)


def _assert_no_writes_for_two_cycles(pipeline) -> None:
    pipeline.settle()
    pipeline.emulator.reset_stats()
    changelog_before = pipeline.crm_changelog_count()
    events_before = pipeline.state("SELECT count(*) AS n FROM events")[0]["n"]
    time.sleep(3 * 0.5 + 2)  # more than two producer cycles
    pipeline.settle()
    assert pipeline.ews_writes() == 0, pipeline.emulator.stats()
    assert pipeline.crm_changelog_count() == changelog_before
    assert pipeline.state("SELECT count(*) AS n FROM events")[0]["n"] == events_before


def test_account_created_by_plain_sql_arrives_in_exchange_once(pipeline):
    email = f"ada.{uuid.uuid4().hex[:6]}@analytical.example"
    _insert_account(pipeline, company_name="Analytical Engines Ltd", first_name="Ada",
                    last_name="Lovelace", email=email, phone_business="+44 20 7946 0018",
                    city="London", notes="Prefers <email> & letters")
    found = wait_until(lambda: _by_email(pipeline, email), 60, what="the contact in Exchange")
    _assert_no_writes_for_two_cycles(pipeline)
    found = _by_email(pipeline, email)
    assert len(found) == 1
    contact = found[0]
    assert (contact.given_name, contact.surname, contact.company_name) == ("Ada", "Lovelace", "Analytical Engines Ltd")
    assert _phone(contact, "BusinessPhone") == "+44 20 7946 0018"
    assert "Prefers <email> & letters" in str(contact.body)


def test_plain_sql_update_arrives_and_nothing_echoes_back(pipeline):
    email = f"grace.{uuid.uuid4().hex[:6]}@navy.example"
    account_no = _insert_account(pipeline, company_name="COBOL Inc", first_name="Grace",
                                 last_name="Hopper", email=email, phone_business="+1 202 555 0101")
    wait_until(lambda: _by_email(pipeline, email), 60, what="the contact in Exchange")
    pipeline.settle()
    pipeline.crm.execute("UPDATE accounts SET phone_business = '+1 202 555 0199', "
                         "job_title = 'Rear Admiral' WHERE account_no = :no", no=account_no)
    wait_until(lambda: _phone(_by_email(pipeline, email)[0], "BusinessPhone") == "+1 202 555 0199",
               60, what="the phone update in Exchange")
    assert _by_email(pipeline, email)[0].job_title == "Rear Admiral"
    _assert_no_writes_for_two_cycles(pipeline)


def test_secondary_contact_arrives_as_its_own_contact_with_the_company(pipeline):
    email = f"boss.{uuid.uuid4().hex[:6]}@widgets.example"
    account_no = _insert_account(pipeline, company_name="Widgets & Co", first_name="Wanda",
                                 last_name="Boss", email=email)
    account_id = pipeline.crm.query("SELECT id FROM accounts WHERE account_no = :no", no=account_no)[0]["id"]
    colleague = f"col.{uuid.uuid4().hex[:6]}@widgets.example"
    pipeline.crm.execute("INSERT INTO contacts (account_id, first_name, last_name, email, phone_mobile) "
                         "VALUES (:a, 'Carl', 'Colleague', :e, '+1 555 0100 222')", a=account_id, e=colleague)
    contact = wait_until(lambda: _by_email(pipeline, colleague), 60, what="the secondary contact")[0]
    assert contact.company_name == "Widgets & Co"
    assert (contact.given_name, contact.surname) == ("Carl", "Colleague")
    assert len(_by_email(pipeline, email)) == 1
    # The account's company name is renamed: its secondary contact follows.
    pipeline.crm.execute("UPDATE accounts SET company_name = 'Widgets Group' WHERE account_no = :no", no=account_no)
    wait_until(lambda: _by_email(pipeline, colleague)[0].company_name == "Widgets Group", 60,
               what="the company rename on the secondary contact")
    _assert_no_writes_for_two_cycles(pipeline)


def test_contact_created_in_outlook_becomes_a_new_crm_account(pipeline):
    account, folder = pipeline.outlook()
    email = f"new.{uuid.uuid4().hex[:6]}@outlook.example"
    Contact(folder=folder, account=account, given_name="Olga", surname="Outlook",
            company_name="Fresh Leads GmbH", display_name="Olga Outlook",
            email_addresses=[EmailAddress(email=email, label="EmailAddress1")],
            ).save()
    rows = wait_until(lambda: pipeline.crm.query("SELECT * FROM accounts WHERE email = :e", e=email),
                      60, what="the new CRM account")
    assert len(rows) == 1
    assert rows[0]["company_name"] == "Fresh Leads GmbH"
    assert rows[0]["first_name"] == "Olga" and rows[0]["is_active"]
    assert rows[0]["account_no"]
    _assert_no_writes_for_two_cycles(pipeline)
    assert len(pipeline.crm.query("SELECT * FROM accounts WHERE email = :e", e=email)) == 1
    assert len(_by_email(pipeline, email)) == 1


def test_phone_edited_in_outlook_reaches_the_crm_and_nothing_echoes_back(pipeline):
    email = f"phone.{uuid.uuid4().hex[:6]}@example.org"
    account_no = _insert_account(pipeline, company_name="Phone Co", first_name="Pat",
                                 last_name="Phone", email=email, phone_business="+1 415 555 0100")
    contact = wait_until(lambda: _by_email(pipeline, email), 60, what="the contact")[0]
    pipeline.settle()
    contact = _by_email(pipeline, email)[0]
    contact.phone_numbers = [p for p in contact.phone_numbers if p.label != "MobilePhone"] + [
        PhoneNumber(label="MobilePhone", phone_number="+1 415 555 0177")]
    contact.save(update_fields=["phone_numbers"])
    wait_until(lambda: pipeline.crm.query("SELECT phone_mobile FROM accounts WHERE account_no = :n",
                                          n=account_no)[0]["phone_mobile"] == "+1 415 555 0177",
               60, what="the mobile phone in the CRM")
    _assert_no_writes_for_two_cycles(pipeline)


def test_crm_delete_moves_the_exchange_contact_to_deleted_items(pipeline):
    email = f"gone.{uuid.uuid4().hex[:6]}@example.org"
    account_no = _insert_account(pipeline, company_name="Gone Ltd", first_name="Gene", last_name="Gone", email=email)
    wait_until(lambda: _by_email(pipeline, email), 60, what="the contact")
    pipeline.settle()
    pipeline.crm.execute("DELETE FROM accounts WHERE account_no = :n", n=account_no)
    wait_until(lambda: not _by_email(pipeline, email), 60, what="the contact to leave the folder")
    account, _ = pipeline.outlook()
    trash = [c for c in account.trash.all() if getattr(c, "email_addresses", None)
             and any(e.email == email for e in c.email_addresses)]
    assert len(trash) == 1, "the contact must be recoverable from Deleted Items"


def test_crm_deactivation_also_moves_the_contact_to_deleted_items(pipeline):
    email = f"inactive.{uuid.uuid4().hex[:6]}@example.org"
    account_no = _insert_account(pipeline, company_name="Dormant plc", first_name="Dora", last_name="Dormant", email=email)
    wait_until(lambda: _by_email(pipeline, email), 60, what="the contact")
    pipeline.crm.execute("UPDATE accounts SET is_active = false WHERE account_no = :n", n=account_no)
    wait_until(lambda: not _by_email(pipeline, email), 60, what="the contact to leave the folder")


def test_outlook_delete_deactivates_the_crm_account_and_keeps_the_row(pipeline):
    email = f"del.{uuid.uuid4().hex[:6]}@example.org"
    account_no = _insert_account(pipeline, company_name="Deleted in Outlook", first_name="Del", last_name="Eted", email=email)
    contact = wait_until(lambda: _by_email(pipeline, email), 60, what="the contact")[0]
    pipeline.settle()
    contact.delete()
    wait_until(lambda: pipeline.crm.query("SELECT is_active FROM accounts WHERE account_no = :n",
                                          n=account_no)[0]["is_active"] in (False, 0),
               60, what="the account to be deactivated")
    assert len(pipeline.crm.query("SELECT * FROM accounts WHERE account_no = :n", n=account_no)) == 1


def test_private_outlook_contact_never_reaches_the_crm(pipeline):
    account, folder = pipeline.outlook()
    email = f"private.{uuid.uuid4().hex[:6]}@home.example"
    Contact(folder=folder, account=account, given_name="Priv", surname="Ate", display_name="Priv Ate",
            sensitivity="Private", email_addresses=[EmailAddress(email=email, label="EmailAddress1")]).save()
    public = f"public.{uuid.uuid4().hex[:6]}@home.example"
    Contact(folder=folder, account=account, given_name="Pub", surname="Lic", display_name="Pub Lic",
            email_addresses=[EmailAddress(email=public, label="EmailAddress1")]).save()
    wait_until(lambda: pipeline.crm.query("SELECT * FROM accounts WHERE email = :e", e=public), 60,
               what="the public contact in the CRM (so the private one was seen too)")
    pipeline.settle()
    assert pipeline.crm.query("SELECT * FROM accounts WHERE email = :e", e=email) == []
    assert pipeline.crm.query("SELECT * FROM accounts WHERE first_name = 'Priv'") == []
    logs = pipeline.log("worker") + pipeline.log("producer")
    assert email not in logs and "Priv Ate" not in logs


def test_a_busy_exchange_is_retried_after_the_back_off_it_asks_for(pipeline):
    pipeline.settle()
    pipeline.emulator.inject_fault("CreateItem", "server_busy", count=1, back_off_ms=3000)
    email = f"busy.{uuid.uuid4().hex[:6]}@example.org"
    started = time.monotonic()
    _insert_account(pipeline, company_name="Busy Signal", first_name="Bea", last_name="Busy", email=email)
    wait_until(lambda: _by_email(pipeline, email), 90, what="the contact after the server was busy")
    assert time.monotonic() - started >= 2.5, "the retry must wait for the server's back-off"
    assert len(_by_email(pipeline, email)) == 1
    assert pipeline.dead_events() == []


def test_a_bad_record_is_a_dead_letter_that_names_it_and_the_rest_carries_on(pipeline):
    good = f"good.{uuid.uuid4().hex[:6]}@example.org"
    bad_no = _insert_account(pipeline, company_name="Bad\x0bChars Ltd", first_name="Vera", last_name="Tab",
                             email=f"bad.{uuid.uuid4().hex[:6]}@example.org")
    _insert_account(pipeline, company_name="Good Ltd", first_name="Gus", last_name="Good", email=good)
    wait_until(lambda: _by_email(pipeline, good), 60, what="the good account")
    dead = wait_until(lambda: [e for e in pipeline.dead_events() if e["crm_key"] == f"account:{bad_no}"],
                      90, what="the bad account's dead letter")
    assert "company_name" in dead[0]["last_error"] and bad_no in dead[0]["last_error"]
    listing = pipeline.cli("events", "list", "--status", "dead", env={"COLUMNS": "300"}).stdout
    assert f"account:{bad_no}" in listing
    # the administrator fixes the row and replays the dead letters
    pipeline.crm.execute("UPDATE accounts SET company_name = 'Bad Chars Ltd' WHERE account_no = :n", n=bad_no)
    pipeline.settle()
    pipeline.cli("events", "replay", "--status", "dead")
    wait_until(lambda: [c for c in pipeline.contacts() if c.company_name == "Bad Chars Ltd"], 60,
               what="the fixed account after the replay")
    assert pipeline.dead_events() == []
