"""Credentials and private contacts never reach a log, whatever the level: a real exchangelib
session against the emulator, logged at DEBUG through crmsync's logging setup."""

from __future__ import annotations

import base64
import io
import logging
import uuid
from collections.abc import Iterator

import pytest
import structlog
from exchangelib import Contact
from exchangelib.indexed_properties import EmailAddress

from crmsync.adapters.exchange.ews.connect import connect
from crmsync.logging_setup import configure_logging
from tests.support.emulator_proc import start_emulator
from tests.support.exchange_settings import exchange_settings

MAILBOX = "alice@example.com"
PASSWORD = f"Pw-{uuid.uuid4().hex[:10]}"
BASIC_TOKEN = base64.b64encode(f"{MAILBOX}:{PASSWORD}".encode()).decode()


@pytest.fixture(scope="module")
def emulator(tmp_path_factory):
    emu = start_emulator(tmp_path_factory.mktemp("ews-logging"), users={MAILBOX: PASSWORD})
    try:
        yield emu
    finally:
        emu.stop()


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    yield stream
    structlog.reset_defaults()
    root = logging.getLogger()
    for handler in [h for h in root.handlers if getattr(h, "_crmsync_handler", False)]:
        root.removeHandler(handler)
    for name in ("exchangelib", "exchangelib.util", "exchangelib.util.xml"):
        logging.getLogger(name).setLevel(logging.NOTSET)


def _talk_to_exchange(endpoint: str) -> str:
    """Log in with Basic credentials, create a private contact and a normal one, read both back."""
    account = connect(exchange_settings(endpoint, username=MAILBOX, password=PASSWORD), MAILBOX)
    secret_name = f"Secretia{uuid.uuid4().hex[:6]}"
    private = Contact(account=account, folder=account.contacts, given_name=secret_name, surname="Hidden",
                      display_name=f"{secret_name} Hidden", sensitivity="Private",
                      email_addresses=[EmailAddress(label="EmailAddress1", email=f"{secret_name}@home.example")])
    normal = Contact(account=account, folder=account.contacts, given_name="Norma", surname="Public",
                     display_name="Norma Public")
    private.save()
    normal.save()
    list(account.fetch(ids=[private, normal]))
    return secret_name


def _assert_nothing_secret(out: str, secret_name: str) -> None:
    assert PASSWORD not in out
    assert BASIC_TOKEN not in out
    assert base64.b64encode(PASSWORD.encode()).decode() not in out
    assert secret_name not in out, "a private contact's fields reached the log"


def test_debug_logging_shows_neither_credentials_nor_the_wire(emulator, captured) -> None:
    configure_logging("DEBUG", json=True, stream=captured)
    secret_name = _talk_to_exchange(emulator.endpoint)
    out = captured.getvalue()
    _assert_nothing_secret(out, secret_name)
    assert "Request XML" not in out and "Request headers" not in out   # the wire stays off at DEBUG


def test_the_wire_switch_logs_requests_with_credentials_and_private_contacts_redacted(emulator, captured) -> None:
    configure_logging("DEBUG", json=True, stream=captured, ews_wire=True)
    secret_name = _talk_to_exchange(emulator.endpoint)
    out = captured.getvalue()
    assert "Request headers" in out and "CreateItem" in out and "Norma" in out   # the wire is on
    _assert_nothing_secret(out, secret_name)


def test_the_wire_switch_is_documented_in_the_settings() -> None:
    from crmsync.config import load_settings

    assert load_settings(env={}).log.ews_wire is False
    assert load_settings(env={"CRMSYNC_LOG_EWS_WIRE": "true"}).log.ews_wire is True
