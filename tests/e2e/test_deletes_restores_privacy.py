"""Deletes come back only by a person's act, a contact turning Private leaves the sync, and a key
a link cannot hold is a dead letter at once — through the real pipeline, edited as people do:
plain SQL on the CRM, exchangelib as the mailbox owner in Outlook."""

from __future__ import annotations

import uuid

from exchangelib import Contact

from tests.support.pipeline import wait_until


def _insert_account(pipeline, email: str, **values) -> str:
    account_no = f"D-{uuid.uuid4().hex[:8]}"
    pipeline.crm.execute(
        "INSERT INTO accounts (account_no, company_name, first_name, last_name, email, job_title, is_active) "
        "VALUES (:no, :company, :first, :last, :email, :job, true)",
        no=account_no, company=values.get("company", "Restore Ltd"), first=values.get("first", "Rita"),
        last=values.get("last", "Stored"), email=email, job=values.get("job", "Buyer"))
    return account_no


def _in_folder(pipeline, email: str) -> list:
    return [c for c in pipeline.contacts() if any(e.email == email for e in (c.email_addresses or []))]


def _in_trash(pipeline, email: str) -> list:
    account, _ = pipeline.outlook()
    return [c for c in account.trash.all() if isinstance(c, Contact)
            and any(e.email == email for e in (c.email_addresses or []))]


def _account(pipeline, account_no: str) -> dict:
    (row,) = pipeline.crm.query("SELECT * FROM accounts WHERE account_no = :n", n=account_no)
    return row


def test_a_contact_moved_back_from_deleted_items_relinks_and_reactivates_its_account(pipeline):
    email = f"back.{uuid.uuid4().hex[:6]}@example.org"
    account_no = _insert_account(pipeline, email)
    wait_until(lambda: _in_folder(pipeline, email), 60, what="the contact")
    pipeline.crm.execute("UPDATE accounts SET is_active = false WHERE account_no = :n", n=account_no)
    trashed = wait_until(lambda: _in_trash(pipeline, email), 60, what="the contact in Deleted Items")[0]
    _, folder = pipeline.outlook()
    trashed.move(to_folder=folder)                       # the user restores it in Outlook
    wait_until(lambda: _account(pipeline, account_no)["is_active"], 60, what="the account re-activated")
    pipeline.settle()
    assert len(_in_folder(pipeline, email)) == 1 and _in_trash(pipeline, email) == []
    (link,) = pipeline.state("SELECT * FROM links WHERE crm_key = :k", k=f"account:{account_no}")
    assert not link["deleted"] and link["item_id"] == _in_folder(pipeline, email)[0].id
    assert pipeline.dead_events() == []


def test_reactivating_an_account_moves_its_contact_back_instead_of_a_second_one(pipeline):
    email = f"react.{uuid.uuid4().hex[:6]}@example.org"
    account_no = _insert_account(pipeline, email)
    wait_until(lambda: _in_folder(pipeline, email), 60, what="the contact")
    pipeline.crm.execute("UPDATE accounts SET is_active = false WHERE account_no = :n", n=account_no)
    wait_until(lambda: _in_trash(pipeline, email), 60, what="the contact in Deleted Items")
    pipeline.settle()
    pipeline.crm.execute("UPDATE accounts SET is_active = true, job_title = 'Head Buyer' WHERE account_no = :n",
                         n=account_no)
    back = wait_until(lambda: _in_folder(pipeline, email), 60, what="the contact moved back")
    pipeline.settle()
    back = _in_folder(pipeline, email)
    assert len(back) == 1 and _in_trash(pipeline, email) == []
    assert back[0].job_title == "Head Buyer"


