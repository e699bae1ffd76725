"""Acting for other users through the real pipeline (issue 9): one service account impersonates
alice, bob and carol, an assistant has delegate access to dave's mailbox, and carol is denied
(her mailbox is configured with an account that holds no ApplicationImpersonation right).

Carol is reported (`crmsync status --check` exits 1 naming her and the EWS error) while the other
three converge (so is erin, whose folder is missing with create_folder = false, until she
creates it); an Outlook edit in alice's mailbox reaches the CRM and bob's and dave's mailboxes
once; once the right is granted, carol's mailbox is retried and converges too; and a delegate
right withdrawn after the first sync makes the worker retry dave's events without dead letters.
One stack (emulator, Redis, producer, Celery worker) per CRM backend for the module; the tests
run in order.
"""

from __future__ import annotations

import uuid

import pytest

from tests.support.pipeline import FOLDER, MAILBOX, MAILBOX_PASSWORD, Pipeline, wait_until

BOB, CAROL, DAVE, ERIN = "bob@example.com", "carol@example.com", "dave@example.com", "erin@example.com"
SHARED = "Shared CRM"   # erin's folder: not created by crmsync
ASSISTANT, INTRUDER = "assistant@example.com", "intruder@example.com"
PASSWORDS = {BOB: "bob-pw", CAROL: "carol-pw", DAVE: "dave-pw", ERIN: "erin-pw", ASSISTANT: "assistant-pw-7f3",
             INTRUDER: "intruder-pw-9c1"}
OWNERS = {MAILBOX: MAILBOX_PASSWORD, **PASSWORDS}
SYNCED = (MAILBOX, BOB, DAVE)
ACCOUNTS = 3

MAILBOXES = f"""[[mailbox]]
address = "{MAILBOX}"
folder = "{FOLDER}"
[[mailbox]]
address = "{BOB}"
folder = "{FOLDER}"
[[mailbox]]
address = "{CAROL}"
folder = "{FOLDER}"
username = "{INTRUDER}"
password_env = "CRMSYNC_TEST_INTRUDER_PASSWORD"
[[mailbox]]
address = "{DAVE}"
folder = "{FOLDER}"
access = "delegate"
username = "{ASSISTANT}"
password_env = "CRMSYNC_TEST_ASSISTANT_PASSWORD"
[[mailbox]]
address = "{ERIN}"
folder = "{SHARED}"
create_folder = false
"""


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def pipeline(request, tmp_path_factory, redis_server):
    p = Pipeline(tmp_path_factory.mktemp(f"e2e-access-{request.param}"), request.param,
                 broker_url=redis_server.url(redis_server.new_database()), extra_users=PASSWORDS,
                 emulator_args=("--delegate", f"{DAVE}:{ASSISTANT}"))
    try:
        text = p.config_path.read_text()
        single = f'[[mailbox]]\naddress = "{MAILBOX}"\nfolder = "{FOLDER}"\nfirst_sync = "auto"\n'
        assert single in text
        p.config_path.write_text(text.replace(single, MAILBOXES))
        p.env.update(CRMSYNC_TEST_INTRUDER_PASSWORD=PASSWORDS[INTRUDER],
                     CRMSYNC_TEST_ASSISTANT_PASSWORD=PASSWORDS[ASSISTANT])
        for n in range(ACCOUNTS):
            p.crm.execute("INSERT INTO accounts (account_no, company_name, first_name, last_name, email, "
                          "job_title, is_active) VALUES (:no, :co, :fn, 'Access', :email, 'Buyer', :act)",
                          no=f"ACC-{n}", co=f"Access Co {n}", fn=f"Person{n}", email=f"p{n}@access.example",
                          act=True)
        p.start_worker()
        p.start_producer()
        yield p
    finally:
        p.close()


def owner_account(p: Pipeline, owner: str):
    return p.user_account(owner, OWNERS[owner])


def outlook(p: Pipeline, owner: str, name: str = FOLDER):
    """The sync folder in ``owner``'s mailbox, as the owner sees it in Outlook (None before it exists)."""
    account = owner_account(p, owner)
    account.root.clear_cache()
    return next((f for f in account.contacts.children if f.name == name), None)


def contacts(p: Pipeline, owner: str, name: str = FOLDER) -> list:
    folder = outlook(p, owner, name)
    return [] if folder is None else list(folder.all())


def converged(p: Pipeline, owner: str, name: str = FOLDER) -> bool:
    found = contacts(p, owner, name)
    return len(found) == ACCOUNTS and {c.email_addresses[0].email for c in found if c.email_addresses} == {
        f"p{n}@access.example" for n in range(ACCOUNTS)}


