"""exchangelib's exceptions become crmsync's error classes, with the mailbox and no secret."""

from __future__ import annotations

import pytest
import requests
from exchangelib import errors as ex

from crmsync.adapters.exchange.ews.faults import BoundedFaultTolerance, translate
from crmsync.errors import BadRecord, ConfigError, MailboxUnavailable, Stale, Transient

MAILBOX = "alice@example.com"


@pytest.mark.parametrize(
    ("exc", "expected", "retry_after"),
    [
        (ex.RateLimitError("Max timeout reached", wait=2.5), Transient, 2.5),
        (ex.ErrorServerBusy("busy", back_off=3), Transient, 3),
        (ex.ErrorTimeoutExpired("read timed out"), Transient, None),
        (ex.ErrorInternalServerTransientError("HTTP 503"), Transient, None),
        (ex.MalformedResponseError("Unknown failure in response. Code: 502"), Transient, None),
        (requests.exceptions.ConnectionError("refused"), Transient, None),
        (ex.ErrorIrresolvableConflict("conflict"), Stale, None),
        (ex.ErrorAccessDenied("denied"), MailboxUnavailable, None),
        (ex.ErrorImpersonateUserDenied("no right"), MailboxUnavailable, None),
        (ex.ErrorNonExistentMailbox("no mailbox"), MailboxUnavailable, None),
        (ex.UnauthorizedError("Invalid credentials"), MailboxUnavailable, None),
        (ex.TransportError("[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed"), ConfigError, None),
        (ex.ErrorInvalidPropertySet("bad value"), BadRecord, None),
    ],
)
def test_exchangelib_errors_map_to_crmsync_errors(exc, expected, retry_after):
    mapped = translate(exc, MAILBOX, "updating item X")
    assert type(mapped) is expected
    assert str(mapped).startswith(f"mailbox {MAILBOX}: updating item X")
    if expected is Transient:
        assert mapped.retry_after == retry_after


def test_a_secret_in_an_error_text_is_scrubbed():
    mapped = translate(ex.TransportError("failed for user:hunter2@host"), MAILBOX, "connecting", secrets=["hunter2"])
    assert "hunter2" not in str(mapped)


def test_an_error_quoting_a_whole_reply_is_cut_short():
    mapped = translate(ex.MalformedResponseError("content: " + "x" * 5000), MAILBOX, "reading")
    assert len(str(mapped)) < 400


def test_an_unrelated_exception_is_left_alone():
    err = KeyError("bug")
    assert translate(err, MAILBOX, "reading") is err


def test_back_offs_add_up_to_max_wait_then_raise():
    policy = BoundedFaultTolerance(max_wait=1.0)
    policy.back_off(0.3)
    policy.back_off(0.3)
    with pytest.raises(ex.RateLimitError) as info:
        policy.back_off(2.0)
    assert info.value.wait == 2.0