def test_a_secondary_contact_deleted_in_outlook_stays_deleted_until_edited_in_the_crm(pipeline):
    account_email = f"acct.{uuid.uuid4().hex[:6]}@example.org"
    contact_email = f"sec.{uuid.uuid4().hex[:6]}@example.org"
    account_no = _insert_account(pipeline, account_email, company="Parent Co")
    pipeline.crm.execute(
        "INSERT INTO contacts (account_id, first_name, last_name, email) VALUES "
        "((SELECT id FROM accounts WHERE account_no = :n), 'Sec', 'Ondary', :e)", n=account_no, e=contact_email)
    contact = wait_until(lambda: _in_folder(pipeline, contact_email), 60, what="the secondary contact")[0]
    contact.move_to_trash()                              # deleted in Outlook
    pipeline.settle()
    pipeline.crm.execute("UPDATE accounts SET company_name = 'Parent Co Renamed' WHERE account_no = :n", n=account_no)
    wait_until(lambda: _in_folder(pipeline, account_email)[0].company_name == "Parent Co Renamed", 60,
               what="the rename on the account's contact")
    pipeline.settle()
    assert _in_folder(pipeline, contact_email) == [], "a change to its account does not bring it back"
    pipeline.crm.execute("UPDATE contacts SET job_title = 'Buyer' WHERE email = :e", e=contact_email)
    # It comes back from Deleted Items first and then takes the edit: wait for the edit, not the move.
    wait_until(lambda: any(c.job_title == "Buyer" for c in _in_folder(pipeline, contact_email)), 60,
               what="the contact back, with its own edit")
    pipeline.settle()
    back = _in_folder(pipeline, contact_email)
    assert len(back) == 1 and back[0].job_title == "Buyer" and _in_trash(pipeline, contact_email) == []


def test_a_linked_contact_made_private_is_unlinked_and_its_data_leaves_the_state_database(pipeline):
    email = f"priv.{uuid.uuid4().hex[:6]}@example.org"
    account_no = _insert_account(pipeline, email, job="Shared Title")
    contact = wait_until(lambda: _in_folder(pipeline, email), 60, what="the contact")[0]
    contact.sensitivity = "Private"
    contact.job_title = "Private Title"
    contact.save(update_fields=["sensitivity", "job_title"])
    key = f"account:{account_no}"
    wait_until(lambda: pipeline.state("SELECT private FROM links WHERE crm_key = :k", k=key)[0]["private"], 60,
               what="the link to turn private")
    (link,) = pipeline.state("SELECT * FROM links WHERE crm_key = :k", k=key)
    assert link["base_json"] is None and link["crm_hash"] is None
    assert _account(pipeline, account_no)["job_title"] == "Shared Title", "the CRM keeps what was shared"
    pipeline.crm.execute("UPDATE accounts SET job_title = 'CRM Edit' WHERE account_no = :n", n=account_no)
    pipeline.settle()
    assert _in_folder(pipeline, email)[0].job_title == "Private Title", "CRM edits no longer cross"
    _in_folder(pipeline, email)[0].move_to_trash()
    pipeline.settle()
    assert _account(pipeline, account_no)["is_active"], "an Outlook delete of a private contact does not cross"
    state_dump = " ".join(str(v) for r in pipeline.state("SELECT * FROM links WHERE crm_key = :k", k=key)
                          for v in r.values())
    assert "Private Title" not in state_dump


def test_an_account_with_an_empty_number_is_a_dead_letter_at_once_and_others_sync(pipeline):
    good = f"good.{uuid.uuid4().hex[:6]}@example.org"
    pipeline.crm.execute("INSERT INTO accounts (account_no, company_name, email, is_active) "
                         "VALUES ('', 'No Number Ltd', :e, true)", e=f"nonum.{uuid.uuid4().hex[:6]}@example.org")
    _insert_account(pipeline, good)
    wait_until(lambda: _in_folder(pipeline, good), 60, what="the good account")
    dead = wait_until(lambda: [e for e in pipeline.dead_events() if e["crm_key"] == "account:"], 60,
                      what="the empty key's dead letter")
    assert dead[0]["attempts"] == 1, "a bad key is not retried"
    assert "account:" in dead[0]["last_error"]
    pipeline.crm.execute("DELETE FROM accounts WHERE account_no = ''")
