"""Build an exchangelib Account for one mailbox, and find (or create) its sync folder.

Plain arguments in, no config or environment read here: the composition root reads the
settings and the password (from the variable the config names) and passes them.

exchangelib facts that shape this module:

* exchangelib shares one ``Protocol`` (HTTP session pool, retry policy, TLS adapter) per
  (endpoint, credentials) in the whole process. Accounts for many mailboxes through one service
  account share it, which is what we want; it also means the first ``connect`` for an
  (endpoint, credentials) decides its ``max_wait`` and ``timeout``, later calls update them.
* exchangelib's HTTP adapter class (``BaseProtocol.HTTP_ADAPTER_CLS``) is process-global. We do
  not touch it: ``verify_tls=False`` switches only this endpoint's shared Protocol to a subclass
  using exchangelib's ``NoVerifyHTTPAdapter``. So it is scoped to the (endpoint, credentials)
  pair, never to one mailbox, and never to other endpoints.
* No autodiscover; the server version is probed by exchangelib on first use.
* exchangelib's DEBUG logging (loggers ``exchangelib`` and ``exchangelib.util.xml_log``) prints
  request headers (the Basic ``Authorization`` header, i.e. the password) and whole SOAP bodies
  (contact data). The logging setup must keep them at INFO or above outside a debugging session.
"""

from __future__ import annotations

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
from exchangelib.errors import ErrorFolderExists, ErrorFolderNotFound
from exchangelib.folders import Contacts, Folder
from exchangelib.protocol import NoVerifyHTTPAdapter, Protocol
from exchangelib.transport import NOAUTH

from crmsync.adapters.exchange.ews.faults import DEFAULT_MAX_WAIT, BoundedFaultTolerance, ews_errors
from crmsync.errors import ConfigError

AUTH_TYPES = {"basic": BASIC, "ntlm": NTLM, "oauth": OAUTH2, "noauth": NOAUTH}
ACCESS_TYPES = {"impersonation": IMPERSONATION, "delegate": DELEGATE}


class _NoVerifyProtocol(Protocol):
    """A Protocol whose sessions skip TLS verification (verify_tls = false, for this endpoint only)."""

    HTTP_ADAPTER_CLS = NoVerifyHTTPAdapter


