"""Build an exchangelib Account for one mailbox, and find (or create) its sync folder.

Typed settings in (``crmsync.config.ExchangeSettings``, validated once when the config is
loaded); the secret is read from the variable the config names at connect time.

exchangelib facts that shape this module:

* exchangelib shares one ``Protocol`` (HTTP session pool, retry policy, TLS adapter) per
  (endpoint, credentials) in the whole process. Accounts for many mailboxes through one service
  account share it, which is what we want; it also means the first ``connect`` for an
  (endpoint, credentials) decides its ``max_wait`` and ``timeout``, later calls update them.
* exchangelib's HTTP adapter class (``BaseProtocol.HTTP_ADAPTER_CLS``) is process-global, so
  ``verify_tls = false`` is kept per endpoint (scheme, host, port) by one adapter that knows
  which endpoints those are; every other endpoint is verified.
* No autodiscover; the server version is probed by exchangelib on first use.
* exchangelib's DEBUG logging (loggers ``exchangelib.util`` and ``exchangelib.util.xml``) prints
  request headers (the Basic ``Authorization`` header, i.e. the password) and whole SOAP bodies
  (contact data). ``crmsync.logging_setup`` keeps them at INFO unless ``[log] ews_wire`` is on,
  and redacts them even then; the base64 form of the Basic credentials is registered as a secret
  here, as the password itself is when it is read.
"""

from __future__ import annotations

import base64
from urllib.parse import urlsplit

from exchangelib import (
    BASIC,
    DELEGATE,
    IMPERSONATION,
    NTLM,
    OAUTH2,
    Account,
    Configuration,
    Credentials,
    Identity,
    OAuth2Credentials,
)
from exchangelib.errors import ErrorFolderExists, ErrorFolderNotFound, ErrorNoPublicFolderReplicaAvailable
from exchangelib.folders import Contacts, Folder
from exchangelib.protocol import BaseProtocol
from exchangelib.transport import NOAUTH
from requests.adapters import HTTPAdapter

from crmsync.adapters.exchange.ews.faults import BoundedFaultTolerance, ews_errors
from crmsync.config import ExchangeSettings
from crmsync.errors import ConfigError, MailboxUnavailable
from crmsync.logging_setup import register_secret

AUTH_TYPES = {"basic": BASIC, "ntlm": NTLM, "oauth": OAUTH2, "noauth": NOAUTH}
ACCESS_TYPES = {"impersonation": IMPERSONATION, "delegate": DELEGATE}


class _TlsPerEndpointAdapter(HTTPAdapter):
    """exchangelib's documented hook for TLS settings is the process-wide
    ``BaseProtocol.HTTP_ADAPTER_CLS``; this adapter verifies certificates as usual except for
    the endpoints an administrator set ``verify_tls = false`` for (as exchangelib's own
    ``NoVerifyHTTPAdapter`` does, but scoped to those endpoints)."""

    def cert_verify(self, conn, url, verify, cert):  # noqa: ANN001 - requests' signature
        # keep ``verify`` as given when it is a CA bundle path (REQUESTS_CA_BUNDLE): `verify and ...` made it True
        super().cert_verify(conn=conn, url=url, verify=False if _unverified(url) else verify, cert=cert)


_UNVERIFIED: set[str] = set()  # scheme://host:port of endpoints with verify_tls = false


def _origin(url: str) -> str:
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return f"{parts.scheme}://{(parts.hostname or '').lower()}:{port}"


def _unverified(url: str) -> bool:
    return _origin(url) in _UNVERIFIED


def connect(settings: ExchangeSettings, mailbox: str, *, max_connections: int | None = None) -> Account:
    """An exchangelib Account for ``mailbox`` as ``settings`` (validated once, in crmsync.config)
    describe; no request is sent yet.

    The password or client secret is read from its environment variable now and goes into
    exchangelib's credentials only, never into a message. ``max_wait_s`` bounds how long, in
    total, exchangelib may sleep on server back-offs within one request before raising (then
    Transient with the server's back-off, and the Celery retry takes over); ``timeout_s`` bounds
    one HTTP request. OAuth builds exchangelib's client-credentials ``OAuth2Credentials`` for
    ``tenant_id`` (not testable against the emulator's EWS door, which speaks Basic only).
    """
    endpoint = settings.require_endpoint()
    password = settings.password()
    client_secret = settings.client_secret() if settings.auth == "oauth" else None
    credentials = None
    if settings.auth in ("basic", "ntlm"):
        credentials = Credentials(settings.username, password)
        if password:  # the Basic Authorization header carries base64("user:password"): hide it too
            register_secret(base64.b64encode(f"{settings.username}:{password}".encode()).decode())
    elif settings.auth == "oauth":
        credentials = OAuth2Credentials(
            client_id=settings.client_id, client_secret=client_secret, tenant_id=settings.tenant_id,
            identity=Identity(primary_smtp_address=mailbox),
        )
    if settings.verify_tls:
        _UNVERIFIED.discard(_origin(endpoint))
    else:
        _UNVERIFIED.add(_origin(endpoint))
    BaseProtocol.HTTP_ADAPTER_CLS = _TlsPerEndpointAdapter

    config = Configuration(
        service_endpoint=endpoint,
        credentials=credentials,
        auth_type=AUTH_TYPES[settings.auth],
        retry_policy=BoundedFaultTolerance(max_wait=settings.max_wait_s),
        max_connections=max_connections,
    )
    with ews_errors(mailbox, "connecting", secrets=(password, client_secret)):
        account = Account(
            primary_smtp_address=mailbox, config=config, autodiscover=False,
            access_type=ACCESS_TYPES[settings.access], credentials=None,
        )
    protocol = account.protocol
    # The Protocol is shared per (endpoint, credentials); make it follow the latest settings.
    protocol.config.retry_policy = config.retry_policy
    protocol.TIMEOUT = settings.timeout_s
    return account


