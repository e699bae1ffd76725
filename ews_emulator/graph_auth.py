"""Microsoft identity platform stand-in for the Graph front door: app registrations, the
client-credentials token endpoint, OIDC discovery and bearer-token checks.

Apps come from ``--graph-app TENANT:CLIENT_ID:SECRET`` (a client secret) or
``--graph-app-cert TENANT:CLIENT_ID:CERT_PEM`` (a certificate credential: the app signs a
``client_assertion`` JWT with the certificate's private key, as the Microsoft identity platform's
"certificate credentials" describe), each with application permission Contacts.ReadWrite on every
mailbox, and ``--graph-app-scope CLIENT_ID:MAILBOX`` (limits the app to the named mailboxes, like
an RBAC for Applications management scope). Tokens are JWTs signed with HS256 by
a key the emulator keeps in its store (``meta`` table), so tokens stay valid across restarts until
they expire, as Entra ID tokens do across an Exchange restart.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

GRAPH_RESOURCE = "https://graph.microsoft.com"
GRAPH_APP_ID = "00000003-0000-0000-c000-000000000000"   # Microsoft Graph's well-known app id
ROLE = "Contacts.ReadWrite"
_KEY_META = "graph_token_hmac_key"
JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
#: Clock skew allowed on a client assertion's exp / nbf, as Entra ID allows (5 minutes).
ASSERTION_SKEW_S = 300
_key_lock = threading.Lock()


@dataclass(frozen=True)
class AppCertificate:
    """The public part of an app's certificate credential, as uploaded under "Certificates & secrets"."""

    sha1: bytes
    sha256: bytes
    public_key: rsa.RSAPublicKey
    not_before: datetime
    not_after: datetime

    @classmethod
    def load(cls, path: str) -> AppCertificate:
        try:
            with open(path, "rb") as handle:
                data = handle.read()
            cert = x509.load_pem_x509_certificate(data)
        except OSError as e:
            raise ValueError(f"--graph-app-cert: cannot read {path} ({e.strerror or type(e).__name__})") from None
        except ValueError:
            raise ValueError(f"--graph-app-cert: {path} holds no PEM certificate") from None
        key = cert.public_key()
        if not isinstance(key, rsa.RSAPublicKey):
            raise ValueError(f"--graph-app-cert: {path}: Entra ID takes RSA certificates only")
        return cls(sha1=cert.fingerprint(hashes.SHA1()), sha256=cert.fingerprint(hashes.SHA256()),
                   public_key=key, not_before=cert.not_valid_before_utc, not_after=cert.not_valid_after_utc)

    def window(self) -> str:
        return f"Start={self.not_before:%m/%d/%Y %H:%M:%S}, End={self.not_after:%m/%d/%Y %H:%M:%S}"


@dataclass
class GraphApps:
    """Registered apps: (tenant, client_id) -> secret and/or certificates; client_id -> mailboxes it
    is limited to."""

    secrets: dict[tuple[str, str], str] = field(default_factory=dict)
    certs: dict[tuple[str, str], list[AppCertificate]] = field(default_factory=dict)
    scopes: dict[str, set[str]] = field(default_factory=dict)
    token_lifetime: int = 3599
    mailbox_concurrency: int = 4

    @classmethod
    def from_args(cls, apps: list[str] = (), app_scopes: list[str] = (), token_lifetime: int = 3599,
                  mailbox_concurrency: int = 4, app_certs: list[str] = ()) -> GraphApps:
        out = cls(token_lifetime=int(token_lifetime), mailbox_concurrency=int(mailbox_concurrency))
        if out.token_lifetime < 1:
            raise ValueError("--graph-token-lifetime must be at least 1 second")
        if out.mailbox_concurrency < 1:
            raise ValueError("--graph-mailbox-concurrency must be at least 1")
        for spec in apps:
            parts = spec.split(":", 2)
            if len(parts) != 3 or not all(p.strip() for p in parts[:2]) or not parts[2]:
                raise ValueError(f"--graph-app {spec.split(':', 1)[0]!r}...: expected TENANT:CLIENT_ID:SECRET")
            tenant, client_id, secret = parts
            out.secrets[(tenant.strip().lower(), client_id.strip().lower())] = secret
        for spec in app_certs:
            parts = spec.split(":", 2)
            if len(parts) != 3 or not all(p.strip() for p in parts):
                raise ValueError(f"--graph-app-cert {spec!r}: expected TENANT:CLIENT_ID:CERT_PEM_PATH")
            tenant, client_id, path = (p.strip() for p in parts)
            out.certs.setdefault((tenant.lower(), client_id.lower()), []).append(AppCertificate.load(path))
        for spec in app_scopes:
            client_id, sep, mailbox = spec.partition(":")
            if not sep or not client_id.strip() or not mailbox.strip():
                raise ValueError(f"--graph-app-scope {spec!r}: expected CLIENT_ID:MAILBOX")
            out.scopes.setdefault(client_id.strip().lower(), set()).add(mailbox.strip().lower())
        return out

    @property
    def tenants(self) -> set[str]:
        return {t for t, _ in self.secrets} | {t for t, _ in self.certs}

    def registered(self, tenant: str, client_id: str) -> bool:
        key = (tenant.lower(), client_id.lower())
        return key in self.secrets or key in self.certs

    def may_use(self, client_id: str, mailbox: str) -> bool:
        """Whether the app's management scope (if any) includes ``mailbox``."""
        scope = self.scopes.get(client_id.lower())
        return scope is None or mailbox.lower() in scope


