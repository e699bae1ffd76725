"""Probes of Exchange for ``crmsync doctor``: does the endpoint answer (and over verified TLS),
do the credentials sign in, is each mailbox's folder there and readable. Facts only, as dicts
with a ``kind`` (ok | missing | unreachable | tls | auth | secret | access | mailbox | folder |
error) and a ``detail`` without secrets. Nothing is created: a missing folder stays missing."""

from __future__ import annotations

import warnings
from typing import Any

import requests
from exchangelib import errors as ex

from crmsync.adapters.exchange.ews.connect import connect, connect_owner, open_folder
from crmsync.adapters.exchange.ews.faults import scrub
from crmsync.config import PUBLIC_PREFIX, ExchangeSettings
from crmsync.errors import ConfigError


def _text(exc: BaseException, secrets: tuple[str | None, ...] = ()) -> str:
    msg = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return scrub(f"{type(exc).__name__}: {msg[:200]}" if msg else type(exc).__name__, secrets)


def probe_endpoint(settings: ExchangeSettings, timeout_s: float = 5.0) -> dict[str, Any]:
    """One unauthenticated GET of the endpoint: any HTTP answer means it is reachable."""
    endpoint = settings.endpoint
    if not endpoint:
        return {"kind": "missing"}
    scheme = endpoint.split(":", 1)[0].lower()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")   # InsecureRequestWarning when verify_tls is off
            requests.get(endpoint, timeout=timeout_s, verify=settings.verify_tls, allow_redirects=False)
    except requests.exceptions.SSLError as exc:
        return {"kind": "tls", "detail": f"{endpoint}: TLS handshake failed: {_text(exc)}"}
    except requests.RequestException as exc:
        return {"kind": "unreachable", "detail": f"{endpoint}: no answer: {_text(exc)}"}
    return {"kind": "ok", "endpoint": endpoint, "scheme": scheme, "verify_tls": settings.verify_tls}


def _classify(exc: BaseException) -> str:
    if isinstance(exc, ex.UnauthorizedError):
        return "auth"
    if isinstance(exc, (ex.ErrorImpersonateUserDenied, ex.ErrorImpersonationDenied, ex.ErrorAccessDenied)):
        return "access"
    if isinstance(exc, (ex.ErrorNonExistentMailbox, ex.ErrorMailboxConfiguration)):
        return "mailbox"
    if isinstance(exc, requests.exceptions.SSLError) or "CERTIFICATE_VERIFY_FAILED" in str(exc):
        return "tls"
    if isinstance(exc, (requests.RequestException, ex.TransportError, ConnectionError, TimeoutError)):
        return "unreachable"
    return "error"


def probe_mailbox(settings: ExchangeSettings, address: str, folder: str, *, owner: str | None = None) -> dict[str, Any]:
    """Sign in for ``address``, find ``folder`` (without creating it) under Contacts, under
    ``owner``'s Contacts (a [[mailbox]]'s folder_owner), or in the public folders
    ("public:A/B"), and read one item."""
    public = folder.startswith(PUBLIC_PREFIX)
    path = folder[len(PUBLIC_PREFIX):] if public else folder
    try:
        secrets = (settings.password(),)
    except ConfigError as exc:
        return {"kind": "secret", "detail": str(exc)}
    try:
        account = connect(settings, address)
        _ = account.contacts   # the first request: signs in, resolves the mailbox and the access right
    except Exception as exc:  # noqa: BLE001 - classified and reported
        return {"kind": _classify(exc), "detail": f"mailbox {address}: {_text(exc, secrets)}"}
    try:
        target = connect_owner(settings, owner) if owner else account
        found = open_folder(target, path, create=False, public=public, label=address)
    except ConfigError as exc:
        return {"kind": "folder", "detail": scrub(str(exc), secrets)}
    except Exception as exc:  # noqa: BLE001
        return {"kind": _classify(exc), "detail": f"mailbox {address}: {_text(exc, secrets)}"}
    try:
        list(found.all().only("id")[:1])
    except Exception as exc:  # noqa: BLE001
        kind = _classify(exc)
        return {"kind": "access" if kind == "error" else kind,
                "detail": f"mailbox {address}: folder {folder!r} not readable: {_text(exc, secrets)}"}
    return {"kind": "ok"}