def status_check(p: Pipeline):
    done = p.cli("status", "--check", check=False)
    return done.returncode, done.stdout + done.stderr


def test_the_denied_mailbox_is_reported_and_the_other_three_converge(pipeline):
    p = pipeline
    for owner in SYNCED:
        wait_until(lambda o=owner: converged(p, o), 120, what=f"{owner}'s folder to hold the {ACCOUNTS} accounts")
    p.settle(timeout=120)

    code, out = wait_until(lambda: (lambda r: r if CAROL in r[1] else None)(status_check(p)), 60,
                           what="status to report carol")
    flat = " ".join(out.split())
    assert code == 1, out
    assert f"NEEDS ATTENTION: {CAROL}: unavailable since" in flat, out
    assert "ErrorImpersonateUserDenied" in flat and "ApplicationImpersonation" in flat, out
    assert f"NEEDS ATTENTION: {ERIN}: unavailable since" in flat, out
    assert f"folder '{SHARED}' does not exist under Contacts" in flat, out
    assert outlook(p, ERIN, SHARED) is None                           # not created behind her back
    for owner in SYNCED:
        assert f"{owner}: unavailable" not in flat, out
    assert contacts(p, CAROL) == []                                  # nothing was written there
    assert p.dead_events() == []                                     # denied is not a dead letter
    logs = p.log("producer") + p.log("worker")
    assert "producer.mailbox_unavailable" in logs
    for secret in (PASSWORDS[INTRUDER], PASSWORDS[ASSISTANT], "svc-secret-pw"):
        assert secret not in logs and secret not in out


def test_an_edit_in_one_mailbox_reaches_the_crm_and_the_other_two_once(pipeline):
    p = pipeline
    p.settle(timeout=120)
    title = f"Director {uuid.uuid4().hex[:6]}"
    before = p.emulator.stats()
    contact = next(c for c in contacts(p, MAILBOX) if c.email_addresses[0].email == "p1@access.example")
    contact.job_title = title
    contact.save(update_fields=["job_title"])                       # alice edits it in Outlook

    wait_until(lambda: p.crm.query("SELECT job_title FROM accounts WHERE account_no = 'ACC-1'")[0]["job_title"]
               == title, 90, what="the edit in the CRM")
    for owner in (BOB, DAVE):
        wait_until(lambda o=owner: any(c.job_title == title for c in contacts(p, o)), 90,
                   what=f"the edit in {owner}'s mailbox")
    p.settle(timeout=120)
    after = p.emulator.stats()
    # one UpdateItem by alice herself, one each for bob and dave; nothing created or deleted
    assert after.get("UpdateItem", 0) - before.get("UpdateItem", 0) == 3, (before, after)
    assert after.get("CreateItem", 0) == before.get("CreateItem", 0)
    assert after.get("DeleteItem", 0) == before.get("DeleteItem", 0)
    for owner in SYNCED:
        found = contacts(p, owner)
        assert len(found) == ACCOUNTS
        assert [c.job_title for c in found].count(title) == 1
    assert p.crm.query("SELECT count(*) AS n FROM accounts")[0]["n"] == ACCOUNTS
    assert p.dead_events() == []


def test_a_missing_folder_is_retried_and_the_mailbox_converges_once_it_exists(pipeline):
    p = pipeline
    from exchangelib.folders import Folder

    Folder(parent=owner_account(p, ERIN).contacts, name=SHARED, folder_class="IPF.Contact").save()  # erin
    wait_until(lambda: converged(p, ERIN, SHARED), 120, what="erin's folder to hold the accounts")
    p.settle(timeout=120)
    wait_until(lambda: (lambda r: r if ERIN not in r[1] else None)(status_check(p)), 60,
               what="status to stop reporting erin")
    assert p.dead_events() == []


def test_once_the_right_is_granted_the_denied_mailbox_is_retried_and_converges(pipeline):
    p = pipeline
    p.emulator.extra_args += ["--impersonator", INTRUDER]    # the administrator grants the right
    p.emulator.restart()
    wait_until(lambda: converged(p, CAROL), 180, what="carol's folder to hold the accounts")
    p.settle(timeout=120)
    code, out = wait_until(lambda: (lambda r: r if r[0] == 0 else None)(status_check(p)), 90,
                           what="status --check to be all good")
    assert CAROL not in " ".join(out.split()).split("broker queue")[-1]
    assert p.dead_events() == []


