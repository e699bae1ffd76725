"""Secrets never reach a log line, whether crmsync or a library (stdlib logging) logged them."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest
import structlog

from crmsync.config import load_settings
from crmsync.logging_setup import configure_logging, get_logger, register_secret


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    configure_logging("DEBUG", json=True, stream=stream)
    yield stream
    structlog.reset_defaults()
    root = logging.getLogger()
    for handler in [h for h in root.handlers if getattr(h, "_crmsync_handler", False)]:
        root.removeHandler(handler)


def lines(stream: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]


def test_values_under_secret_keys_are_redacted(captured: io.StringIO) -> None:
    get_logger("crmsync.test").info("connecting", password="pw-1", client_secret="cs-1", api_token="tk-1",
                                    headers={"Authorization": "Basic dXNlcjpwdw=="}, user="svc@example.com")
    (event,) = lines(captured)
    assert event["event"] == "connecting"
    assert event["password"] == event["client_secret"] == event["api_token"] == "***"
    assert event["headers"] == {"Authorization": "***"}
    assert event["user"] == "svc@example.com"  # only secrets are hidden


def test_a_registered_secret_is_redacted_anywhere(captured: io.StringIO) -> None:
    register_secret("correct-horse-battery")
    log = get_logger("crmsync.test")
    log.warning("login failed", detail="server said: bad password correct-horse-battery", attempts=["correct-horse-battery"])
    logging.getLogger("exchangelib.protocol").error("auth header for correct-horse-battery rejected")
    try:
        raise RuntimeError("cannot log in with correct-horse-battery")
    except RuntimeError:
        log.exception("crashed")
    out = captured.getvalue()
    assert "correct-horse-battery" not in out
    events = lines(captured)
    assert events[0]["detail"] == "server said: bad password ***" and events[0]["attempts"] == ["***"]
    assert events[1]["event"] == "auth header for *** rejected" and events[1]["logger"] == "exchangelib.protocol"
    assert "RuntimeError: cannot log in with ***" in events[2]["exception"]


def test_passwords_in_urls_are_redacted(captured: io.StringIO) -> None:
    get_logger().info("broker", url="redis://:r3dis-pw@redis.internal:6379/0")
    assert lines(captured)[0]["url"] == "redis://:***@redis.internal:6379/0"


def test_the_exchange_password_is_registered_when_read(captured: io.StringIO) -> None:
    settings = load_settings(env={"CRMSYNC_EXCHANGE_PASSWORD": "Xyzzy-plugh-42"})
    password = settings.exchange.password()
    get_logger().info("sending", body=f"<t:Password>{password}</t:Password>")
    assert "Xyzzy-plugh-42" not in captured.getvalue()
    assert lines(captured)[0]["body"] == "<t:Password>***</t:Password>"


def test_the_level_filters_and_console_format_also_redacts() -> None:
    stream = io.StringIO()
    configure_logging("WARNING", json=False, stream=stream)
    try:
        log = get_logger("crmsync.test")
        log.info("quiet")
        log.warning("loud", token="abc123")
        out = stream.getvalue()
        assert "quiet" not in out
        assert "loud" in out and "token=***" in out and "abc123" not in out
    finally:
        structlog.reset_defaults()
        root = logging.getLogger()
        for handler in [h for h in root.handlers if getattr(h, "_crmsync_handler", False)]:
            root.removeHandler(handler)


@pytest.mark.parametrize("line", [
    "Request headers: {'User-Agent': 'x', 'Authorization': 'Basic c3ZjOnN2Yy1zZWNyZXQ=', 'Content-Type': 'text/xml'}",
    'Request headers: {"authorization": "Bearer eyJ0eXAiOiJKV1QiLCJhbGciOi.J9.sig-_x"}',
    "Authorization: NTLM TlRMTVNTUAADAAAAGAAYAHAAAAA=\r\nHost: mail",
    "proxy-authorization=Negotiate YIIGhgYGKwYBBQUCoIIGejCCBnag",
])
def test_authorization_headers_are_redacted_in_any_text(captured: io.StringIO, line: str) -> None:
    logging.getLogger("exchangelib.util").error(line)
    out = captured.getvalue()
    for secret in ("c3ZjOnN2Yy1zZWNyZXQ=", "eyJ0eXAiOiJKV1QiLCJhbGciOi.J9.sig-_x", "TlRMTVNTUAADAAAAGAAYAHAAAAA=",
                   "YIIGhgYGKwYBBQUCoIIGejCCBnag"):
        assert secret not in out
    assert "***" in out


def test_exchangelib_wire_logging_stays_off_at_debug_unless_switched_on(captured: io.StringIO) -> None:
    assert logging.getLogger("exchangelib.util").getEffectiveLevel() >= logging.INFO
    assert logging.getLogger("exchangelib.util.xml").getEffectiveLevel() >= logging.INFO
    logging.getLogger("exchangelib.util.xml").debug("Request XML: %s", "<t:GivenName>Ann</t:GivenName>")
    assert "GivenName" not in captured.getvalue()
    configure_logging("DEBUG", json=True, stream=captured, ews_wire=True)
    assert logging.getLogger("exchangelib.util.xml").getEffectiveLevel() == logging.DEBUG