class AuthError(Exception):
    """A failed token request or token check: OAuth ``error`` plus AADSTS description, or (for
    bearer checks) the Graph error message."""

    def __init__(self, status: int, error: str, description: str, code: int = 0) -> None:
        super().__init__(description)
        self.status = status
        self.error = error
        self.description = description
        self.code = code


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def signing_key(store) -> bytes:
    """The emulator's HMAC key, created once and kept in the store so tokens survive restarts."""
    with _key_lock:
        value = store.get_meta(_KEY_META)
        if value is None:
            value = base64.b64encode(os.urandom(32)).decode()
            store.set_meta(_KEY_META, value)
    return base64.b64decode(value)


def issue_token(key: bytes, tenant: str, client_id: str, lifetime: int, now: float | None = None,
                acr: str = "1") -> str:
    """An app-only access token; ``acr`` is how the app authenticated, as Entra's ``appidacr``
    tells it: "1" a client secret, "2" a certificate."""
    now = int(now if now is not None else time.time())
    header = {"typ": "JWT", "alg": "HS256", "kid": "ews-emulator"}
    claims = {"aud": GRAPH_RESOURCE, "iss": f"https://sts.windows.net/{tenant}/", "iat": now, "nbf": now,
              "exp": now + lifetime, "appid": client_id, "appidacr": acr, "idtyp": "app",
              "roles": [ROLE], "tid": tenant, "ver": "1.0", "uti": uuid.uuid4().hex}
    signing_input = _b64url(json.dumps(header, separators=(",", ":")).encode()) + "." + \
        _b64url(json.dumps(claims, separators=(",", ":")).encode())
    sig = hmac.new(key, signing_input.encode(), hashlib.sha256).digest()
    return signing_input + "." + _b64url(sig)


def check_token(key: bytes, apps: GraphApps, token: str, now: float | None = None) -> dict:
    """The claims of a valid bearer token; AuthError(401, 'InvalidAuthenticationToken', ...) otherwise."""
    def bad(msg: str) -> AuthError:
        return AuthError(401, "InvalidAuthenticationToken", msg)

    if not token:
        raise bad("Access token is empty.")
    parts = token.split(".")
    if len(parts) != 3:
        raise bad("IDX14100: JWT is not well formed, there are no dots (.).")
    try:
        expected = hmac.new(key, f"{parts[0]}.{parts[1]}".encode(), hashlib.sha256).digest()
        if not hmac.compare_digest(expected, _unb64url(parts[2])):
            raise bad("Access token validation failure. Invalid signature.")
        claims = json.loads(_unb64url(parts[1]))
    except (ValueError, TypeError):
        raise bad("Access token validation failure.") from None
    if not isinstance(claims, dict) or claims.get("aud") not in (GRAPH_RESOURCE, GRAPH_RESOURCE + "/",
                                                                  GRAPH_APP_ID):
        raise bad("Access token validation failure. Invalid audience.")
    now = now if now is not None else time.time()
    if not isinstance(claims.get("exp"), int) or claims["exp"] <= now:
        raise bad("Lifetime validation failed, the token is expired.")
    if isinstance(claims.get("nbf"), int) and claims["nbf"] > now + 300:
        raise bad("Lifetime validation failed, the token is not yet valid.")
    tenant, client_id = str(claims.get("tid", "")).lower(), str(claims.get("appid", "")).lower()
    if not apps.registered(tenant, client_id):
        raise bad("Access token validation failure. The application or tenant is not registered.")
    if ROLE not in (claims.get("roles") or []):
        raise AuthError(403, "ErrorAccessDenied", "Access is denied. Check credentials and try again.")
    return claims


