"""The console in a real browser (issue 12): headless Debian chromium driven by Playwright, against
one running stack for the module (the EWS emulator, a private redis-server, a Celery worker
process, the producer and beat, and `crmsync console` as a process on a free port).

Each test does what an office's IT person would do in the browser and checks the effect in the
CRM database and in the mailbox, not only on the page. The overview and link pages are saved as
docs/console-overview.png and docs/console-link.png (the README shows them).
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import httpx
import pytest
from exchangelib import Contact
from exchangelib.indexed_properties import EmailAddress
from playwright import sync_api as playwright_api

from tests.support.pipeline import FOLDER, MAILBOX, Pipeline, wait_until

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
USER, PASSWORD = "ada", "console-e2e-password"
DOCS = Path(__file__).resolve().parents[2] / "docs"
POLICY = 'conflict_fields = {job_title = "manual"}\nmax_delete_count = 2\nmin_delete_count_for_percent = 1000\n'


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def stack(tmp_path_factory, redis_server):
    p = Pipeline(tmp_path_factory.mktemp("console-e2e"), "sqlite", max_attempts=3,
                 broker_url=redis_server.url(redis_server.new_database()))
    try:
        text = p.config_path.read_text().replace(f'folder = "{FOLDER}"\n', f'folder = "{FOLDER}"\n{POLICY}', 1)
        p.config_path.write_text(text + f'[console]\nusers_file = "{p.tmp / "console-users"}"\n')
        added = subprocess.run([sys.executable, "-m", "crmsync", "--config", str(p.config_path), "console",
                                "add-user", USER], input=PASSWORD + "\n", env=p.env, capture_output=True,
                               text=True, timeout=60)
        assert added.returncode == 0, added.stderr
        p.start_worker()
        p.start_producer()
        p.outlook()
        p.settle()
        port = free_port()
        p.start("console", "console", "--port", str(port))
        p.console_url = f"http://127.0.0.1:{port}"
        wait_until(lambda: httpx.get(p.console_url + "/login", timeout=2).status_code == 200, 60,
                   what="the console to answer")
        yield p
    finally:
        p.close()


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install chromium (.ci/run does; never `playwright install`)",
                    pytrace=False)
    with playwright_api.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture(scope="module")
def page(stack, browser):
    """One logged-in browser tab for the module."""
    context = browser.new_context(viewport={"width": 1366, "height": 900})
    tab = context.new_page()
    tab.set_default_timeout(30_000)
    tab.goto(stack.console_url + "/")
    assert "/login" in tab.url                                  # no session: the login form
    tab.get_by_label("User name").fill(USER)
    tab.get_by_label("Password").fill(PASSWORD)
    tab.get_by_role("button", name="Log in").click()
    tab.wait_for_url(stack.console_url + "/")
    yield tab
    context.close()


@pytest.fixture(autouse=True)
def running_stack(stack):
    """Each test starts with the producer and the worker running, whatever a failed test left."""
    for name, start in (("producer", stack.start_producer), ("worker", stack.start_worker)):
        proc = stack.procs.get(name)
        if proc is None or proc.poll() is not None:
            start()


def insert_account(p: Pipeline, **values) -> str:
    values.setdefault("account_no", f"P-{uuid.uuid4().hex[:8]}")
    values.setdefault("is_active", True)
    p.crm.execute(f"INSERT INTO accounts ({', '.join(values)}) VALUES ({', '.join(':' + k for k in values)})",
                  **values)
    return values["account_no"]


def account(p: Pipeline, account_no: str) -> dict:
    return p.crm.query("SELECT * FROM accounts WHERE account_no = :no", no=account_no)[0]


def contacts_by_email(p: Pipeline, email: str) -> list:
    return [c for c in p.contacts() if any(e.email.lower() == email for e in (c.email_addresses or []))]


def flash(tab) -> str:
    return tab.get_by_role("status").inner_text()


def test_login_gives_an_httponly_samesite_session(stack, page):
    assert page.get_by_role("heading", name="Overview").count() == 1
    cookie = next(c for c in page.context.cookies() if c["name"] == "crmsync_console")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"


def test_link_an_account_to_its_outlook_contact_by_searching_then_the_sync_merges(stack, page):
    p = stack
    tag = uuid.uuid4().hex[:6]
    email = f"linus.{tag}@pauling.example"
    p.stop("producer")          # both records exist before crmsync sees either (a second source of accounts)
    no = insert_account(p, company_name=f"Pauling {tag} Labs", first_name="Linus", last_name=f"Pauling{tag}",
                        email=email, phone_mobile="+1 415 555 7001")
    account_, folder = p.outlook()
    Contact(account=account_, folder=folder, given_name="Linus", surname=f"Pauling{tag}",
            display_name=f"Linus Pauling{tag}", company_name=f"Pauling {tag} Labs", department="Chemistry",
            email_addresses=[EmailAddress(email=email, label="EmailAddress1")]).save()
    before_contacts = len(p.contacts())

    page.goto(p.console_url + "/link")
    page.get_by_label("CRM record (name, company, e-mail, phone)").fill(f"Pauling{tag}")
    page.get_by_label("Outlook folder").fill(f"Pauling{tag}")
    page.get_by_role("button", name="Search").click()
    page.get_by_role("link", name=f"pick account:{no} to link by hand").first.click()
    hit = page.get_by_role("table", name=f"Outlook contacts matching “Pauling{tag}”", exact=True).get_by_role("row").filter(
        has_text=f"Linus Pauling{tag}")
    assert hit.get_by_label("CRM key").input_value() == f"account:{no}"
    DOCS.mkdir(exist_ok=True)
    page.screenshot(path=str(DOCS / "console-link.png"), full_page=True)
    hit.get_by_role("button", name=f"link Linus Pauling{tag}").click()
    assert "the next sync merges them" in flash(page)
    # a second thought: unlink the pair (not synced yet), then link it again from the suggestion
    page.get_by_role("button", name=f"unlink account:{no}").click()
    assert f"removed the link of account:{no}" in flash(page)
    assert p.state("SELECT count(*) AS n FROM links WHERE crm_key = :k", k=f"account:{no}") == [{"n": 0}]
    page.get_by_label("CRM record (name, company, e-mail, phone)").fill(f"Pauling{tag}")
    page.get_by_role("button", name="Search").click()
    suggestion = page.get_by_role("table", name="CRM records matching").get_by_role("row").filter(has_text=f"account:{no}")
    assert "email" in suggestion.inner_text() and "1.00" in suggestion.inner_text()
    suggestion.get_by_role("button", name=f"link account:{no} to Linus Pauling{tag}").click()
    assert "the next sync merges them" in flash(page)
    # and once more from the Outlook side: the unlinked contact's suggested CRM record
    page.get_by_role("button", name=f"unlink account:{no}").click()
    assert f"removed the link of account:{no}" in flash(page)
    page.get_by_label("Outlook folder").fill(f"Pauling{tag}")
    page.get_by_role("button", name="Search").click()
    from_contact = page.get_by_role("table", name="Unlinked Outlook contacts matching").get_by_role("row").filter(
        has_text=f"account:{no}")
    assert "email" in from_contact.inner_text()
    from_contact.get_by_role("button", name=f"to account:{no}").click()
    assert "the next sync merges them" in flash(page)
    link = p.state("SELECT item_id, base_json FROM links WHERE crm_key = :k", k=f"account:{no}")
    assert len(link) == 1 and link[0]["item_id"] and link[0]["base_json"] is None

    p.start_producer()
    wait_until(lambda: p.state("SELECT base_json FROM links WHERE crm_key = :k", k=f"account:{no}")[0]["base_json"],
               90, what="the linked pair to be synced")
    p.settle()
    assert len(contacts_by_email(p, email)) == 1 and len(p.contacts()) == before_contacts     # merged, not created
    assert p.crm.query("SELECT count(*) AS n FROM accounts WHERE lower(email) = :e", e=email)[0]["n"] == 1
    assert account(p, no)["department"] == "Chemistry"                                         # Outlook's field in the CRM
    mine = p.state("SELECT count(*) AS n FROM links WHERE crm_key = :k", k=f"account:{no}")
    assert mine == [{"n": 1}]


def test_a_private_contact_is_never_shown(stack, page):
    p = stack
    tag = uuid.uuid4().hex[:6]
    account_, folder = p.outlook()
    for last, sensitivity in (("Open", "Normal"), ("Hidden", "Private")):
        Contact(account=account_, folder=folder, given_name=f"Secret{tag}", surname=last,
                display_name=f"Secret{tag} {last}", sensitivity=sensitivity, job_title=f"{last} job {tag}").save()
    wait_until(lambda: p.crm.query("SELECT count(*) AS n FROM accounts WHERE first_name = :f", f=f"Secret{tag}")[0]["n"] == 1,
               60, what="the open contact in the CRM")
    p.settle()
    page.goto(p.console_url + "/link?" + f"folder=Secret{tag}&account=Secret{tag}")
    shown = page.locator("main").inner_text()
    assert f"Secret{tag} Open" in shown
    assert "Hidden" not in shown and f"Hidden job {tag}" not in shown
    page.goto(p.console_url + "/events")
    assert "Hidden" not in page.locator("main").inner_text()


def test_resolve_a_conflict_by_typing_a_value(stack, page):
    p = stack
    email = f"hedy.{uuid.uuid4().hex[:6]}@manual.example"
    no = insert_account(p, company_name="Manual AB", first_name="Hedy", last_name="Lamarr", email=email,
                        job_title="Inventor")
    contact = wait_until(lambda: (found := contacts_by_email(p, email)) and found[0], 60, what="the pushed contact")
    p.settle()
    p.stop("worker")                                     # both sides edit the held field before it syncs
    p.crm.execute("UPDATE accounts SET job_title = 'Actress' WHERE account_no = :no", no=no)
    contact.job_title = "Engineer"
    contact.save(update_fields=["job_title"])
    p.start_worker()

    def held():
        rows = json.loads(p.cli("conflicts", "list", "--format", "json").stdout or "[]")
        return [r for r in rows if r["crm_key"] == f"account:{no}"]
    conflict = wait_until(held, 90, what="the held conflict")[0]
    p.settle()

    page.goto(p.console_url + "/conflicts")
    row = page.get_by_role("row").filter(has_text=f"account:{no}")
    assert "Actress" in row.inner_text() and "Engineer" in row.inner_text()
    row.get_by_label("New value").fill("Inventor and Actress")
    row.get_by_role("button", name="Write on both sides").click()
    assert f"conflict {conflict['id']}" in flash(page)
    wait_until(lambda: account(p, no)["job_title"] == "Inventor and Actress", 60, what="the value in the CRM")
    wait_until(lambda: contacts_by_email(p, email)[0].job_title == "Inventor and Actress", 60,
               what="the value in Outlook")
    assert held() == []


def test_approve_held_deletes(stack, page):
    p = stack
    tag = uuid.uuid4().hex[:6]
    emails = [f"d{n}.{tag}@brake.example" for n in range(3)]
    numbers = [insert_account(p, company_name=f"Brake {tag} {n}", first_name="B", last_name=f"N{n}", email=e)
               for n, e in enumerate(emails)]
    wait_until(lambda: all(contacts_by_email(p, e) for e in emails), 90, what="the 3 contacts in Outlook")
    p.settle()
    p.crm.execute("UPDATE accounts SET is_active = false WHERE account_no IN (:a, :b, :c)",
                  a=numbers[0], b=numbers[1], c=numbers[2])

    def held():
        rows = json.loads(p.cli("deletes", "list", "--format", "json").stdout or "[]")
        return rows if len(rows) == 3 else None
    wait_until(held, 90, what="3 held deletes")
    p.settle()
    assert all(contacts_by_email(p, e) for e in emails)                   # held: still in the mailbox

    page.goto(p.console_url + "/deletes")
    page.get_by_role("row").filter(has_text=f"account:{numbers[0]}").get_by_role("checkbox").check()
    page.get_by_role("button", name="Discard ticked").click()            # this one stays in the mailbox
    assert "1 held delete(s) discarded" in flash(page)
    page.get_by_role("button", name="Approve all").click()
    assert "2 held delete(s) approved" in flash(page)
    wait_until(lambda: not any(contacts_by_email(p, e) for e in emails[1:]), 60, what="the 2 contacts gone from the folder")
    p.settle()
    assert len(contacts_by_email(p, emails[0])) == 1
    assert json.loads(p.cli("deletes", "list", "--format", "json").stdout or "[]") == []


def test_replay_a_dead_letter_after_fixing_its_data(stack, page):
    p = stack
    title = "Senior Vice President of Everything"   # longer than the CRM database's rule allows
    email = f"paula.{uuid.uuid4().hex[:6]}@poison.example"
    no = insert_account(p, company_name="Poison Pill Ltd", first_name="Paula", last_name="Pill", email=email,
                        job_title="CEO")
    contact = wait_until(lambda: (found := contacts_by_email(p, email)) and found[0], 60, what="the pushed contact")
    p.settle()
    p.crm.execute("CREATE TRIGGER job_title_len BEFORE UPDATE OF job_title ON accounts WHEN length(NEW.job_title) > 20 "
                  "BEGIN SELECT RAISE(ABORT, 'CHECK constraint failed: job_title_len'); END")
    contact.job_title = title
    contact.save(update_fields=["job_title"])
    dead = wait_until(lambda: [e for e in p.dead_events() if e["error_record"] == f"account:{no}"], 120,
                      what="the dead letter")[0]

    page.goto(p.console_url + "/events?status=dead")
    row = page.get_by_role("row").filter(has_text=f"account:{no}")
    assert "job_title_len" in row.inner_text()
    row.get_by_role("link", name=str(dead["id"])).click()
    assert "job_title_len" in page.get_by_role("row").filter(has_text="last error").inner_text()
    assert account(p, no)["job_title"] == "CEO"

    p.crm.execute("DROP TRIGGER job_title_len")                       # the DBA widens the rule
    page.get_by_role("button", name="Replay this event").click()
    assert "replayed 1 of 1 event(s)" in flash(page)
    wait_until(lambda: p.state("SELECT status FROM events WHERE id = :i", i=dead["id"])[0]["status"] == "applied", 60,
               what="the replayed event applied")
    assert account(p, no)["job_title"] == title


def restart_with(p: Pipeline, text: str) -> None:
    """The producer and the worker restarted on this configuration (the console keeps running)."""
    p.settle(timeout=120)
    p.stop("producer")
    p.stop("worker")
    p.config_path.write_text(text)
    p.start_worker()
    p.start_producer()


def test_accept_one_review_item_and_reject_another(stack, page):
    p = stack
    original = p.config_path.read_text()
    restart_with(p, original.replace(POLICY, POLICY + 'on_new_record = "review"\n', 1))
    try:
        tag = uuid.uuid4().hex[:6]
        people = {who: (f"{who}.{tag}@review.example", f"{who.title()}{tag}") for who in ("grace", "ada")}
        p.stop("producer")      # both sides get each person before crmsync sees either (a second source)
        numbers = {who: insert_account(p, company_name=f"Review {tag}", first_name=who.title(), last_name=last,
                                       email=email) for who, (email, last) in people.items()}
        account_, folder = p.outlook()
        for who, (email, last) in people.items():
            Contact(account=account_, folder=folder, given_name=who.title(), surname=last, display_name=f"{who.title()} {last}",
                    company_name=f"Review {tag}", email_addresses=[EmailAddress(email=email, label="EmailAddress1")]).save()
        before_contacts = len(p.contacts())
        p.start_producer()

        def waiting() -> list[dict]:
            return [w for w in json.loads(p.cli("review", "list", "--format", "json").stdout or "[]")
                    if tag in w["name"]]
        wait_until(lambda: len(waiting()) == 4, 180, what="the 4 new records to wait in the review queue")
        p.settle(timeout=120)
        assert len(p.contacts()) == before_contacts                        # held: nothing created meanwhile
        items = {(w["new_on"], w["name"].split()[0].lower()): w for w in waiting()}

        page.goto(p.console_url + "/")
        row = page.get_by_role("table", name="Mailboxes").get_by_role("row").filter(has_text=MAILBOX)
        assert int(row.get_by_role("cell").all_inner_texts()[11]) >= 4
        row.get_by_role("cell").nth(11).get_by_role("link").click()
        assert "/review" in page.url

        grace = items[("crm", "grace")]
        accept = page.get_by_role("button", name=f"accept review item {grace['id']}: link to {grace['candidates'][0]['key']}")
        shown = page.get_by_role("row").filter(has=accept).inner_text()          # the new record beside its candidate
        assert f"account:{numbers['grace']}" in shown and "email" in shown and grace["candidates"][0]["key"] in shown
        accept.click()
        assert f"review item {grace['id']}: account:{numbers['grace']} linked to" in flash(page)
        for who in ("ada",):
            for side in ("crm", "exchange"):
                item = items[(side, who)]
                page.get_by_role("button", name=f"reject review item {item['id']}: create").click()
                assert f"review item {item['id']}: " in flash(page) and "rejected" in flash(page)
        assert not waiting() and tag not in page.locator("main table").inner_text()   # all four decided

        grace_email, ada_email = people["grace"][0], people["ada"][0]
        wait_until(lambda: (p.state("SELECT base_json FROM links WHERE crm_key = :k", k=f"account:{numbers['grace']}")
                            or [{}])[0].get("base_json"), 120, what="the accepted pair to be merged")
        wait_until(lambda: len(contacts_by_email(p, ada_email)) == 2, 120, what="the rejected account created in Outlook")
        wait_until(lambda: p.crm.query("SELECT count(*) AS n FROM accounts WHERE lower(email) = :e", e=ada_email)[0]["n"] == 2,
                   120, what="the rejected contact created in the CRM")
        p.settle(timeout=120)
        assert not waiting()
        # accepted: linked and merged, one contact and one account; rejected: created on both sides
        assert len(contacts_by_email(p, grace_email)) == 1
        assert p.crm.query("SELECT count(*) AS n FROM accounts WHERE lower(email) = :e", e=grace_email)[0]["n"] == 1
        assert p.state("SELECT item_id FROM links WHERE crm_key = :k", k=f"account:{numbers['grace']}")[0]["item_id"] == \
            grace["candidates"][0]["key"]
        assert len(contacts_by_email(p, ada_email)) == 2
        assert p.crm.query("SELECT count(*) AS n FROM accounts WHERE lower(email) = :e", e=ada_email)[0]["n"] == 2
        assert len(p.contacts()) == before_contacts + 1
        decided = p.state("SELECT status, decided_by FROM review_items WHERE id IN (:a, :b, :c)", a=grace["id"],
                          b=items[("crm", "ada")]["id"], c=items[("exchange", "ada")]["id"])
        assert sorted((r["status"], r["decided_by"]) for r in decided) == [
            ("accepted", f"console:{USER}"), ("rejected", f"console:{USER}"), ("rejected", f"console:{USER}")]
    finally:
        restart_with(p, original)

def test_the_overview_shows_each_mailbox_and_the_deployment_as_doctor_sees_it(stack, page):
    p = stack
    p.settle()
    links = p.state("SELECT count(*) AS n FROM links WHERE mailbox = :m AND deleted = :f", m=MAILBOX, f=False)[0]["n"]
    page.goto(p.console_url + "/")
    row = page.get_by_role("table", name="Mailboxes").get_by_role("row").filter(has_text=MAILBOX)
    cells = row.get_by_role("cell").all_inner_texts()
    assert cells[0] == MAILBOX and int(cells[1]) == links > 0
    assert cells[8:12] == ["0", "0", "0", "0"]     # dead, held deletes, open conflicts, review: all dealt with above
    checks = page.get_by_role("table", name="Redis, workers, Exchange and databases").inner_text()
    assert "celery.workers\tOK" in checks and "redis\tOK" in checks and f"mailbox {MAILBOX}\tOK" in checks
    DOCS.mkdir(exist_ok=True)
    page.screenshot(path=str(DOCS / "console-overview.png"), full_page=True)
