"""exchangelib's exceptions -> crmsync's error vocabulary (Transient, Stale, ConfigError ...).

Workers decide by error class alone: Transient retries with back-off (``retry_after`` from
ErrorServerBusy's BackOffMilliseconds), Stale re-reads and reconciles, BadRecord becomes a
dead letter at once; MailboxUnavailable (a ConfigError: access to one mailbox denied, HTTP 401,
no such mailbox, its folder missing) retries with back-off and is never dead-lettered. Messages name the mailbox and what was being done;
they never contain a password (exchangelib's own messages hold URLs and user names only, and
:func:`scrub` removes a secret that would appear anyway).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator, Sequence

import requests
from exchangelib import errors as ex
from exchangelib.protocol import FaultTolerance

from crmsync.errors import BadRecord, ConfigError, CrmsyncError, MailboxUnavailable, Stale, Transient

#: Default seconds exchangelib itself may sleep on back-offs (in total, per request) before the
#: retry is handed to Celery.
DEFAULT_MAX_WAIT = 5.0  # below exchangelib's RETRY_WAIT (10 s): connection errors and 5xx go straight to Celery


class BoundedFaultTolerance(FaultTolerance):
    """exchangelib's FaultTolerance with a short, *total* patience, and 401 as a login failure.

    FaultTolerance sleeps and retries in-process while one server back-off stays below
    ``max_wait``, but it keeps doing so for as long as the server answers "busy" with short
    back-offs. Here the back-offs of one run of retries (in one thread) add up, and once the
    sum would pass ``max_wait`` it raises RateLimitError (-> Transient with the server's
    back-off), so the Celery retry takes over instead of a worker blocking for minutes.
    Stock FaultTolerance also treats HTTP 401 as throttling and retries it; a wrong password
    would then look transient for ever, so 401 fails at once here (-> ConfigError).
    """

    #: Back-offs further apart than max_wait + this many seconds start a new run of retries.
    RUN_GAP = 30.0

    def __init__(self, max_wait: float = DEFAULT_MAX_WAIT) -> None:
        super().__init__(max_wait=max_wait)
        self._runs = threading.local()

    def __getstate__(self):
        state = super().__getstate__()
        state.pop("_runs", None)
        return state

    def __setstate__(self, state):
        super().__setstate__(state)
        self._runs = threading.local()

    def back_off(self, seconds):
        if seconds is None:
            seconds = self.DEFAULT_BACKOFF
        now = time.monotonic()
        last = getattr(self._runs, "last", None)
        if last is None or now - last > self.max_wait + self.RUN_GAP:
            self._runs.started = now
        self._runs.last = now
        if (now - self._runs.started) + seconds > self.max_wait:
            self._runs.last = None
            raise ex.RateLimitError("Max timeout reached", wait=seconds)
        super().back_off(seconds)

    def raise_response_errors(self, response):
        if response.status_code == 401:
            raise ex.UnauthorizedError(f"Invalid credentials for {response.url} (HTTP 401)")
        return super().raise_response_errors(response)


# Response codes that are a setup problem (rights, mailbox name), not a passing fault.
_CONFIG_ERRORS: tuple[type[Exception], ...] = (
    ex.UnauthorizedError,
    ex.ErrorAccessDenied,
    ex.ErrorImpersonateUserDenied,
    ex.ErrorImpersonationDenied,
    ex.ErrorNonExistentMailbox,
    ex.ErrorMailboxConfiguration,
    ex.CASError,
)

#: Of those, the ones that deny one mailbox (its credentials, rights or address): MailboxUnavailable,
#: reported and retried later with back-off while the other mailboxes carry on.
_ACCESS_ERRORS: tuple[type[Exception], ...] = (
    ex.UnauthorizedError,
    ex.ErrorAccessDenied,
    ex.ErrorImpersonateUserDenied,
    ex.ErrorImpersonationDenied,
    ex.ErrorNonExistentMailbox,
)

_TRANSIENT_ERRORS: tuple[type[Exception], ...] = (
    ex.ErrorServerBusy,
    ex.ErrorTimeoutExpired,
    ex.ErrorInternalServerTransientError,
    ex.ErrorInternalServerError,
    ex.ErrorConnectionFailed,
    ex.ErrorConnectionFailedTransientError,
    ex.ErrorMailboxStoreUnavailable,
    ex.ErrorMailboxMoveInProgress,
    ex.ErrorTooManyObjectsOpened,
    ex.ErrorExceededConnectionCount,
    ex.ErrorBatchProcessingStopped,
    ex.MalformedResponseError,   # a truncated or non-XML reply (HTTP 5xx pages land here)
    ex.SOAPError,
    requests.exceptions.ConnectionError,
    requests.exceptions.Timeout,
    ConnectionError,
    TimeoutError,
)


def scrub(text: str, secrets: Sequence[str | None] = ()) -> str:
    """``text`` with every non-empty secret replaced by ***."""
    for s in secrets:
        if s:
            text = text.replace(s, "***")
    return text


def _describe(exc: BaseException) -> str:
    msg = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    if len(msg) > 200:  # e.g. MalformedResponseError quotes the whole reply, which may hold contact data
        msg = msg[:200] + " ..."
    return f"{type(exc).__name__}: {msg}" if msg else type(exc).__name__


def translate(exc: BaseException, mailbox: str, doing: str, secrets: Sequence[str | None] = ()) -> BaseException:
    """The crmsync error for an exchangelib/requests exception; other exceptions unchanged."""
    if isinstance(exc, CrmsyncError):
        return exc
    where = f"mailbox {mailbox}: {doing}"
    text = scrub(_describe(exc), secrets)
    if isinstance(exc, ex.RateLimitError):
        return Transient(f"{where}: server busy, asked to wait {exc.wait:g} s ({text})", retry_after=float(exc.wait))
    if isinstance(exc, ex.ErrorServerBusy):
        return Transient(f"{where}: server busy ({text})", retry_after=exc.back_off)
    if isinstance(exc, ex.ErrorIrresolvableConflict):
        return Stale(f"{where}: the item changed since it was read (ErrorIrresolvableConflict)")
    if isinstance(exc, (ex.ErrorInvalidChangeKey, ex.ErrorStaleObject)):
        return Stale(f"{where}: the ChangeKey is no longer current ({text})")
    if isinstance(exc, _CONFIG_ERRORS):
        hint = {
            ex.UnauthorizedError: "check the username and the password environment variable",
            ex.ErrorImpersonateUserDenied: "grant the service account ApplicationImpersonation, or use access = \"delegate\"",
            ex.ErrorImpersonationDenied: "grant the service account ApplicationImpersonation, or use access = \"delegate\"",
            ex.ErrorNonExistentMailbox: "check the [[mailbox]] address",
            ex.ErrorAccessDenied: "give the service account access to this mailbox's contacts folder",
        }.get(type(exc), "check the [exchange] settings")
        if isinstance(exc, _ACCESS_ERRORS):
            return MailboxUnavailable(f"{where}: {text}; {hint}", mailbox)
        return ConfigError(f"{where}: {text}; {hint}")
    if isinstance(exc, ex.TransportError) and "CERTIFICATE_VERIFY_FAILED" in str(exc):
        return ConfigError(f"{where}: TLS certificate not trusted ({text}); install the CA, or set verify_tls = false")
    if isinstance(exc, _TRANSIENT_ERRORS):
        return Transient(f"{where}: {text}")
    if isinstance(exc, ex.TransportError) and not isinstance(exc, ex.ResponseMessageError):
        return Transient(f"{where}: {text}")
    if isinstance(exc, ex.ResponseMessageError):
        return BadRecord(f"{where}: Exchange refused the request ({text})")
    return exc


@contextlib.contextmanager
def ews_errors(mailbox: str, doing: str, secrets: Sequence[str | None] = ()) -> Iterator[None]:
    """Translate exchangelib errors raised in the block (see :func:`translate`)."""
    try:
        yield
    except Exception as exc:
        mapped = translate(exc, mailbox, doing, secrets)
        if mapped is exc:
            raise
        raise mapped from None