def test_a_mailbox_denied_after_its_first_sync_retries_its_events_and_never_dead_letters_them(pipeline):
    p = pipeline
    p.settle(timeout=120)
    args = p.emulator.extra_args
    at = args.index(f"{DAVE}:{ASSISTANT}")
    del args[at - 1:at + 1]                                   # dave withdraws the assistant's access
    p.emulator.restart()
    wait_until(lambda: (lambda r: r if DAVE in r[1] else None)(status_check(p)), 60,
               what="status to report dave")
    title = f"Chief {uuid.uuid4().hex[:6]}"
    p.crm.execute("UPDATE accounts SET job_title = :t WHERE account_no = 'ACC-2'", t=title)
    for owner in (MAILBOX, BOB, CAROL):                       # the others carry on
        wait_until(lambda o=owner: any(c.job_title == title for c in contacts(p, o)), 90,
                   what=f"the CRM edit in {owner}'s mailbox")

    def denied_tries() -> int:
        return sum(1 for line in p.log("worker").splitlines() if "mailbox.unavailable" in line and DAVE in line)
    max_attempts = 8                                          # Pipeline's [sync] max_attempts
    wait_until(lambda: denied_tries() > max_attempts + 2, 120, what="the worker to retry dave's event")
    assert p.dead_events() == []                              # past max_attempts, and still not dead
    assert p.state("SELECT count(*) AS n FROM events WHERE mailbox = :m AND status NOT IN ('applied', 'dead')",
                   m=DAVE)[0]["n"] >= 1
    code, out = status_check(p)
    assert code == 1 and f"{DAVE}: unavailable since" in " ".join(out.split()), out
    assert "ErrorAccessDenied" in " ".join(out.split()), out

    args += ["--delegate", f"{DAVE}:{ASSISTANT}"]             # access given back
    p.emulator.restart()
    wait_until(lambda: any(c.job_title == title for c in contacts(p, DAVE)), 120, what="the edit in dave's mailbox")
    p.settle(timeout=120)
    wait_until(lambda: (lambda r: r if r[0] == 0 else None)(status_check(p)), 90, what="status --check all good")
    assert p.dead_events() == []
    assert [c.job_title for c in contacts(p, DAVE)].count(title) == 1


def test_a_wrong_password_on_a_mailbox_with_its_own_credentials_is_reported_and_the_others_carry_on(pipeline):
    """The assistant's password is changed on the server, and dave's password_env still holds the
    old one: every request for dave answers HTTP 401. Status reports dave (UnauthorizedError), the
    other mailboxes carry on, the worker retries dave's events without dead letters, and no
    password reaches any log. Once the variable holds the new password (processes restarted, as
    after editing the service's environment), dave converges with the edit exactly once."""
    p = pipeline
    p.settle(timeout=120)
    old, new = PASSWORDS[ASSISTANT], f"assistant-new-pw-{uuid.uuid4().hex[:6]}"
    p.emulator.users[ASSISTANT] = new                          # changed in the directory, not in crmsync
    p.emulator.restart()

    def denied_tries() -> int:
        return sum(1 for line in p.log("worker").splitlines() if "mailbox.unavailable" in line and DAVE in line)
    tries_before = denied_tries()
    title = f"Head {uuid.uuid4().hex[:6]}"
    p.crm.execute("UPDATE accounts SET job_title = :t WHERE account_no = 'ACC-0'", t=title)
    for owner in (MAILBOX, BOB, CAROL):                       # the others carry on
        wait_until(lambda o=owner: any(c.job_title == title for c in contacts(p, o)), 90,
                   what=f"the CRM edit in {owner}'s mailbox")
    code, out = wait_until(lambda: (lambda r: r if f"{DAVE}: unavailable since" in " ".join(r[1].split()) else None)(
        status_check(p)), 90, what="status to report dave")
    flat = " ".join(out.split())
    assert code == 1, out
    assert "UnauthorizedError" in flat, out
    for owner in (MAILBOX, BOB, CAROL):
        assert f"{owner}: unavailable" not in flat, out
    wait_until(lambda: denied_tries() > tries_before, 90, what="the worker to retry dave's event")
    assert not any(c.job_title == title for c in contacts(p, DAVE))   # nothing got through with a 401
    assert p.dead_events() == []

    p.env["CRMSYNC_TEST_ASSISTANT_PASSWORD"] = new              # the administrator updates the variable
    p.stop("producer")
    p.stop("worker")
    p.start_worker()
    p.start_producer()
    wait_until(lambda: any(c.job_title == title for c in contacts(p, DAVE)), 120, what="the edit in dave's mailbox")
    p.settle(timeout=120)
    wait_until(lambda: (lambda r: r if r[0] == 0 else None)(status_check(p)), 90, what="status --check all good")
    assert p.dead_events() == []
    assert [c.job_title for c in contacts(p, DAVE)].count(title) == 1
    logs = p.log("producer") + p.log("worker")
    for secret in (old, new, PASSWORDS[INTRUDER], "svc-secret-pw"):
        assert secret not in logs and secret not in out
