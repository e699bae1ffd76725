"""Two rules of "no lost edit", through the whole pipeline.

Newest wins by the servers' clocks: an Outlook edit and a plain-SQL edit of the same field,
both made before a worker sees either, go to the one made later — whatever the SQL client wrote
into ``updated_at`` and whatever its session's time zone.

The worker is stopped while the two edits are made so that they really conflict, then started
again; the second edit waits until the clocks have passed the first one's whole second (Exchange
keeps LastModifiedTime to the second; same-second edits are a documented tie).

What Exchange cannot store as it is (a character exchangelib would write as '?') is a dead letter
naming the record, the field and the character; the rest of its batch syncs.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import sqlalchemy as sa

from tests.support.pipeline import wait_until


def _insert(pipeline, **values) -> str:
    account_no = values.setdefault("account_no", f"T-{uuid.uuid4().hex[:8]}")
    values.setdefault("is_active", True)
    cols = ", ".join(values)
    pipeline.crm.execute(f"INSERT INTO accounts ({cols}) VALUES ({', '.join(':' + k for k in values)})",
                         **values)
    return account_no


def _contact(pipeline, email: str):
    found = [c for c in pipeline.contacts() if any(e.email == email for e in (c.email_addresses or []))]
    return found[0] if len(found) == 1 else None


def _job_title(pipeline, account_no: str) -> str | None:
    return pipeline.crm.query("SELECT job_title FROM accounts WHERE account_no = :n", n=account_no)[0]["job_title"]


def _plain_sql_edit(pipeline, account_no: str, title: str) -> None:
    """A program that keeps its own (wrong) idea of updated_at: on SQLite it leaves the stale value
    alone; on PostgreSQL it writes now() from a New York session (hours behind UTC as a naive time)."""
    if pipeline.crm.kind == "sqlite":
        pipeline.crm.execute("UPDATE accounts SET job_title = :t WHERE account_no = :n", t=title, n=account_no)
        return
    with pipeline.crm.engine.begin() as conn:
        conn.execute(sa.text("SET LOCAL TIME ZONE 'America/New_York'"))
        conn.execute(sa.text("UPDATE accounts SET job_title = :t, updated_at = now() WHERE account_no = :n"),
                     {"t": title, "n": account_no})


def _outlook_edit(pipeline, email: str, title: str) -> datetime:
    contact = _contact(pipeline, email)
    contact.job_title = title
    contact.save(update_fields=["job_title"])
    _, folder = pipeline.outlook()
    return folder.get(id=contact.id).last_modified_time


def _after_second_of(moment: datetime) -> None:
    """Wait (with a deadline) until this machine's clock is in a later whole second than ``moment``."""
    mark = datetime.fromisoformat(moment.isoformat()).astimezone(UTC).replace(microsecond=0)
    wait_until(lambda: datetime.now(UTC).replace(microsecond=0) > mark, 5, interval=0.05,
               what="the clock to pass the first edit's second")


def _synced_account(pipeline, stale_updated_at: str | None) -> tuple[str, str]:
    email = f"when.{uuid.uuid4().hex[:6]}@example.org"
    values = {"company_name": "Clockwork Ltd", "first_name": "Tim", "last_name": "Keeper", "email": email,
              "job_title": "Clerk"}
    if stale_updated_at is not None:
        values["updated_at"] = stale_updated_at
    account_no = _insert(pipeline, **values)
    wait_until(lambda: _contact(pipeline, email), 60, what="the contact in Exchange")
    pipeline.settle()
    if stale_updated_at is not None and pipeline.crm.kind == "sqlite":
        # an import tool that keeps its own timestamps writes it back (this edit changes nothing
        # else, so it is no conflict; it just leaves updated_at stale for the test)
        pipeline.crm.execute("UPDATE accounts SET updated_at = :u WHERE account_no = :n",
                             u=stale_updated_at, n=account_no)
        pipeline.settle()
    return account_no, email


def _conflicts(pipeline, account_no: str) -> list[dict]:
    return pipeline.state("SELECT field, crm_value, exchange_value, chosen FROM conflicts WHERE crm_key = :k",
                          k=f"account:{account_no}")


