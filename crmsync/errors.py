"""The error vocabulary shared by the core, the adapters and the processes.

Workers map these to Celery behaviour: ``BadRecord`` becomes a dead letter at once (retrying
cannot help); ``Stale`` re-reads and reconciles again; ``LeaseTaken`` retries shortly without
counting an attempt; anything else (``Transient`` with the server's back-off) retries with
back-off until ``sync.max_attempts``, then becomes a dead letter.
"""

from __future__ import annotations


class CrmsyncError(Exception):
    """Base of every error crmsync raises on purpose; its text is safe to log (no secrets)."""


class ConfigError(CrmsyncError):
    """The configuration is invalid; the message names the key and what is wrong."""


class Transient(CrmsyncError):
    """Worth retrying later (server busy, connection lost). ``retry_after`` is in seconds."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Stale(CrmsyncError):
    """An optimistic-concurrency precondition failed: the record changed since it was read."""


class LeaseTaken(CrmsyncError):
    """Another worker holds the link's lease; try again shortly."""


class BadRecord(CrmsyncError):
    """A record cannot be synced as it is (which record, which field, why)."""


class MailboxUnavailable(ConfigError):
    """One mailbox cannot be reached as configured: access denied (wrong credentials, HTTP 401,
    no impersonation or delegate right), no such mailbox, or its sync folder is missing.

    A setup problem of that mailbox only: the producer reports it and tries that mailbox again
    with back-off while the others carry on; the worker retries its events (never a dead letter
    for this reason, see workers/tasks.py). ``mailbox`` is the address."""

    def __init__(self, message: str, mailbox: str) -> None:
        super().__init__(message)
        self.mailbox = mailbox
