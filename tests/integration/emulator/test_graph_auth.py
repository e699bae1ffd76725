"""The Graph front door's identity side: MSAL client credentials against the emulator's token
service, and bearer-token checks on the Graph routes (HTTP only)."""

from __future__ import annotations

import base64
import json

import httpx
import pytest

from .graph_helpers import (
    ALICE,
    BOB,
    GRAPH_SCOPE,
    MAIN_APP,
    SCOPED_APP,
    TENANT,
    Graph,
    assert_graph_error,
    msal_app,
    msal_token,
    ssl_context,
    wait_for,
)


def _token_post(emu, ca, tenant=TENANT, **form) -> httpx.Response:
    data = {"grant_type": "client_credentials", "scope": GRAPH_SCOPE[0], **form}
    return httpx.post(f"{emu.base_url}/{tenant}/oauth2/v2.0/token", data=data, verify=ssl_context(ca))


def test_msal_gets_a_token_through_oidc_discovery_and_graph_accepts_it(graph_env):
    emu, ca, _ = graph_env
    app = msal_app(emu, ca)
    result = app.acquire_token_for_client(scopes=GRAPH_SCOPE)
    assert result["token_type"] == "Bearer" and result["expires_in"] > 3000
    again = app.acquire_token_for_client(scopes=GRAPH_SCOPE)
    assert again["access_token"] == result["access_token"]        # MSAL's cache: same token
    assert again.get("token_source") == "cache"
    g = Graph(emu, ca, result["access_token"])
    r = g.get(f"/users/{ALICE}/contactFolders")
    assert r.status_code == 200 and r.json()["value"] == []
    claims = json.loads(base64.urlsafe_b64decode(result["access_token"].split(".")[1] + "=="))
    assert claims["aud"] == "https://graph.microsoft.com" and claims["roles"] == ["Contacts.ReadWrite"]
    assert claims["appid"] == MAIN_APP[0] and claims["tid"] == TENANT
    assert emu.stats()["graph:token"] == 2      # the fixture's token and this one; the cached one asked nothing
    g.close()


def test_oidc_document_names_the_token_endpoint(graph_env):
    emu, ca, _ = graph_env
    r = httpx.get(f"{emu.base_url}/{TENANT}/v2.0/.well-known/openid-configuration", verify=ssl_context(ca))
    assert r.status_code == 200
    doc = r.json()
    assert doc["token_endpoint"] == f"{emu.base_url}/{TENANT}/oauth2/v2.0/token"
    assert doc["issuer"] == f"{emu.base_url}/{TENANT}/v2.0"


def test_bad_secret_is_invalid_client(graph_env):
    emu, ca, _ = graph_env
    result = msal_app(emu, ca, secret="wrong").acquire_token_for_client(scopes=GRAPH_SCOPE)
    assert "access_token" not in result
    assert result["error"] == "invalid_client" and "AADSTS7000215" in result["error_description"]
    r = _token_post(emu, ca, client_id=MAIN_APP[0], client_secret="wrong")
    assert r.status_code == 401 and r.json()["error_codes"] == [7000215]


def test_wrong_tenant_fails_discovery_and_the_token_request(graph_env):
    emu, ca, _ = graph_env
    with pytest.raises(ValueError, match="Unable to get authority configuration"):
        msal_app(emu, ca, tenant="fabrikam.onmicrosoft.com")
    r = _token_post(emu, ca, tenant="fabrikam.onmicrosoft.com", client_id=MAIN_APP[0], client_secret=MAIN_APP[1])
    assert r.status_code == 400 and r.json()["error"] == "invalid_request" and r.json()["error_codes"] == [90002]