def openid_configuration(base: str, tenant: str) -> dict:
    """The OIDC discovery document MSAL reads from ``{authority}/v2.0/.well-known/openid-configuration``."""
    root = f"{base}/{tenant}"
    return {
        "token_endpoint": f"{root}/oauth2/v2.0/token",
        "token_endpoint_auth_methods_supported": ["client_secret_post", "private_key_jwt", "client_secret_basic"],
        "jwks_uri": f"{base}/{tenant}/discovery/v2.0/keys",
        "response_modes_supported": ["query", "fragment", "form_post"],
        "subject_types_supported": ["pairwise"],
        "id_token_signing_alg_values_supported": ["RS256"],
        "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
        "scopes_supported": ["openid", "profile", "email", "offline_access"],
        "issuer": f"{root}/v2.0",
        "request_uri_parameter_supported": False,
        "authorization_endpoint": f"{root}/oauth2/v2.0/authorize",
        "device_authorization_endpoint": f"{root}/oauth2/v2.0/devicecode",
        "http_logout_supported": True,
        "frontchannel_logout_supported": True,
        "end_session_endpoint": f"{root}/oauth2/v2.0/logout",
        "claims_supported": ["sub", "iss", "aud", "exp", "iat", "nbf", "tid", "appid"],
        "tenant_region_scope": "EU",
        "cloud_instance_name": "microsoftonline.com",
        "cloud_graph_host_name": "graph.windows.net",
        "msgraph_host": "graph.microsoft.com",
    }


