"""Log lines are JSON when nobody is watching (a pipe, a file, journald) and console text on a
terminal, unless ``[log] json`` says otherwise."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest
import structlog

from crmsync.logging_setup import configure_logging, get_logger


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture(autouse=True)
def _reset() -> Iterator[None]:
    yield
    structlog.reset_defaults()
    root = logging.getLogger()
    for handler in [h for h in root.handlers if getattr(h, "_crmsync_handler", False)]:
        root.removeHandler(handler)


def test_not_a_terminal_gets_json_lines() -> None:
    stream = io.StringIO()
    configure_logging("INFO", None, stream=stream)
    get_logger("crmsync.worker").info("event.applied", event_id=7, mailbox="alice@example.com",
                                      crm_key="account:A-1", action="updated")
    (line,) = stream.getvalue().splitlines()
    event = json.loads(line)
    assert (event["event"], event["event_id"], event["mailbox"], event["crm_key"], event["action"]) == \
        ("event.applied", 7, "alice@example.com", "account:A-1", "updated")
    assert event["level"] == "info" and event["timestamp"]


def test_a_terminal_gets_console_text() -> None:
    stream = Terminal()
    configure_logging("INFO", None, stream=stream)
    get_logger("crmsync.worker").info("event.applied", event_id=7)
    text = stream.getvalue()
    assert "event.applied" in text and "event_id=7" in text
    with pytest.raises(json.JSONDecodeError):
        json.loads(text.splitlines()[0])


def test_an_explicit_setting_wins_over_the_terminal_check() -> None:
    stream = Terminal()
    configure_logging("INFO", True, stream=stream)
    get_logger("x").info("hello")
    assert json.loads(stream.getvalue())["event"] == "hello"