def test_unknown_app_and_bad_scope_and_grant(graph_env):
    emu, ca, _ = graph_env
    r = _token_post(emu, ca, client_id="nobody", client_secret="x")
    assert r.status_code == 400 and r.json()["error"] == "unauthorized_client"
    r = _token_post(emu, ca, client_id=MAIN_APP[0], client_secret=MAIN_APP[1], scope="Contacts.ReadWrite")
    assert r.status_code == 400 and r.json()["error"] == "invalid_scope"
    r = _token_post(emu, ca, client_id=MAIN_APP[0], client_secret=MAIN_APP[1], grant_type="password")
    assert r.status_code == 400 and r.json()["error"] == "unsupported_grant_type"


def test_missing_garbled_and_forged_tokens_are_401(graph_env):
    emu, ca, g = graph_env
    anon = Graph(emu, ca, None)
    r = anon.get(f"/users/{ALICE}/contactFolders")
    assert_graph_error(r, 401, "InvalidAuthenticationToken")
    assert r.headers["WWW-Authenticate"].startswith("Bearer ")
    garbled = Graph(emu, ca, "not-a-jwt")
    assert_graph_error(garbled.get(f"/users/{ALICE}/contactFolders"), 401, "InvalidAuthenticationToken")
    # A token whose claims were edited (another app id) fails the signature check.
    token = msal_token(emu, ca)
    head, payload, sig = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    claims["exp"] += 10_000
    forged_payload = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    forged = Graph(emu, ca, f"{head}.{forged_payload}.{sig}")
    assert_graph_error(forged.get(f"/users/{ALICE}/contactFolders"), 401, "InvalidAuthenticationToken")
    for c in (anon, garbled, forged):
        c.close()


def test_expired_token_is_401(start_graph_emulator):
    emu, ca = start_graph_emulator(graph_token_lifetime=1)
    g = Graph(emu, ca, msal_token(emu, ca))

    def rejected() -> httpx.Response | None:
        r = g.get(f"/users/{ALICE}/contactFolders")
        return r if r.status_code == 401 else None

    r = wait_for(rejected, timeout=15, what="the 1-second token to expire")
    err = assert_graph_error(r, 401, "InvalidAuthenticationToken")
    assert "expired" in err["message"]
    g.close()


def test_scoped_app_is_denied_other_mailboxes(graph_env):
    emu, ca, _ = graph_env
    scoped = Graph(emu, ca, msal_token(emu, ca, *SCOPED_APP))
    assert scoped.get(f"/users/{BOB}/contactFolders").status_code == 200
    assert_graph_error(scoped.get(f"/users/{ALICE}/contactFolders"), 403, "ErrorAccessDenied")
    assert_graph_error(scoped.get(f"/users/{ALICE}/contacts"), 403, "ErrorAccessDenied")
    scoped.close()


def test_user_forms_me_and_unknown_users(graph_env):
    emu, ca, g = graph_env
    assert g.get(f"/users/{ALICE.upper()}/contacts").status_code == 200
    user = g.get(f"/users/{ALICE}").json()
    assert user["mail"] == ALICE and user["userPrincipalName"] == ALICE
    assert g.get(f"/users/{user['id']}").json()["id"] == user["id"]
    folder = g.new_folder("By id", mailbox=user["id"])
    assert [f["id"] for f in g.get(f"/users/{ALICE}/contactFolders").json()["value"]] == [folder]
    assert_graph_error(g.get("/me/contacts"), 400, "BadRequest")
    assert_graph_error(g.get("/users/nobody@example.com/contacts"), 404, "ErrorInvalidUser")


def test_tokens_survive_an_emulator_restart(graph_env):
    emu, ca, g = graph_env
    assert g.get(f"/users/{ALICE}/contacts").status_code == 200
    emu.restart()
    g.http.close()
    g2 = Graph(emu, ca, g.http.headers["Authorization"].split(" ", 1)[1])
    assert g2.get(f"/users/{ALICE}/contacts").status_code == 200
    g2.close()


def test_no_auth_emulator_needs_no_token(start_emulator):
    emu = start_emulator(users=[], no_auth=True, mailboxes=["demo@example.com"])
    r = httpx.get(f"{emu.graph_base}/users/demo@example.com/contactFolders")
    assert r.status_code == 200 and r.json()["value"] == []