def token_request(key: bytes, apps: GraphApps, tenant: str, form: dict[str, str],
                  basic: tuple[str, str] | None = None, endpoint: str = "", now: float | None = None) -> dict:
    """Answer a client-credentials token request (the form fields) or raise AuthError with the
    AADSTS error Entra ID gives. The client authenticates with a secret (form or Basic) or with a
    ``client_assertion`` signed by its certificate; ``endpoint`` is this token endpoint's URL, the
    audience such an assertion must name."""
    tenant_l = tenant.lower()
    if tenant_l not in apps.tenants:
        raise AuthError(400, "invalid_request", f"AADSTS90002: Tenant '{tenant}' not found. Check to make sure"
                                                f" you have the correct tenant ID and are signing into the"
                                                f" correct cloud.", 90002)
    grant = form.get("grant_type", "")
    if grant != "client_credentials":
        raise AuthError(400, "unsupported_grant_type",
                        f"AADSTS70003: The app requested an unsupported grant type '{grant}'."
                        " The emulator supports client_credentials only.", 70003)
    client_id = form.get("client_id", "")
    secret = form.get("client_secret")
    assertion_type, assertion = form.get("client_assertion_type"), form.get("client_assertion")
    if basic is not None:
        client_id = client_id or basic[0]
        secret = secret if secret is not None else basic[1]
    if assertion is not None or assertion_type is not None:
        if assertion_type != JWT_BEARER:
            raise AuthError(400, "invalid_request",
                            f"AADSTS90014: The request body must contain the following parameter:"
                            f" 'client_assertion_type' with the value '{JWT_BEARER}'.", 90014)
        if not assertion:
            raise AuthError(400, "invalid_request", "AADSTS900144: The request body must contain the following"
                                                    " parameter: 'client_assertion'.", 900144)
        if secret is not None:     # RFC 6749 2.3: one client authentication method per request
            raise AuthError(400, "invalid_request", "AADSTS90023: The request carries both a client secret and a"
                                                    " client assertion; send one client credential.", 90023)
        client_id = client_id or _assertion_subject(assertion)
    if not client_id:
        raise AuthError(400, "invalid_request", "AADSTS900144: The request body must contain the following"
                                                " parameter: 'client_id'.", 900144)
    if not apps.registered(tenant_l, client_id):
        raise AuthError(400, "unauthorized_client",
                        f"AADSTS700016: Application with identifier '{client_id}' was not found in the directory"
                        f" '{tenant}'.", 700016)
    if assertion:
        check_client_assertion(apps, tenant_l, client_id, assertion, endpoint, now)
    else:
        expected = apps.secrets.get((tenant_l, client_id.lower()))
        if secret is None:
            raise AuthError(401, "invalid_client", "AADSTS7000216: 'client_assertion', 'client_secret' or"
                                                   " 'request' is required for the 'client_credentials' grant"
                                                   " type.", 7000216)
        if expected is None or not hmac.compare_digest(secret.encode(), expected.encode()):
            raise AuthError(401, "invalid_client",
                            f"AADSTS7000215: Invalid client secret provided. Ensure the secret being sent in the"
                            f" request is the client secret value, not the client secret ID, for a secret added to"
                            f" app '{client_id}'.", 7000215)
    scopes = form.get("scope", "").split()
    resources = [s for s in scopes if s not in ("openid", "profile", "offline_access", "email")]
    if len(resources) != 1 or not resources[0].endswith("/.default"):
        raise AuthError(400, "invalid_scope",
                        f"AADSTS1002012: The provided value for scope {' '.join(scopes) or '(none)'} is not valid."
                        " Client credential flows must have a scope value with /.default suffixed to the"
                        " resource identifier (application ID URI).", 1002012)
    resource = resources[0][:-len("/.default")].rstrip("/").lower()
    if resource not in (GRAPH_RESOURCE, GRAPH_APP_ID):
        raise AuthError(400, "invalid_resource",
                        f"AADSTS500011: The resource principal named {resource} was not found in the tenant"
                        f" named {tenant}.", 500011)
    token = issue_token(key, tenant_l, client_id.lower(), apps.token_lifetime, acr="2" if assertion else "1")
    return {"token_type": "Bearer", "expires_in": apps.token_lifetime, "ext_expires_in": apps.token_lifetime,
            "access_token": token}


def _assertion_subject(assertion: str) -> str:
    """The (unverified) ``sub`` of a client assertion, for a request that names no client_id."""
    try:
        claims = json.loads(_unb64url(assertion.split(".")[1]))
        return str(claims.get("sub") or "") if isinstance(claims, dict) else ""
    except (ValueError, TypeError, IndexError):
        return ""


