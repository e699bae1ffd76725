"""The Graph probe of ``crmsync doctor``: can the app get a token, may it use the mailbox, is the
sync folder there and readable. Facts only, as a dict with a ``kind`` (ok | secret | token |
unreachable | tls | access | mailbox | folder | error) and a ``detail`` without secrets (the
client secret never reaches a message; tokens are never printed). Nothing is created: a missing
folder stays missing. The app's Graph permission is Contacts.ReadWrite only, so the probe reads
contact folders, never ``/users/{id}`` (which needs User.Read.All)."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from crmsync.adapters.exchange.graph.client import error_code
from crmsync.adapters.exchange.graph.connect import connect, open_folder, user_path
from crmsync.config import ExchangeSettings
from crmsync.errors import ConfigError, CrmsyncError, MailboxUnavailable


def _tls(text: str) -> bool:
    return "CERTIFICATE_VERIFY_FAILED" in text or "SSLError" in text or "certificate verify failed" in text


def probe_graph_mailbox(settings: ExchangeSettings, address: str, folder: str) -> dict[str, Any]:
    """Token, then the mailbox's contact folders, then ``folder`` under Contacts, then one contact of it."""
    app = f"app {settings.client_id} in tenant {settings.tenant_id}"
    try:
        client = connect(settings)
    except ConfigError as exc:
        return {"kind": "secret", "detail": str(exc)}
    try:
        try:
            client.token()
        except ConfigError as exc:
            return {"kind": "token", "detail": str(exc)}
        except CrmsyncError as exc:
            return {"kind": "tls" if _tls(str(exc)) else "unreachable", "detail": str(exc)}
        where = f"mailbox {address}: listing its contact folders"
        try:
            resp = client.request("GET", f"{user_path(address)}/contactFolders", where=where,
                                  params={"$top": "1", "$select": "id"}, allow=(401, 403, 404))
        except CrmsyncError as exc:
            return {"kind": "tls" if _tls(str(exc)) else "unreachable", "detail": str(exc)}
        body = resp.json() if resp.content else None
        code = error_code(body)
        if resp.status_code == 401:
            return {"kind": "token", "detail": f"{where}: Graph refused the {app}'s token (HTTP 401, {code})"}
        if resp.status_code == 403:
            return {"kind": "access", "detail": f"{where}: access denied to the {app} (HTTP 403, {code})"}
        if resp.status_code == 404:
            return {"kind": "mailbox", "detail": f"{where}: no such mailbox over Graph (HTTP 404, {code})"}
        try:
            folder_id = open_folder(client, address, folder, create=False)
            client.request("GET", f"{user_path(address)}/contactFolders/{quote(folder_id, safe='')}/contacts",
                           where=f"mailbox {address}: reading folder {folder!r}", mailbox=address,
                           params={"$top": "1", "$select": "id"})
        except MailboxUnavailable as exc:
            text = str(exc)
            kind = "folder" if "does not exist" in text else "access" if "HTTP 403" in text else "mailbox"
            return {"kind": kind, "detail": text}
        except CrmsyncError as exc:
            return {"kind": "tls" if _tls(str(exc)) else "error", "detail": str(exc)}
        return {"kind": "ok"}
    finally:
        client.close()