def connect(
    *,
    endpoint: str,
    mailbox: str,
    auth: str = "basic",
    username: str | None = None,
    password: str | None = None,
    access: str = "impersonation",
    verify_tls: bool = True,
    max_wait: float = DEFAULT_MAX_WAIT,
    timeout_s: float = 60.0,
    max_connections: int | None = None,
    client_id: str | None = None,
    client_secret: str | None = None,
    tenant_id: str | None = None,
) -> Account:
    """An exchangelib Account for ``mailbox`` at ``endpoint``; no request is sent yet.

    ``password`` (basic/ntlm) and ``client_secret`` (oauth) are secrets: they go into
    exchangelib's credentials only, never into a message. ``max_wait`` bounds how long, in
    total, exchangelib may sleep on server back-offs within one request before raising (then
    Transient with the server's back-off, and the Celery retry takes over; the default 5 s is
    below exchangelib's 10 s connection-retry wait, so connection errors and HTTP 5xx are
    handed over at once); ``timeout_s`` bounds one HTTP request. OAuth builds exchangelib's
    client-credentials ``OAuth2Credentials`` for ``tenant_id`` (not testable against the
    emulator, which speaks Basic only).
    """
    if auth not in AUTH_TYPES:
        raise ConfigError(f"exchange.auth = {auth!r}: expected one of {sorted(AUTH_TYPES)}")
    if access not in ACCESS_TYPES:
        raise ConfigError(f"exchange.access = {access!r}: expected one of {sorted(ACCESS_TYPES)}")
    if not endpoint.startswith(("http://", "https://")):
        raise ConfigError(f"exchange.endpoint = {endpoint!r}: expected an http(s) URL ending in /EWS/Exchange.asmx")
    if "@" not in mailbox:
        raise ConfigError(f"mailbox address {mailbox!r} is not an email address")
    if max_wait < 0:
        raise ConfigError(f"exchange max_wait = {max_wait!r}: must be >= 0 seconds")

    credentials = None
    if auth in ("basic", "ntlm"):
        if not username:
            raise ConfigError(f"exchange.username is required with auth = {auth!r}")
        if not password:
            raise ConfigError(f"exchange password is empty (auth = {auth!r}): set the variable named by exchange.password_env")
        credentials = Credentials(username, password)
    elif auth == "oauth":
        missing = [n for n, v in (("client_id", client_id), ("client_secret", client_secret), ("tenant_id", tenant_id)) if not v]
        if missing:
            raise ConfigError(f"exchange auth = 'oauth' needs {', '.join('exchange.' + m for m in missing)}")
        credentials = OAuth2Credentials(
            client_id=client_id, client_secret=client_secret, tenant_id=tenant_id,
            identity=Identity(primary_smtp_address=mailbox),
        )

    config = Configuration(
        service_endpoint=endpoint,
        credentials=credentials,
        auth_type=AUTH_TYPES[auth],
        retry_policy=BoundedFaultTolerance(max_wait=max_wait),
        max_connections=max_connections,
    )
    with ews_errors(mailbox, "connecting", secrets=(password, client_secret)):
        account = Account(
            primary_smtp_address=mailbox, config=config, autodiscover=False,
            access_type=ACCESS_TYPES[access], credentials=None,
        )
    protocol = account.protocol
    # The Protocol is shared per (endpoint, credentials); make it follow the latest settings.
    protocol.config.retry_policy = config.retry_policy
    protocol.TIMEOUT = timeout_s
    wanted = Protocol if verify_tls else _NoVerifyProtocol
    if type(protocol) is not wanted:
        protocol.__class__ = wanted
        protocol.close()  # drop sessions made with the other TLS adapter
    return account


def _split(path: str) -> list[str]:
    parts = [p.strip() for p in path.split("/")]
    if not path.strip() or any(not p for p in parts):
        raise ConfigError(f"mailbox folder {path!r}: expected a name like 'CRM Accounts' or 'A/B' under Contacts")
    return parts


def open_folder(account: Account, path: str, create: bool = True) -> Folder:
    """The contacts folder at ``path`` ("CRM Accounts", "A/B") under the mailbox's Contacts.

    Missing parts are created when ``create`` is true; otherwise ConfigError says which part is
    missing and how to fix it. Folder names match case-insensitively, as on Exchange.
    """
    mailbox = account.primary_smtp_address
    parts = _split(path)
    with ews_errors(mailbox, f"opening folder {path!r}"):
        folder = account.contacts
        walked: list[str] = []
        for name in parts:
            try:
                child = folder // name
            except ErrorFolderNotFound:
                child = None
            if child is None:
                if not create:
                    where = "Contacts" + "".join(f"/{w}" for w in walked)
                    raise ConfigError(
                        f"mailbox {mailbox}: folder {name!r} does not exist under {where} (path {path!r}). "
                        "Create it in Outlook, or set create_folder = true for this mailbox."
                    )
                try:
                    Folder(parent=folder, name=name, folder_class="IPF.Contact").save()
                except ErrorFolderExists:
                    pass  # another crmsync process created it a moment ago: use that one
                account.root.clear_cache()   # exchangelib caches the folder tree
                child = folder // name  # typed by its container class: a Contacts folder
            if not isinstance(child, Contacts) and getattr(child, "folder_class", None) != "IPF.Contact":
                raise ConfigError(
                    f"mailbox {mailbox}: folder {'/'.join([*walked, name])!r} under Contacts is not a contacts folder "
                    f"(class {getattr(child, 'folder_class', None)!r}); pick another folder name"
                )
            walked.append(name)
            folder = child
    return folder
