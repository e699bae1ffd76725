"""A GraphClient from typed settings, and a mailbox's sync folder under its Contacts folder.

The client secret is read from the variable ``exchange.client_secret_env`` names, at connect time
(``crmsync.config`` registers it for log redaction); a certificate is read from
``certificate_path`` (PEM private key) with ``certificate_thumbprint``. Neither ever appears in
a message.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import quote

from crmsync.adapters.exchange.graph.client import GraphClient
from crmsync.adapters.exchange.graph.limiter import RedisSlots
from crmsync.config import ExchangeSettings
from crmsync.errors import ConfigError, MailboxUnavailable

#: Folders per page when listing a folder's children (Graph's default page is 10).
_FOLDER_PAGE = 100


def connect(settings: ExchangeSettings, *, verify: Any = None, shared_limit_url: str | None = None,
            shared_limit_master: str | None = None, shared_limit_sentinel_password: str | None = None) -> GraphClient:
    """A client for the app ``settings`` describe; no request is sent yet.

    ``verify`` overrides ``exchange.verify_tls`` (a CA bundle path or an ``ssl.SSLContext``,
    e.g. a private CA in tests). With ``shared_limit_url`` (a redis:// URL, the broker's, or a
    sentinel:// one with ``shared_limit_master``) the
    mailbox concurrency limit is counted in that Redis, across every process; without it, in
    this process only."""
    problems = settings.graph_problems()
    if problems:
        raise ConfigError("; ".join(f"config key {k}: {why}" for k, why in problems))
    credential: str | dict[str, str]
    if settings.certificate_path:
        try:
            with open(settings.certificate_path, encoding="utf-8") as handle:
                pem = handle.read()
        except OSError as exc:
            raise ConfigError(f"config key exchange.certificate_path: cannot read {settings.certificate_path} "
                              f"({exc.strerror or type(exc).__name__})") from None
        if "PRIVATE KEY" not in pem:
            raise ConfigError(f"config key exchange.certificate_path: {settings.certificate_path} holds no PEM "
                              "private key (export the certificate with its key, as PEM)")
        credential = {"private_key": pem, "thumbprint": _thumbprint(str(settings.certificate_thumbprint))}
    else:
        credential = settings.client_secret()
    limiter = None
    if shared_limit_url and shared_limit_url.split(":", 1)[0] in ("redis", "rediss", "unix", "sentinel"):
        limiter = RedisSlots(shared_limit_url, app=f"{settings.tenant_id}:{settings.client_id}",
                             master=shared_limit_master, sentinel_password=shared_limit_sentinel_password,
                             limit=settings.mailbox_concurrency, wait_s=settings.timeout_s,
                             lease_s=3 * settings.timeout_s)
    return GraphClient(
        tenant_id=str(settings.tenant_id), client_id=str(settings.client_id), credential=credential,
        authority=settings.authority, graph_url=settings.graph_url,
        verify=settings.verify_tls if verify is None else verify,
        timeout_s=settings.timeout_s, max_wait_s=settings.max_wait_s,
        mailbox_concurrency=settings.mailbox_concurrency, limiter=limiter,
    )


def _thumbprint(text: str) -> str:
    """The certificate's SHA-1 thumbprint as 40 hex digits; the separators Windows' certificate
    dialogs and ``openssl x509 -fingerprint`` put in (spaces, colons) are dropped."""
    digits = re.sub(r"[\s:]", "", text).upper()
    if not re.fullmatch(r"[0-9A-F]{40}", digits):
        raise ConfigError("config key exchange.certificate_thumbprint: expected the certificate's SHA-1 thumbprint, "
                          "40 hex digits as Entra ID shows it under Certificates & secrets "
                          "(openssl x509 -noout -fingerprint -sha1 -in CERT.pem)")
    return digits


def user_path(mailbox: str) -> str:
    return f"users/{quote(mailbox, safe='@')}"


def _split(path: str) -> list[str]:
    parts = [p.strip() for p in path.split("/")]
    if not path.strip() or any(not p for p in parts):
        raise ConfigError(f"mailbox folder {path!r}: expected a name like 'CRM Accounts' or 'A/B' under Contacts")
    return parts


def _children(client: GraphClient, mailbox: str, parent: str | None, where: str) -> list[dict]:
    url = (f"{user_path(mailbox)}/contactFolders" if parent is None
           else f"{user_path(mailbox)}/contactFolders/{quote(parent, safe='')}/childFolders")
    out: list[dict] = []
    next_url: str | None = url
    params: dict | None = {"$top": str(_FOLDER_PAGE), "$select": "id,displayName"}
    while next_url:
        body = client.request("GET", next_url, where=where, mailbox=mailbox, params=params).json()
        out.extend(body.get("value", []))
        next_url, params = body.get("@odata.nextLink"), None
    return out


def open_folder(client: GraphClient, mailbox: str, path: str, create: bool = True) -> str:
    """The id of the contact folder at ``path`` ("CRM Accounts", "A/B") under the mailbox's
    Contacts folder (``contactFolders`` and nested ``childFolders``). Missing parts are created
    when ``create`` is true, else ConfigError names the missing part. Names match
    case-insensitively, as on Exchange."""
    parts = _split(path)
    parent: str | None = None
    walked: list[str] = []
    for name in parts:
        where = f"mailbox {mailbox}: opening folder {path!r}"
        found = next((f["id"] for f in _children(client, mailbox, parent, where)
                      if str(f.get("displayName", "")).lower() == name.lower()), None)
        if found is None:
            if not create:
                here = "Contacts" + "".join(f"/{w}" for w in walked)
                raise MailboxUnavailable(
                    f"mailbox {mailbox}: folder {name!r} does not exist under {here} (path {path!r}). "
                    "Create it in Outlook, or set create_folder = true for this mailbox.", mailbox)
            url = (f"{user_path(mailbox)}/contactFolders" if parent is None
                   else f"{user_path(mailbox)}/contactFolders/{quote(parent, safe='')}/childFolders")
            resp = client.request("POST", url, where=where, mailbox=mailbox, allow=(409,),
                                  json={"displayName": name})
            if resp.status_code == 409:   # another process created it a moment ago: use that one
                found = next(f["id"] for f in _children(client, mailbox, parent, where)
                             if str(f.get("displayName", "")).lower() == name.lower())
            else:
                found = resp.json()["id"]
        walked.append(name)
        parent = found
    assert parent is not None
    return parent
