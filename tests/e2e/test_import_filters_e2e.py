"""Exchange -> CRM filters through the real pipeline (issue 9): a mailbox with its own
``private_sensitivities`` and ``only_categories``; a contact kept out never reaches the CRM, the
state database or the logs. One stack per backend for the module, logging at DEBUG."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa
from exchangelib import Contact
from exchangelib.indexed_properties import EmailAddress

from tests.support.pipeline import FOLDER, Pipeline, wait_until

POLICY = 'private_sensitivities = ["Private", "Confidential"]\nonly_categories = ["CRM", "Sales"]\n'
SENSITIVITIES = ("Normal", "Private", "Personal", "Confidential")
CATEGORIES = (["CRM"], ["Family"], None, ["Sales", "Other"], ["crm"])


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def pipeline(request, tmp_path_factory, redis_server):
    p = Pipeline(tmp_path_factory.mktemp(f"e2e-filters-{request.param}"), request.param,
                 broker_url=redis_server.url(redis_server.new_database()))
    text = p.config_path.read_text()
    text = text.replace(f'folder = "{FOLDER}"\n', f'folder = "{FOLDER}"\n{POLICY}', 1)
    p.config_path.write_text(text.replace('level = "INFO"', 'level = "DEBUG"'))
    p.start_worker()
    p.start_producer()
    try:
        p.outlook()
        p.settle()
        yield p
    finally:
        p.close()


def kept(sensitivity: str, categories: list[str] | None) -> bool:
    return sensitivity not in ("Private", "Confidential") and bool({"CRM", "Sales"} & set(categories or ()))


def dump_database(url: str) -> str:
    """Every row of every table as text (SQLite: the raw file bytes too, free pages included)."""
    engine = sa.create_engine(url)
    try:
        parts = []
        with engine.connect() as conn:
            for table in sa.inspect(conn).get_table_names():
                parts.extend(repr(tuple(row)) for row in conn.execute(sa.text(f'SELECT * FROM "{table}"')))
        if url.startswith("sqlite:///"):
            path = Path(url.removeprefix("sqlite:///"))
            for extra in ("", "-wal", "-journal"):
                f = path.with_name(path.name + extra)
                if f.exists():
                    parts.append(f.read_bytes().decode("latin-1"))
        return "\n".join(parts)
    finally:
        engine.dispose()


def test_kept_out_contacts_never_reach_the_crm_the_state_database_or_the_logs(pipeline):
    p = pipeline
    run = uuid.uuid4().hex[:6].upper()
    account, folder = p.outlook()
    people = []
    for n in range(20):
        sensitivity, categories = SENSITIVITIES[n % 4], CATEGORIES[n % 5]
        marker = f"Zq{run}M{n:02d}"               # distinctive: in every field a contact can carry
        people.append((marker, kept(sensitivity, categories)))
        Contact(account=account, folder=folder, sensitivity=sensitivity, categories=categories,
                given_name=f"Given{marker}", surname=f"Sur{marker}", display_name=f"Given{marker} Sur{marker}",
                company_name=f"Company{marker}", job_title=f"Job{marker}", body=f"Notes{marker}",
                email_addresses=[EmailAddress(email=f"mail.{marker.lower()}@filters.example")]).save()
    shown = [m for m, k in people if k]
    hidden = [m for m, k in people if not k]
    assert len(shown) == 4 and len(hidden) == 16   # Normal/Personal and CRM/Sales: 0, 8, 10, 18

    def crm_names():
        rows = p.crm.query("SELECT last_name FROM accounts WHERE last_name LIKE :like", like=f"SurZq{run}%")
        return [r["last_name"] for r in rows]
    wait_until(lambda: {f"Sur{m}" for m in shown} <= set(crm_names()), 120,
               what=f"the {len(shown)} contacts that pass the filters in the CRM")
    p.settle()
    assert sorted(crm_names()) == sorted(f"Sur{m}" for m in shown)
    outcomes = [r["outcome"] for r in p.state("SELECT outcome FROM events WHERE source = 'exchange'")]
    assert outcomes.count("private-skipped") >= len(hidden), outcomes   # the pipeline did look at them

    crm, state = dump_database(p.crm.url), dump_database(p.crm.state_url)
    logs = p.log("producer") + p.log("worker")
    assert "DEBUG" in logs or "debug" in logs
    for marker in shown:                            # the searches can find what is there
        assert f"Job{marker}" in crm and f"Job{marker}" in state
    for marker in hidden:
        for where, text in (("CRM database", crm), ("state database", state), ("producer/worker logs", logs)):
            assert marker not in text and marker.lower() not in text, f"{marker} leaked into the {where}"

    # A kept-out contact given a listed category is imported from then on.
    late = f"Zq{run}M02"                            # Personal, no category
    assert late in hidden
    item = next(c for c in folder.all() if c.surname == f"Sur{late}")
    item.categories = ["Family", "Sales"]
    item.save(update_fields=["categories"])
    wait_until(lambda: p.crm.query("SELECT job_title FROM accounts WHERE last_name = :n", n=f"Sur{late}"), 60,
               what="the contact to be imported once it carries a listed category")