def test_a_newer_plain_sql_edit_beats_an_older_outlook_edit(pipeline):
    account_no, email = _synced_account(pipeline, stale_updated_at="2001-01-01 00:00:00")
    pipeline.stop("worker")
    try:
        exchange_time = _outlook_edit(pipeline, email, "Outlook title (older)")
        _after_second_of(exchange_time)
        _plain_sql_edit(pipeline, account_no, "CRM title (newer)")
    finally:
        pipeline.start_worker()
    wait_until(lambda: _contact(pipeline, email).job_title == "CRM title (newer)", 90,
               what="the newer CRM title in Exchange")
    pipeline.settle()
    assert _job_title(pipeline, account_no) == "CRM title (newer)"
    assert _contact(pipeline, email).job_title == "CRM title (newer)"
    assert {"field": "job_title", "crm_value": "CRM title (newer)",
            "exchange_value": "Outlook title (older)", "chosen": "crm"} in _conflicts(pipeline, account_no)


def test_a_newer_outlook_edit_beats_an_older_plain_sql_edit(pipeline):
    account_no, email = _synced_account(pipeline, stale_updated_at=None)
    pipeline.stop("worker")
    try:
        _plain_sql_edit(pipeline, account_no, "CRM title (older)")
        _after_second_of(datetime.now(UTC))
        _outlook_edit(pipeline, email, "Outlook title (newer)")
    finally:
        pipeline.start_worker()
    wait_until(lambda: _job_title(pipeline, account_no) == "Outlook title (newer)", 90,
               what="the newer Outlook title in the CRM")
    pipeline.settle()
    assert _contact(pipeline, email).job_title == "Outlook title (newer)"
    assert {"field": "job_title", "crm_value": "CRM title (older)",
            "exchange_value": "Outlook title (newer)", "chosen": "exchange"} in _conflicts(pipeline, account_no)


# --------------------------------------------------------------------------- values Exchange would change

def test_a_character_exchange_would_rewrite_is_a_dead_letter_and_the_rest_of_the_batch_syncs(pipeline):
    """exchangelib writes U+0080..U+009F (but U+0085) and U+FDD0..U+FDDF as '?': the account holding
    one must not arrive changed, nor have '?' written back into the CRM later; it is a dead letter
    naming the field and the character, and the accounts around it sync."""
    tag = uuid.uuid4().hex[:6]
    pipeline.stop("worker")          # the three rows reach the worker together, in one batch
    try:
        before = _insert(pipeline, company_name="Before Ltd", first_name="Bea", last_name="Fore",
                         email=f"before.{tag}@example.org")
        bad = _insert(pipeline, company_name="Control Ltd", first_name="Cy", last_name="One",
                      email=f"bad.{tag}@example.org", notes="call\x9cme")
        after = _insert(pipeline, company_name="After Ltd", first_name="Af", last_name="Ter",
                        email=f"after.{tag}@example.org")
        wait_until(lambda: pipeline.state("SELECT count(*) AS n FROM events WHERE crm_key IN (:a, :b, :c)",
                                          a=f"account:{before}", b=f"account:{bad}", c=f"account:{after}")[0]["n"] >= 3,
                   60, what="the producer to record the three inserts")
    finally:
        pipeline.start_worker()
    wait_until(lambda: _contact(pipeline, f"before.{tag}@example.org") and _contact(pipeline, f"after.{tag}@example.org"),
               90, what="the good accounts in Exchange")
    dead = wait_until(lambda: [e for e in pipeline.dead_events() if e["crm_key"] == f"account:{bad}"], 90,
                      what="the bad account's dead letter")
    error = dead[0]["last_error"]
    assert f"account:{bad}" in error and "field notes" in error and "U+009C" in error, error
    pipeline.settle()
    assert _contact(pipeline, f"bad.{tag}@example.org") is None
    assert not [c for c in pipeline.contacts() if c.body and "call?me" in str(c.body)]
    assert pipeline.crm.query("SELECT notes FROM accounts WHERE account_no = :n", n=bad)[0]["notes"] == "call\x9cme"