def _split(path: str) -> list[str]:
    parts = [p.strip() for p in path.split("/")]
    if not path.strip() or any(not p for p in parts):
        raise ConfigError(f"mailbox folder {path!r}: expected a name like 'CRM Accounts' or 'A/B' under Contacts")
    return parts


def open_folder(account: Account, path: str, create: bool = True, *, public: bool = False,
                label: str | None = None) -> Folder:
    """The contacts folder at ``path`` ("CRM Accounts", "A/B") under the mailbox's Contacts, or
    under the public folders root when ``public`` (the account is then the [[mailbox]]'s own; for
    another mailbox's folder it is an Account on that owner, opened with DELEGATE access).

    Missing parts are created when ``create`` is true; otherwise MailboxUnavailable (a ConfigError,
    reported and retried later like a denied mailbox) says which part is missing and how to fix
    it, naming the mailbox ``label`` (default: the account's) and the path. Folder names match
    case-insensitively, as on Exchange. Under Contacts every part must be a contacts folder; in
    the public tree only the last (a public hierarchy's upper levels are usually mail folders).
    """
    mailbox = label or account.primary_smtp_address
    owner = account.primary_smtp_address
    parts = _split(path)
    top = "the public folders" if public else ("Contacts" if owner == mailbox else f"{owner}'s Contacts")
    with ews_errors(mailbox, f"opening folder {path!r}"):
        folder = _public_root(account, mailbox, path) if public else account.contacts
        walked: list[str] = []
        for i, name in enumerate(parts):
            try:
                child = folder // name
            except ErrorFolderNotFound:
                child = None
            if child is None:
                if not create:
                    where = top + "".join(f"/{w}" for w in walked)
                    raise MailboxUnavailable(
                        f"mailbox {mailbox}: folder {name!r} does not exist under {where} (path {path!r}). "
                        "Create it in Outlook, or set create_folder = true for this mailbox.", mailbox
                    )
                try:
                    Folder(parent=folder, name=name, folder_class="IPF.Contact").save()
                except ErrorFolderExists:
                    pass  # another crmsync process created it a moment ago: use that one
                account.root.clear_cache()   # exchangelib caches the folder tree
                if public:
                    account.public_folders_root.clear_cache()
                child = folder // name  # typed by its container class: a Contacts folder
            last = i == len(parts) - 1
            if (last or not public) and not isinstance(child, Contacts) \
                    and getattr(child, "folder_class", None) != "IPF.Contact":
                raise ConfigError(
                    f"mailbox {mailbox}: folder {'/'.join([*walked, name])!r} under {top} is not a contacts folder "
                    f"(class {getattr(child, 'folder_class', None)!r}); pick another folder name"
                )
            walked.append(name)
            folder = child
    return folder


def _public_root(account: Account, mailbox: str, path: str) -> Folder:
    """The public folders root; MailboxUnavailable when the server has none."""
    try:
        return account.public_folders_root
    except (ErrorFolderNotFound, ErrorNoPublicFolderReplicaAvailable):
        raise MailboxUnavailable(
            f"mailbox {mailbox}: the Exchange server has no public folders (folder 'public:{path}'); "
            "pick a folder under Contacts, or have the administrator create the public folder", mailbox
        ) from None


def connect_owner(settings: ExchangeSettings, owner: str, *, max_connections: int | None = None) -> Account:
    """An Account on ``owner``'s mailbox (a [[mailbox]]'s ``folder_owner``) with the identity
    ``settings`` log in as, by DELEGATE access: that identity needs delegate rights on the owner."""
    return connect(settings.model_copy(update={"access": "delegate"}), owner, max_connections=max_connections)


def find_folder(account: Account, path: str) -> Folder | None:
    """The folder at ``path`` under the mailbox's Contacts, or None when a part of it is missing
    (nothing is created)."""
    with ews_errors(account.primary_smtp_address, f"looking for folder {path!r}"):
        folder = account.contacts
        for name in _split(path):
            try:
                folder = folder // name
            except ErrorFolderNotFound:
                return None
    return folder
