"""The emulator's token endpoint with certificate credentials (``--graph-app-cert``): client
assertions (``private_key_jwt``) checked as the Microsoft identity platform documents them, over
HTTP only (httpx, and MSAL as a client would use it)."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import time

import httpx
import msal
import pytest
import requests

from tests.support.app_cert import AppCert, client_assertion, make_app_cert

from .graph_helpers import ALICE, BOB, GRAPH_SCOPE, MAIN_APP, TENANT, Graph, assert_graph_error, ssl_context

CERT_APP = "cert-app"            # Contacts.ReadWrite on every mailbox, certificate credential
SCOPED_CERT_APP = "scoped-cert-app"   # certificate credential, limited to bob's mailbox
JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


@pytest.fixture
def cert_env(start_graph_emulator, tmp_path):
    """(emulator, CA, the registered app certificate, a second certificate nobody registered)."""
    cert = make_app_cert(tmp_path / "app-cert", CERT_APP)
    other = make_app_cert(tmp_path / "app-cert", "unregistered")
    emu, ca = start_graph_emulator(graph_app_certs=[f"{TENANT}:{CERT_APP}:{cert.cert_pem}",
                                                    f"{TENANT}:{SCOPED_CERT_APP}:{cert.cert_pem}"],
                                   graph_app_scopes=[f"{SCOPED_CERT_APP}:{BOB}"])
    return emu, ca, cert, other


def endpoint(emu, tenant: str = TENANT) -> str:
    return f"{emu.base_url}/{tenant}/oauth2/v2.0/token"


def post_assertion(emu, ca, assertion: str, client_id: str = CERT_APP, **form) -> httpx.Response:
    data = {"grant_type": "client_credentials", "scope": GRAPH_SCOPE[0], "client_id": client_id,
            "client_assertion_type": JWT_BEARER, "client_assertion": assertion, **form}
    return httpx.post(endpoint(emu), data=data, verify=ssl_context(ca))


def refused(resp: httpx.Response, assertion: str, status: int, error: str, code: int) -> str:
    """The response is Entra's error body with this status, error and AADSTS code, and does not
    echo the assertion (nor its signature); returns the description."""
    assert resp.status_code == status, (resp.status_code, resp.text)
    body = resp.json()
    assert body["error"] == error and body["error_codes"] == [code], body
    assert body["error_description"].startswith(f"AADSTS{code}: ")
    signature = assertion.rsplit(".", 1)[-1]
    assert assertion not in resp.text and (not signature or signature not in resp.text)
    assert "access_token" not in body
    return body["error_description"]


@pytest.mark.parametrize(("alg", "sha256"), [("RS256", False), ("PS256", True), ("RS256", True), ("PS256", False)])
def test_a_valid_assertion_gets_a_token_that_works_on_the_graph_routes(cert_env, alg, sha256):
    emu, ca, cert, _ = cert_env
    assertion = client_assertion(cert, CERT_APP, endpoint(emu), alg=alg, sha256_thumbprint=sha256)
    resp = post_assertion(emu, ca, assertion)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["token_type"] == "Bearer" and body["expires_in"] > 3000
    claims = json.loads(base64.urlsafe_b64decode(body["access_token"].split(".")[1] + "=="))
    assert (claims["appid"], claims["appidacr"]) == (CERT_APP, "2")      # Entra's "2": a certificate credential
    g = Graph(emu, ca, body["access_token"])
    try:
        made = g.new_folder(f"Cert {alg}")
        listed = g.get(f"/users/{ALICE}/contactFolders").json()["value"]
        assert made in {f["id"] for f in listed}
    finally:
        g.close()


def test_the_client_id_may_come_from_the_assertion_alone(cert_env):
    emu, ca, cert, _ = cert_env
    assertion = client_assertion(cert, CERT_APP, endpoint(emu))
    data = {"grant_type": "client_credentials", "scope": GRAPH_SCOPE[0], "client_assertion_type": JWT_BEARER,
            "client_assertion": assertion}
    resp = httpx.post(endpoint(emu), data=data, verify=ssl_context(ca))
    assert resp.status_code == 200, resp.text


def test_msal_with_the_certificate_gets_a_token(cert_env):
    emu, ca, cert, _ = cert_env
    session = requests.Session()
    session.verify, session.trust_env = str(ca), False
    app = msal.ConfidentialClientApplication(
        CERT_APP, client_credential={"private_key": cert.private_pem, "thumbprint": cert.thumbprint},
        authority=f"{emu.base_url}/{TENANT}", instance_discovery=False, http_client=session)
    result = app.acquire_token_for_client(scopes=GRAPH_SCOPE)
    assert "access_token" in result, {k: v for k, v in result.items() if k != "access_token"}
    g = Graph(emu, ca, result["access_token"])
    try:
        assert g.get(f"/users/{ALICE}/contactFolders").status_code == 200
    finally:
        g.close()


def test_a_signature_by_another_key_is_refused(cert_env):
    emu, ca, cert, other = cert_env
    forged = client_assertion(other, CERT_APP, endpoint(emu), named=cert)     # names the registered cert
    text = refused(post_assertion(emu, ca, forged), forged, 401, "invalid_client", 700027)
    assert "did not match the expected signature value" in text and cert.thumbprint in text


def test_an_unregistered_certificate_is_refused_naming_its_thumbprint(cert_env):
    emu, ca, _, other = cert_env
    assertion = client_assertion(other, CERT_APP, endpoint(emu))
    text = refused(post_assertion(emu, ca, assertion), assertion, 401, "invalid_client", 700027)
    assert "not registered on application" in text and other.thumbprint in text and CERT_APP in text


def test_an_assertion_naming_no_thumbprint_is_refused(cert_env):
    emu, ca, cert, _ = cert_env
    assertion = client_assertion(cert, CERT_APP, endpoint(emu), drop=("x5t",))
    refused(post_assertion(emu, ca, assertion), assertion, 401, "invalid_client", 700027)


def test_an_expired_or_not_yet_valid_assertion_is_refused(cert_env):
    emu, ca, cert, _ = cert_env
    expired = client_assertion(cert, CERT_APP, endpoint(emu), now=time.time() - 3600)
    text = refused(post_assertion(emu, ca, expired), expired, 401, "invalid_client", 700024)
    assert "not within its valid time range" in text
    early = client_assertion(cert, CERT_APP, endpoint(emu), now=time.time() + 3600)
    refused(post_assertion(emu, ca, early), early, 401, "invalid_client", 700024)
    skewed = client_assertion(cert, CERT_APP, endpoint(emu), now=time.time() - 120, lifetime=60)
    assert post_assertion(emu, ca, skewed).status_code == 200        # 1 minute past exp: within the skew
    no_exp = client_assertion(cert, CERT_APP, endpoint(emu), drop=("exp",))
    refused(post_assertion(emu, ca, no_exp), no_exp, 400, "invalid_request", 50027)


def test_a_wrong_audience_is_refused(cert_env):
    emu, ca, cert, _ = cert_env
    for aud in ("https://login.microsoftonline.com/contoso.onmicrosoft.com/oauth2/v2.0/token",
                endpoint(emu, "fabrikam.onmicrosoft.com"), "https://graph.microsoft.com"):
        assertion = client_assertion(cert, CERT_APP, aud)
        text = refused(post_assertion(emu, ca, assertion), assertion, 401, "invalid_client", 50012)
        assert endpoint(emu) in text
    as_list = client_assertion(cert, CERT_APP, "x", aud=["https://other.example", endpoint(emu)])
    assert post_assertion(emu, ca, as_list).status_code == 200
    v1 = client_assertion(cert, CERT_APP, f"{emu.base_url}/{TENANT}/oauth2/token")      # the v1 endpoint
    assert post_assertion(emu, ca, v1).status_code == 200


def test_issuer_and_subject_must_be_the_client_id(cert_env):
    emu, ca, cert, _ = cert_env
    for claims in ({"iss": "someone-else"}, {"sub": "someone-else"}):
        assertion = client_assertion(cert, CERT_APP, endpoint(emu), **claims)
        refused(post_assertion(emu, ca, assertion), assertion, 401, "invalid_client", 700021)


def test_an_assertion_without_jti_is_refused(cert_env):
    emu, ca, cert, _ = cert_env
    assertion = client_assertion(cert, CERT_APP, endpoint(emu), drop=("jti",))
    assert "'jti'" in refused(post_assertion(emu, ca, assertion), assertion, 401, "invalid_client", 700027)


def test_malformed_requests_are_refused(cert_env):
    emu, ca, cert, _ = cert_env
    good = client_assertion(cert, CERT_APP, endpoint(emu))
    refused(post_assertion(emu, ca, "not-a-jwt"), "not-a-jwt", 400, "invalid_request", 50027)
    resp = post_assertion(emu, ca, good, client_assertion_type="urn:ietf:params:oauth:grant-type:saml2-bearer")
    refused(resp, good, 400, "invalid_request", 90014)
    refused(post_assertion(emu, ca, good, client_secret="x"), good, 400, "invalid_request", 90023)
    header_none = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0." + good.split(".")[1] + "."     # {"alg":"none"}
    refused(post_assertion(emu, ca, header_none), header_none, 401, "invalid_client", 5002738)


def test_credentials_are_not_interchangeable(cert_env):
    """A secret app has no certificate, a certificate app no secret."""
    emu, ca, cert, _ = cert_env
    assertion = client_assertion(cert, MAIN_APP[0], endpoint(emu))
    text = refused(post_assertion(emu, ca, assertion, client_id=MAIN_APP[0]), assertion, 401, "invalid_client", 700027)
    assert "not registered on application" in text
    resp = httpx.post(endpoint(emu), verify=ssl_context(ca), data={
        "grant_type": "client_credentials", "scope": GRAPH_SCOPE[0], "client_id": CERT_APP, "client_secret": "guess"})
    assert resp.status_code == 401 and resp.json()["error_codes"] == [7000215]


def test_a_certificate_app_is_limited_by_its_rbac_scope(cert_env):
    emu, ca, cert, _ = cert_env
    assertion = client_assertion(cert, SCOPED_CERT_APP, endpoint(emu))
    resp = post_assertion(emu, ca, assertion, client_id=SCOPED_CERT_APP)
    assert resp.status_code == 200, resp.text
    g = Graph(emu, ca, resp.json()["access_token"])
    try:
        assert g.get(f"/users/{BOB}/contactFolders").status_code == 200
        assert_graph_error(g.get(f"/users/{ALICE}/contactFolders"), 403, "ErrorAccessDenied")
    finally:
        g.close()


def test_two_certificates_of_one_app_both_sign_in_during_a_rotation(start_graph_emulator, tmp_path):
    old, new = make_app_cert(tmp_path / "old", CERT_APP), make_app_cert(tmp_path / "new", CERT_APP)
    emu, ca = start_graph_emulator(graph_app_certs=[f"{TENANT}:{CERT_APP}:{old.cert_pem}",
                                                    f"{TENANT}:{CERT_APP}:{new.cert_pem}"])
    for cert in (old, new):
        assert post_assertion(emu, ca, client_assertion(cert, CERT_APP, endpoint(emu))).status_code == 200


def test_an_expired_registered_certificate_is_refused(start_graph_emulator, tmp_path):
    import datetime

    old = make_app_cert(tmp_path / "old", CERT_APP, days=1,
                        not_before=datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=3))
    emu, ca = start_graph_emulator(graph_app_certs=[f"{TENANT}:{CERT_APP}:{old.cert_pem}"])
    assertion = client_assertion(old, CERT_APP, endpoint(emu))
    assert "The key used is expired" in refused(post_assertion(emu, ca, assertion), assertion, 401,
                                                "invalid_client", 700027)


@pytest.mark.parametrize("spec", ["contoso:app-only", "contoso:app:/does/not/exist.pem", "contoso:app:{key}"])
def test_a_bad_graph_app_cert_option_stops_the_emulator_with_a_message(tmp_path, spec):
    cert: AppCert = make_app_cert(tmp_path / "c")
    key_only = tmp_path / "key-only.pem"
    key_only.write_text(cert.private_pem.split("-----BEGIN CERTIFICATE-----")[0])
    done = subprocess.run([sys.executable, "-m", "ews_emulator", "--data", str(tmp_path / "d"), "--port", "0",
                           "--user", "a@example.com:pw", "--graph-app-cert", spec.format(key=key_only)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "--graph-app-cert" in done.stderr
    assert "PRIVATE KEY" not in done.stderr and "MII" not in done.stderr