def _numeric(claims: dict, name: str) -> float | None:
    value = claims.get(name)
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def check_client_assertion(apps: GraphApps, tenant: str, client_id: str, assertion: str, endpoint: str,
                           now: float | None = None) -> None:
    """Verify a certificate credential (``private_key_jwt``) as the Microsoft identity platform does:
    RS256 (PKCS#1 v1.5) or PS256 (PSS) signature by a certificate registered on the app, found by
    the header's ``x5t`` (SHA-1 thumbprint) or ``x5t#S256`` (SHA-256); ``aud`` the token endpoint;
    ``iss`` and ``sub`` the client id; ``exp``/``nbf`` within 5 minutes' skew; a ``jti``. Raises
    AuthError(401, 'invalid_client', 'AADSTS...'); the assertion itself is never echoed."""
    def invalid(code: int, text: str) -> AuthError:
        return AuthError(401, "invalid_client", f"AADSTS{code}: {text}", code)

    malformed = AuthError(400, "invalid_request", "AADSTS50027: JWT token is invalid or malformed.", 50027)
    parts = assertion.split(".")
    if len(parts) != 3:
        raise malformed
    try:
        header, claims, signature = json.loads(_unb64url(parts[0])), json.loads(_unb64url(parts[1])), \
            _unb64url(parts[2])
    except (ValueError, TypeError):
        raise malformed from None
    if not isinstance(header, dict) or not isinstance(claims, dict):
        raise malformed
    alg = header.get("alg")
    if alg not in ("RS256", "PS256"):
        raise invalid(5002738, f"Invalid JWT token. '{str(alg)[:20]}' is not a supported signature algorithm."
                               " Supported signing algorithms are: 'RS256, PS256'")
    sha256_id, sha1_id = header.get("x5t#S256"), header.get("x5t")
    try:
        if isinstance(sha256_id, str):
            thumb, pick = _unb64url(sha256_id), (lambda c: c.sha256)
        elif isinstance(sha1_id, str):
            thumb, pick = _unb64url(sha1_id), (lambda c: c.sha1)
        else:
            raise invalid(700027, "Client assertion contains an invalid signature. [Reason - The key was not"
                                  " found: the header names no certificate thumbprint (x5t or x5t#S256).]")
    except ValueError:
        raise malformed from None
    used = f"Thumbprint of key used by client: '{thumb.hex().upper()}'"
    found = next((c for c in apps.certs.get((tenant, client_id.lower()), []) if pick(c) == thumb), None)
    if found is None:
        raise invalid(700027, f"The certificate with identifier used to sign the client assertion is not registered"
                              f" on application. [Reason - The key was not found., {used}, Please visit the Azure"
                              f" Portal to see configured keys for app Id '{client_id}'.]")
    now = time.time() if now is None else now
    current = datetime.fromtimestamp(now, UTC)
    if not found.not_before <= current <= found.not_after:
        raise invalid(700027, f"Client assertion contains an invalid signature. [Reason - The key used is expired.,"
                              f" {used}, Found key '{found.window()}']")
    signed = f"{parts[0]}.{parts[1]}".encode()
    pad = padding.PKCS1v15() if alg == "RS256" else padding.PSS(padding.MGF1(hashes.SHA256()), padding.PSS.AUTO)
    try:
        found.public_key.verify(signature, signed, pad, hashes.SHA256())
    except InvalidSignature:
        raise invalid(700027, f"Client assertion contains an invalid signature. [Reason - The provided signature"
                              f" value did not match the expected signature value., {used}, Found key"
                              f" '{found.window()}']") from None
    if str(claims.get("iss", "")).lower() != client_id.lower() or str(claims.get("sub", "")).lower() != client_id.lower():
        raise invalid(700021, "Client assertion application identifier doesn't match 'client_id' parameter. Review"
                              " the documentation at https://learn.microsoft.com/entra/identity-platform/"
                              "certificate-credentials .")
    audiences = claims.get("aud")
    audiences = [audiences] if isinstance(audiences, str) else audiences if isinstance(audiences, list) else []
    accepted = {endpoint.lower(), endpoint.lower().replace("/oauth2/v2.0/token", "/oauth2/token")}
    if not endpoint or not any(isinstance(a, str) and a.lower() in accepted for a in audiences):
        raise invalid(50012, "Client assertion audience claim does not match Realm"
                             f" issuer: the audience must be '{endpoint}'.")
    exp, nbf = _numeric(claims, "exp"), _numeric(claims, "nbf")
    if exp is None:
        raise malformed
    if exp <= now - ASSERTION_SKEW_S or (nbf is not None and nbf > now + ASSERTION_SKEW_S):
        def stamp(t: float | None) -> str:
            return "(none)" if t is None else time.strftime("%m/%d/%Y %H:%M:%S", time.gmtime(t))
        raise invalid(700024, f"Client assertion is not within its valid time range. Current time:"
                              f" {stamp(now)}, assertion valid from {stamp(nbf)}, expiry time of assertion"
                              f" {stamp(exp)}. Review the documentation at"
                              " https://learn.microsoft.com/entra/identity-platform/certificate-credentials .")
    if not isinstance(claims.get("jti"), str) or not claims["jti"]:
        raise invalid(700027, "Client assertion is missing the 'jti' claim: it must carry a unique identifier.")


def aad_error_body(err: AuthError) -> dict:
    """The JSON body Entra ID sends with a failed token request."""
    now = time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime())
    trace = str(uuid.uuid4())
    return {"error": err.error, "error_description": f"{err.description}\r\nTrace ID: {trace}\r\n"
                                                     f"Correlation ID: {trace}\r\nTimestamp: {now}",
            "error_codes": [err.code] if err.code else [], "timestamp": now, "trace_id": trace,
            "correlation_id": trace}
