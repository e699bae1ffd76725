"""Helpers for the Graph front-door tests: an HTTPS emulator with registered apps, MSAL tokens and
an httpx client. The emulator is reached over HTTP(S) only.

TLS: clients that verify refuse a bare self-signed leaf, so the emulator gets a certificate from a
throwaway CA (``ca_signed_cert``) and clients verify against that CA. MSAL uses ``requests``, whose
``REQUESTS_CA_BUNDLE`` environment variable overrides a session's ``verify``; the MSAL app therefore
gets its own ``requests.Session`` with ``trust_env = False``.
"""

from __future__ import annotations

import ssl
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import msal
import requests

from tests.support.emulator_proc import ca_signed_cert

TENANT = "contoso.onmicrosoft.com"
MAIN_APP = ("crmsync-app", "main-secret")          # Contacts.ReadWrite on every mailbox
SCOPED_APP = ("scoped-app", "scoped-secret")       # limited to bob's mailbox
GRAPH_SCOPE = ["https://graph.microsoft.com/.default"]
CRM_KEY_ID = "String {00020329-0000-0000-C000-000000000046} Name crmsync-crm-key"
SENSITIVITY_ID = "Integer 0x0036"
ALICE = "alice@example.com"
BOB = "bob@example.com"


def graph_overrides(tmp_dir: Path, **extra: Any) -> dict:
    """start_emulator() keyword arguments for an HTTPS emulator with the two test apps."""
    ca, cert, key = ca_signed_cert(tmp_dir / "tls")
    kw = dict(tls_cert=str(cert), tls_key=str(key),
              graph_apps=[f"{TENANT}:{MAIN_APP[0]}:{MAIN_APP[1]}", f"{TENANT}:{SCOPED_APP[0]}:{SCOPED_APP[1]}"],
              graph_app_scopes=[f"{SCOPED_APP[0]}:{BOB}"])
    kw.update(extra)
    kw["_ca"] = ca
    return kw


def ssl_context(ca: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(ca))


def msal_app(emu, ca: Path, client_id: str = MAIN_APP[0], secret: str = MAIN_APP[1],
             tenant: str = TENANT) -> msal.ConfidentialClientApplication:
    """An MSAL confidential client whose authority is the emulator (OIDC discovery included)."""
    session = requests.Session()
    session.verify = str(ca)
    session.trust_env = False
    return msal.ConfidentialClientApplication(client_id, client_credential=secret,
                                              authority=f"{emu.base_url}/{tenant}", instance_discovery=False,
                                              http_client=session)


def msal_token(emu, ca: Path, client_id: str = MAIN_APP[0], secret: str = MAIN_APP[1]) -> str:
    result = msal_app(emu, ca, client_id, secret).acquire_token_for_client(scopes=GRAPH_SCOPE)
    assert "access_token" in result, result
    return result["access_token"]


class Graph:
    """A thin httpx client on the emulator's /v1.0 with a bearer token."""

    def __init__(self, emu, ca: Path, token: str | None) -> None:
        self.emu = emu
        self.ca = ca
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.http = httpx.Client(base_url=emu.graph_base, verify=ssl_context(ca), headers=headers, timeout=30)

    def close(self) -> None:
        self.http.close()

    def request(self, method: str, path: str, **kw: Any) -> httpx.Response:
        return self.http.request(method, path, **kw)

    def get(self, path: str, **kw: Any) -> httpx.Response:
        return self.http.get(path, **kw)

    def post(self, path: str, json: Any = None, **kw: Any) -> httpx.Response:
        return self.http.post(path, json=json, **kw)

    def patch(self, path: str, json: Any = None, **kw: Any) -> httpx.Response:
        return self.http.patch(path, json=json, **kw)

    def delete(self, path: str, **kw: Any) -> httpx.Response:
        return self.http.delete(path, **kw)

    def follow(self, url: str, **kw: Any) -> httpx.Response:
        """GET an absolute @odata.nextLink / @odata.deltaLink."""
        return self.http.get(url, **kw)

    # conveniences
    def new_folder(self, name: str, mailbox: str = ALICE) -> str:
        r = self.post(f"/users/{mailbox}/contactFolders", json={"displayName": name})
        assert r.status_code == 201, r.text
        return r.json()["id"]

    def new_contact(self, folder: str, body: dict, mailbox: str = ALICE) -> dict:
        r = self.post(f"/users/{mailbox}/contactFolders/{folder}/contacts", json=body)
        assert r.status_code == 201, r.text
        return r.json()


def assert_graph_error(resp: httpx.Response, status: int, code: str) -> dict:
    """The response is a Graph error with this status and code, shaped exactly as Graph's."""
    assert resp.status_code == status, (resp.status_code, resp.text)
    body = resp.json()
    assert set(body) == {"error"}, body
    err = body["error"]
    assert set(err) == {"code", "message", "innerError"}, err
    assert err["code"] == code, err
    assert isinstance(err["message"], str) and err["message"]
    assert {"date", "request-id", "client-request-id"} <= set(err["innerError"]), err
    assert resp.headers["request-id"] == err["innerError"]["request-id"]
    return err


def wait_for(condition: Callable[[], Any], timeout: float = 15.0, interval: float = 0.05, what: str = "") -> Any:
    """Poll ``condition`` until it returns a truthy value or the deadline passes (then fail)."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what or condition}")
        time.sleep(interval)


def collect_delta(g: Graph, first: httpx.Response) -> tuple[list[dict], str, int]:
    """Follow nextLinks from ``first`` to the deltaLink: (all values, deltaLink, pages)."""
    values: list[dict] = []
    resp = first
    pages = 0
    while True:
        assert resp.status_code == 200, resp.text
        body = resp.json()
        pages += 1
        values.extend(body["value"])
        if "@odata.deltaLink" in body:
            assert "@odata.nextLink" not in body
            return values, body["@odata.deltaLink"], pages
        resp = g.follow(body["@odata.nextLink"], headers=dict(first.request.headers))
