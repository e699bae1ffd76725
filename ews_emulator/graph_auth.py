"""Microsoft identity platform stand-in for the Graph front door: app registrations, the
client-credentials token endpoint, OIDC discovery and bearer-token checks.

Apps come from ``--graph-app TENANT:CLIENT_ID:SECRET`` (application permission Contacts.ReadWrite
on every mailbox) and ``--graph-app-scope CLIENT_ID:MAILBOX`` (limits the app to the named
mailboxes, like an RBAC for Applications management scope). Tokens are JWTs signed with HS256 by
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

GRAPH_RESOURCE = "https://graph.microsoft.com"
GRAPH_APP_ID = "00000003-0000-0000-c000-000000000000"   # Microsoft Graph's well-known app id
ROLE = "Contacts.ReadWrite"
_KEY_META = "graph_token_hmac_key"
_key_lock = threading.Lock()


@dataclass
class GraphApps:
    """Registered apps: (tenant, client_id) -> secret; client_id -> mailboxes it is limited to."""

    secrets: dict[tuple[str, str], str] = field(default_factory=dict)
    scopes: dict[str, set[str]] = field(default_factory=dict)
    token_lifetime: int = 3599
    mailbox_concurrency: int = 4

    @classmethod
    def from_args(cls, apps: list[str] = (), app_scopes: list[str] = (), token_lifetime: int = 3599,
                  mailbox_concurrency: int = 4) -> GraphApps:
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
        for spec in app_scopes:
            client_id, sep, mailbox = spec.partition(":")
            if not sep or not client_id.strip() or not mailbox.strip():
                raise ValueError(f"--graph-app-scope {spec!r}: expected CLIENT_ID:MAILBOX")
            out.scopes.setdefault(client_id.strip().lower(), set()).add(mailbox.strip().lower())
        return out

    @property
    def tenants(self) -> set[str]:
        return {t for t, _ in self.secrets}

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


def issue_token(key: bytes, tenant: str, client_id: str, lifetime: int, now: float | None = None) -> str:
    now = int(now if now is not None else time.time())
    header = {"typ": "JWT", "alg": "HS256", "kid": "ews-emulator"}
    claims = {"aud": GRAPH_RESOURCE, "iss": f"https://sts.windows.net/{tenant}/", "iat": now, "nbf": now,
              "exp": now + lifetime, "appid": client_id, "appidacr": "1", "idtyp": "app",
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
    if (tenant, client_id) not in apps.secrets:
        raise bad("Access token validation failure. The application or tenant is not registered.")
    if ROLE not in (claims.get("roles") or []):
        raise AuthError(403, "ErrorAccessDenied", "Access is denied. Check credentials and try again.")
    return claims


def openid_configuration(base: str, tenant: str) -> dict:
    """The OIDC discovery document MSAL reads from ``{authority}/v2.0/.well-known/openid-configuration``."""
    root = f"{base}/{tenant}"
    return {
        "token_endpoint": f"{root}/oauth2/v2.0/token",
        "token_endpoint_auth_methods_supported": ["client_secret_post", "client_secret_basic"],
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
                  basic: tuple[str, str] | None = None) -> dict:
    """Answer a client-credentials token request (the form fields) or raise AuthError with the
    AADSTS error Entra ID gives."""
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
    if basic is not None:
        client_id = client_id or basic[0]
        secret = secret if secret is not None else basic[1]
    if not client_id:
        raise AuthError(400, "invalid_request", "AADSTS900144: The request body must contain the following"
                                                " parameter: 'client_id'.", 900144)
    expected = apps.secrets.get((tenant_l, client_id.lower()))
    if expected is None:
        raise AuthError(400, "unauthorized_client",
                        f"AADSTS700016: Application with identifier '{client_id}' was not found in the directory"
                        f" '{tenant}'.", 700016)
    if secret is None:
        raise AuthError(401, "invalid_client", "AADSTS7000216: 'client_assertion', 'client_secret' or"
                                               " 'request' is required for the 'client_credentials' grant type.",
                        7000216)
    if not hmac.compare_digest(secret.encode(), expected.encode()):
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
    token = issue_token(key, tenant_l, client_id.lower(), apps.token_lifetime)
    return {"token_type": "Bearer", "expires_in": apps.token_lifetime, "ext_expires_in": apps.token_lifetime,
            "access_token": token}


def aad_error_body(err: AuthError) -> dict:
    """The JSON body Entra ID sends with a failed token request."""
    now = time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime())
    trace = str(uuid.uuid4())
    return {"error": err.error, "error_description": f"{err.description}\r\nTrace ID: {trace}\r\n"
                                                     f"Correlation ID: {trace}\r\nTimestamp: {now}",
            "error_codes": [err.code] if err.code else [], "timestamp": now, "trace_id": trace,
            "correlation_id": trace}
