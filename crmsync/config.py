"""crmsync's settings: one TOML file, every key overridable from the environment, validated once.

Why this shape: an administrator edits one file (``--config FILE`` or ``CRMSYNC_CONFIG``), a
container or systemd unit overrides single keys with ``CRMSYNC_<SECTION>_<KEY>`` variables, and a
mistake is reported as *which key, what is wrong, and where the value came from* before any
process starts. Secrets are never in the file: the file names the environment variable that holds
them (``password_env``) and the value is read only when it is needed.

Environment variables (read by :func:`load_settings`, never at import):

- ``CRMSYNC_CONFIG``: path of the TOML file when ``--config`` is not given.
- ``CRMSYNC_<SECTION>_<KEY>`` for every key below, e.g. ``CRMSYNC_BROKER_URL``,
  ``CRMSYNC_EXCHANGE_VERIFY_TLS=false``, ``CRMSYNC_SYNC_CONFLICT_POLICY=crm-wins``,
  ``CRMSYNC_SYNC_PRIVATE_SENSITIVITIES=Private,Confidential`` (lists are comma separated).
  An empty value clears an optional key. Environment values win over the file.
- ``CRMSYNC_MAILBOXES="alice@example.com=CRM Accounts,bob@example.com"``: replaces the file's
  ``[[mailbox]]`` list; entries are comma separated, each ``address`` or ``address=folder``
  (the folder defaults to "CRM Accounts"; a folder name cannot contain a comma here).

A relative SQLite path in a URL (``sqlite:///crm.db``) is relative to the current working
directory of the process, as in SQLAlchemy; use four slashes for an absolute path
(``sqlite:////var/lib/crmsync/crm.db``).
"""

from __future__ import annotations

import os
import re
import tomllib
import typing
from collections.abc import Mapping
from typing import Any, Literal

import email_validator
import phonenumbers
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_serializer,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from crmsync.errors import ConfigError

ENV_PREFIX = "CRMSYNC_"
ENV_CONFIG = "CRMSYNC_CONFIG"
ENV_MAILBOXES = "CRMSYNC_MAILBOXES"
DEFAULT_FOLDER = "CRM Accounts"

AuthType = Literal["basic", "ntlm", "oauth", "noauth"]
ExchangeApi = Literal["ews", "graph"]
AccessType = Literal["impersonation", "delegate"]
ConflictPolicy = Literal["newest-wins", "crm-wins", "exchange-wins", "manual"]
LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]
#: Which way a mailbox syncs, and (plus ``ignore``) which way one field does.
Direction = Literal["two-way", "crm-to-exchange", "exchange-to-crm"]
FieldDirection = Literal["two-way", "crm-to-exchange", "exchange-to-crm", "ignore"]
OnExchangeDelete = Literal["deactivate", "delete", "unlink"]
OnCrmDelete = Literal["move-to-deleted-items", "hard-delete", "unlink"]
#: A record new on one side (no link, no stamp): link it to a strong unlinked match on the other
#: side instead of creating a copy ("match-then-create"), always create ("create"), or hold it
#: in the review queue until a person decides ("review").
OnNewRecord = Literal["match-then-create", "create", "review"]
#: Keys a [[mailbox]] may set for itself; left out, they come from [sync] (``Settings.effective``).
POLICY_KEYS = ("conflict_policy", "enabled", "direction", "create_folder", "on_exchange_delete", "on_crm_delete",
               "push_filter", "categories", "max_delete_count", "max_delete_percent", "min_delete_count_for_percent",
               "delete_window_s", "private_sensitivities", "only_categories", "only_active", "on_new_record")
#: EWS Sensitivity values (MS-OXWSCDATA SensitivityChoicesType) that may be kept out of the CRM
#: (Normal may not: it would keep out every ordinary contact).
Sensitivity = Literal["Personal", "Private", "Confidential"]

#: Keys that would hold a secret; in the file they are refused with a pointer to ``*_env``.
_SECRET_KEYS = {
    "exchange": {"password": "password_env", "client_secret": "client_secret_env"},
    "crm": {"password": "password_env"},
    "state": {"password": "password_env"},
    "broker": {"password": "password_env", "sentinel_password": "sentinel_password_env"},
    "console": {"secret_key": "secret_key_env"},
}
_KEY_MARK = "crmsync_key"  # PydanticCustomError type for cross-field checks naming their key


#: ``folder = "public:Company/Contacts"``: the sync folder is a public folder.
PUBLIC_PREFIX = "public:"


def _key_error(key: str, message: str) -> PydanticCustomError:
    """A validation error about one key of the section being validated (cross-field checks)."""
    return PydanticCustomError(_KEY_MARK, "{key}: {message}", {"key": key, "message": message})


def _read_secret(env_var: str | None, key: str, env: Mapping[str, str] | None) -> str:
    """Read a secret from the environment now (never cached in the model) and register it for
    log redaction. Raises ConfigError naming the key when the variable is not set."""
    from crmsync.logging_setup import register_secret

    source = os.environ if env is None else env
    if not env_var:
        raise ConfigError(f"{key}: no environment variable is named for this secret")
    value = source.get(env_var)
    if not value:
        raise ConfigError(f"{key}: environment variable {env_var} is not set")
    register_secret(value)
    return value


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    _env: Mapping[str, str] | None = PrivateAttr(default=None)


class _UrlSection(_Section):
    """A section holding a connection URL; its password, if any, comes from ``password_env``."""

    url: str
    password_env: str | None = None

    @field_validator("url")
    @classmethod
    def _parses(cls, value: str) -> str:
        try:
            make_url(value)
        except (ArgumentError, ValueError):
            raise PydanticCustomError(
                "url_parsing", "is not a URL of the form scheme://[user@]host[:port]/name or sqlite:///path"
            ) from None
        return value

    def dsn(self) -> str:
        """The URL to connect with: ``url`` plus the password read now from ``password_env``."""
        if not self.password_env:
            return self.url
        section = type(self).__name__.removesuffix("Settings").lower()
        password = _read_secret(self.password_env, f"{section}.password_env", self._env)
        url = make_url(self.url)
        if url.username is None:
            url = url.set(username="")
        return url.set(password=password).render_as_string(hide_password=False)

    @field_serializer("url")
    def _mask_url(self, value: str) -> str:
        return mask_url(value)

    def __repr_args__(self):  # type: ignore[override]
        for name, value in super().__repr_args__():
            yield name, (mask_url(value) if name == "url" else value)


def mask_url(value: str) -> str:
    """``value`` with any password in it replaced by ``***`` (for logs, repr, status output)."""
    try:
        url = make_url(value)
    except (ArgumentError, ValueError):
        return re.sub(r"(://[^:/@\s]*:)[^@\s]+@", r"\1***@", value)
    if url.password is None:
        return value
    return url.render_as_string(hide_password=True)


class CrmSettings(_UrlSection):
    """The CRM database (SQLAlchemy URL)."""

    url: str = "sqlite:///crm.db"


class StateSettings(_UrlSection):
    """crmsync's own tables: links, event log, cursors, conflicts."""

    url: str = "sqlite:///crmsync-state.db"
    #: ``crmsync events purge`` (without --before) deletes applied and skipped events older than this
    keep_applied_days: int = Field(default=30, ge=1)


class BrokerSettings(_UrlSection):
    """The Celery broker (Redis); it only carries messages, the state database is the record.

    Redis Sentinel: ``url = "sentinel://s1:26379;sentinel://s2:26379/0"`` (Celery's form) with
    ``sentinel_master`` naming the master; ``password_env`` is then the master's password and
    ``sentinel_password_env`` the sentinels' own, if they require one."""

    url: str = "redis://127.0.0.1:6379/0"
    #: The master's name as the sentinels know it (``sentinel monitor NAME ...``); sentinel:// only
    sentinel_master: str | None = Field(default=None, min_length=1)
    #: The variable holding the sentinels' password (``requirepass`` of the sentinels), if any
    sentinel_password_env: str | None = Field(default=None, min_length=1)

    @field_validator("url")
    @classmethod
    def _parses(cls, value: str) -> str:
        from crmsync.adapters.redis_client import is_sentinel_url, parse_sentinel_url

        if not is_sentinel_url(value):
            return _UrlSection._parses.__func__(cls, value)  # type: ignore[attr-defined]
        try:
            parse_sentinel_url(value)
        except ValueError as exc:
            raise PydanticCustomError("url_parsing", "{why}", {"why": str(exc)}) from None
        return value

    @model_validator(mode="after")
    def _sentinel_needs_master(self) -> BrokerSettings:
        from crmsync.adapters.redis_client import is_sentinel_url

        if is_sentinel_url(self.url):
            if not self.sentinel_master:
                raise _key_error("sentinel_master", "a sentinel:// broker URL needs the master's name "
                                 'as the sentinels know it, e.g. sentinel_master = "mymaster"')
        else:
            for key in ("sentinel_master", "sentinel_password_env"):
                if getattr(self, key) is not None:
                    raise _key_error(key, "only for a sentinel:// broker URL (url is not one)")
        return self

    @property
    def is_sentinel(self) -> bool:
        return self.url.startswith("sentinel://")

    def dsn(self) -> str:
        """``url`` plus the password from ``password_env``; for sentinel:// on every part."""
        if not self.is_sentinel:
            return super().dsn()
        from crmsync.adapters.redis_client import parse_sentinel_url, with_password

        if not self.password_env:
            return parse_sentinel_url(self.url).render()
        return with_password(self.url, _read_secret(self.password_env, "broker.password_env", self._env))

    def sentinel_password(self) -> str | None:
        """The sentinels' password, read now from ``sentinel_password_env`` (None when none is named)."""
        if not self.sentinel_password_env:
            return None
        return _read_secret(self.sentinel_password_env, "broker.sentinel_password_env", self._env)


class ExchangeSettings(_Section):
    """How to reach Exchange: EWS (``api = "ews"``) or Microsoft Graph (``api = "graph"``, app-only
    client credentials). Passwords and client secrets are read from the named variables."""

    endpoint: str | None = None
    auth: AuthType = "basic"
    username: str | None = None
    password_env: str = "CRMSYNC_EXCHANGE_PASSWORD"
    access: AccessType = "impersonation"
    verify_tls: bool = True
    timeout_s: float = Field(default=20.0, gt=0)
    max_wait_s: float = Field(default=5.0, gt=0)
    #: Graph: concurrent requests per mailbox, counted across every crmsync process in the broker's
    #: Redis (Exchange Online allows 4 per app per mailbox and answers the 5th with 429)
    mailbox_concurrency: int = Field(default=4, ge=1, le=4)
    client_id: str | None = None
    tenant_id: str | None = None
    client_secret_env: str = "CRMSYNC_EXCHANGE_CLIENT_SECRET"
    # Microsoft Graph (Exchange Online); a [[mailbox]] may override ``api``.
    api: ExchangeApi = "ews"
    certificate_path: str | None = None        # PEM private key (+ certificate) instead of a client secret
    certificate_thumbprint: str | None = None  # SHA-1 thumbprint of that certificate, as Entra ID shows it
    authority: str = "https://login.microsoftonline.com"
    graph_url: str = "https://graph.microsoft.com/v1.0"
    #: How this section is named in messages ("exchange", or "mailbox <address>" for a mailbox's
    #: effective settings, see ``Settings.exchange_for``).
    _label: str = PrivateAttr(default="exchange")

    @field_validator("authority", "graph_url")
    @classmethod
    def _graph_http_url(cls, value: str) -> str:
        if not re.match(r"^https?://[^/\s]+", value):
            raise PydanticCustomError("graph_url", "must be an http(s) URL such as https://graph.microsoft.com/v1.0")
        return value.rstrip("/")

    def graph_problems(self) -> list[tuple[str, str]]:
        """(key, why) for each Graph setting missing or inconsistent; empty when Graph can be used."""
        problems = [(f"exchange.{key}", "is required when a mailbox uses api = 'graph'")
                    for key in ("tenant_id", "client_id") if not getattr(self, key)]
        if bool(self.certificate_path) != bool(self.certificate_thumbprint):
            problems.append(("exchange.certificate_thumbprint" if self.certificate_path else "exchange.certificate_path",
                             "certificate_path and certificate_thumbprint go together (or neither: then "
                             "client_secret_env names the variable holding the client secret)"))
        return problems

    @field_validator("endpoint")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^https?://[^/\s]+", value):
            raise PydanticCustomError(
                "endpoint_url", "must be an http(s) URL such as https://mail.example.com/EWS/Exchange.asmx"
            )
        return value

    @model_validator(mode="after")
    def _auth_needs(self) -> ExchangeSettings:
        if self.api == "graph":
            for key, why in self.graph_problems():
                raise _key_error(key.removeprefix("exchange."), why)
        if self.endpoint is None:
            return self
        if self.auth == "oauth":
            for key in ("client_id", "tenant_id"):
                if not getattr(self, key):
                    raise _key_error(key, "is required when exchange.auth is 'oauth'")
        return self

    @property
    def call_budget_s(self) -> float:
        """The longest one Exchange call may take, its in-process retries and back-off included:
        one request, the server's back-offs (at most ``max_wait_s`` in all), one more request."""
        return 2 * self.timeout_s + self.max_wait_s

    def password(self) -> str | None:
        """The Exchange password, read now from ``password_env``; None when ``auth`` needs none
        (noauth, oauth). ConfigError naming the variable when it is needed and not set."""
        if self.auth in ("noauth", "oauth"):
            return None
        return _read_secret(self.password_env, f"{self._label}.password_env", self._env)

    def require_endpoint(self) -> str:
        """The endpoint, for commands that talk to Exchange; ConfigError saying how to set it."""
        if not self.endpoint:
            raise ConfigError("config key exchange.endpoint: is required to reach Exchange; set it in "
                              "[exchange] or with CRMSYNC_EXCHANGE_ENDPOINT")
        return self.endpoint

    def client_secret(self) -> str:
        """The OAuth client secret, read now from ``client_secret_env``."""
        return _read_secret(self.client_secret_env, "exchange.client_secret_env", self._env)


def _check_address(value: str) -> str:
    """Syntax check with email-validator; on-premises domains such as ``corp.local`` are allowed."""
    value = value.strip()
    try:
        email_validator.validate_email(value, check_deliverability=False, globally_deliverable=False)
    except email_validator.EmailNotValidError as exc:
        local, at, domain = value.rpartition("@")
        special = domain.rsplit(".", 1)[-1].lower() in email_validator.SPECIAL_USE_DOMAIN_NAMES
        if not (at and special and re.fullmatch(r"[A-Za-z0-9.-]+", domain)):
            raise PydanticCustomError("email", "is not an email address: {why}", {"why": str(exc)}) from None
        try:  # the domain is an internal one; still check the local part
            email_validator.validate_email(f"{local}@example.com", check_deliverability=False)
        except email_validator.EmailNotValidError as exc2:
            raise PydanticCustomError("email", "is not an email address: {why}", {"why": str(exc2)}) from None
    return value


def _check_field_rules(value: Mapping[str, str] | None) -> Mapping[str, str] | None:
    """Field rules name mapped (canonical) fields only: a typo is an error, not a silent no-op."""
    from schemas.canonical import ACCOUNT_FIELDS, CONTACT_FIELDS

    if value is None:
        return None
    known = dict.fromkeys((*ACCOUNT_FIELDS, *CONTACT_FIELDS))
    unknown = [name for name in value if name not in known]
    if unknown:
        raise PydanticCustomError("field_rules", "unknown field(s) {unknown}; mapped fields are: {known}",
                                  {"unknown": ", ".join(unknown), "known": ", ".join(known)})
    return value


def _check_categories(value: tuple[str, ...] | None) -> tuple[str, ...] | None:
    """Outlook category names, trimmed; an empty name is an error (it would match nothing)."""
    if value is None:
        return None
    names = tuple(v.strip() for v in value)
    if not all(names):
        raise PydanticCustomError("categories", "an empty category name matches no contact")
    return names


class PushRule(_Section):
    """One rule of a push filter: the CRM account column and the values it may hold."""

    column: str
    in_: tuple[str, ...] = Field(alias="in", min_length=1)

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True, serialize_by_alias=True)

    @field_validator("column")
    @classmethod
    def _column(cls, value: str) -> str:
        from crmsync.core.crm_mapping import ACCOUNT_COLUMNS

        if value not in ACCOUNT_COLUMNS.values():
            raise PydanticCustomError("push_filter", "unknown CRM accounts column '{column}'; filterable columns "
                                      "are: {known}", {"column": value, "known": ", ".join(ACCOUNT_COLUMNS.values())})
        return value


class MailboxSettings(_Section):
    """One synced mailbox: its SMTP address, the folder under its Contacts folder, and its own
    policy; a policy key left out here takes its default from ``[sync]``."""

    address: str
    #: A path under this mailbox's Contacts ("CRM Accounts", "CRM/Accounts"), under
    #: ``folder_owner``'s Contacts when that is set, or "public:Company/Contacts": a public folder.
    folder: str = DEFAULT_FOLDER
    #: Another mailbox whose Contacts hold ``folder``; the identity that logs in for this mailbox
    #: needs delegate access to it. Links, state and events stay this mailbox's.
    folder_owner: str | None = None
    secondary_contacts: bool = True
    #: "approve": a non-empty folder never synced waits for `crmsync sync --approve-plan`
    #: (the default; an empty folder, or one crmsync creates, needs no approval);
    #: "auto": its first sync starts at once, for those who accept the risk (duplicates are then
    #: [sync] first_sync's business).
    first_sync: Literal["approve", "auto"] = "approve"
    api: ExchangeApi | None = None    # None: exchange.api
    conflict_policy: ConflictPolicy | None = None
    conflict_fields: dict[str, ConflictPolicy] | None = None
    enabled: bool | None = None
    direction: Direction | None = None
    create_folder: bool | None = None
    fields: dict[str, FieldDirection] | None = None
    on_exchange_delete: OnExchangeDelete | None = None
    on_crm_delete: OnCrmDelete | None = None
    push_filter: tuple[PushRule, ...] | None = None
    categories: tuple[str, ...] | None = None
    max_delete_count: int | None = Field(default=None, ge=0)
    max_delete_percent: float | None = Field(default=None, ge=0, le=100)
    min_delete_count_for_percent: int | None = Field(default=None, ge=0)
    delete_window_s: float | None = Field(default=None, gt=0)
    private_sensitivities: tuple[Sensitivity, ...] | None = None
    only_categories: tuple[str, ...] | None = None
    only_active: bool | None = None
    on_new_record: OnNewRecord | None = None
    #: Acting for this mailbox (EWS): left out, they come from [exchange] (``Settings.exchange_for``).
    access: AccessType | None = None
    username: str | None = Field(default=None, min_length=1)
    password_env: str | None = Field(default=None, min_length=1)

    @field_validator("only_categories")
    @classmethod
    def _categories(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        return _check_categories(value)

    @field_validator("fields", "conflict_fields")
    @classmethod
    def _fields(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        return _check_field_rules(value)  # type: ignore[return-value]

    @field_validator("address")
    @classmethod
    def _address(cls, value: str) -> str:
        return _check_address(value)

    @field_validator("folder")
    @classmethod
    def _folder(cls, value: str) -> str:
        public = value.strip().lower().startswith(PUBLIC_PREFIX)
        path = value.strip()[len(PUBLIC_PREFIX):] if public else value
        parts = [p.strip() for p in path.strip().strip("/").split("/")]
        if not all(parts):
            raise PydanticCustomError("folder", "must be a folder path such as 'CRM Accounts' or 'CRM/Accounts' "
                                      "(under Contacts), or 'public:Company/Contacts' (a public folder)")
        return (PUBLIC_PREFIX if public else "") + "/".join(parts)

    @field_validator("folder_owner")
    @classmethod
    def _folder_owner(cls, value: str | None) -> str | None:
        return None if value is None else _check_address(value)

    @model_validator(mode="after")
    def _folder_place(self) -> MailboxSettings:
        if self.folder_owner is not None and self.public_folder:
            raise _key_error("folder_owner", f"{self.address}: a public folder has no owner; set either "
                             "folder = 'public:...' or folder_owner, not both")
        if self.folder_owner is not None and self.folder_owner.lower() == self.address.lower():
            raise _key_error("folder_owner", f"{self.address}: is this mailbox itself; leave folder_owner out")
        return self

    @property
    def public_folder(self) -> bool:
        """``folder = "public:A/B"``: the sync folder is the public folder A/B."""
        return self.folder.startswith(PUBLIC_PREFIX)

    @property
    def folder_path(self) -> str:
        """The folder's path without the ``public:`` mark ("A/B")."""
        return self.folder[len(PUBLIC_PREFIX):] if self.public_folder else self.folder

    @property
    def folder_place(self) -> str:
        """Where the folder is, for people: "Contacts/A", "public folders/A", "boss@x's Contacts/A"."""
        if self.public_folder:
            return f"public folders/{self.folder_path}"
        if self.folder_owner:
            return f"{self.folder_owner}'s Contacts/{self.folder_path}"
        return f"Contacts/{self.folder_path}"


class SyncSettings(_Section):
    """How records are reconciled and how often the producers look for changes."""

    conflict_policy: ConflictPolicy = "newest-wins"
    #: Per-field conflict policies over ``conflict_policy`` (mapped fields only).
    conflict_fields: dict[str, ConflictPolicy] = Field(default_factory=dict)
    phone_region: str = "US"
    private_sensitivities: tuple[Sensitivity, ...] = ("Private",)
    #: The safety net behind the doorbells; while a doorbell is not armed the producer polls
    #: every 5 s instead.
    poll_interval_s: float = Field(default=60.0, gt=0)
    #: The Exchange (EWS) doorbell: a streaming subscription (one long GetStreamingEvents per
    #: mailbox), a pull subscription (GetEvents every second), or none ("poll": every 5 s).
    notifications: Literal["streaming", "pull", "poll"] = "streaming"
    max_attempts: int = Field(default=8, ge=1)
    lease_ttl_s: float = Field(default=120.0, gt=0)
    redrive_after_s: float = Field(default=300.0, gt=0)
    #: How often ``crmsync beat`` re-drives overdue events (and looks for a restarted broker);
    #: the producer re-sends what the broker refused at the same rhythm.
    redrive_check_s: float = Field(default=5.0, gt=0)
    #: How often ``crmsync beat`` checks each mailbox for drift (links' hashes against both sides).
    drift_check_s: float = Field(default=3600.0, gt=0)
    retry_backoff_max_s: float = Field(default=120.0, gt=0)
    batch_size: int = Field(default=200, ge=1)
    #: Before a mailbox's first sync, when its folder and the CRM hold probable duplicates:
    #: wait for `crmsync link` (refuse-duplicates), link stamp / exact e-mail pairs one-to-one
    #: and go (link-certain), or create every unlinked record on the other side (create-all).
    first_sync: Literal["refuse-duplicates", "link-certain", "create-all"] = "refuse-duplicates"
    #: Defaults of every mailbox's policy (each [[mailbox]] may set its own).
    enabled: bool = True
    direction: Direction = "two-way"
    create_folder: bool = True
    fields: dict[str, FieldDirection] = Field(default_factory=dict)
    #: CRM -> Exchange: only accounts whose columns hold one of the listed values get a contact.
    push_filter: tuple[PushRule, ...] = ()
    #: CRM -> Exchange: Outlook categories stamped on every contact crmsync creates.
    categories: tuple[str, ...] = ()
    #: CRM -> Exchange: only active accounts get (and keep) an Outlook contact; false: inactive
    #: accounts are pushed too, and deactivating an account no longer deletes its contact.
    only_active: bool = True
    #: A contact deleted in Outlook: deactivate its CRM account, delete the account row (with its
    #: secondary contacts), or only unlink the pair.
    on_exchange_delete: OnExchangeDelete = "deactivate"
    #: A CRM account deactivated or deleted: move its contact to Deleted Items, delete it for good
    #: (hard-delete, EWS only), or only unlink.
    on_crm_delete: OnCrmDelete = "move-to-deleted-items"
    #: The delete brake: more deletes than this in one window are all held for an administrator.
    max_delete_count: int = Field(default=25, ge=0)
    #: ... or more than this share (percent) of the mailbox's synced links ...
    max_delete_percent: float = Field(default=10.0, ge=0, le=100)
    #: ... while numbering at least this many.
    min_delete_count_for_percent: int = Field(default=5, ge=0)
    delete_window_s: float = Field(default=3600.0, gt=0)
    #: Exchange -> CRM: when not empty, only contacts carrying one of these Outlook categories
    #: are imported (contacts stamped by crmsync keep syncing).
    only_categories: tuple[str, ...] = ()
    #: A record new on one side that strongly matches an unlinked record on the other (a second
    #: source of accounts): link the two ("match-then-create"; ambiguous matches wait in the
    #: review queue), always create ("create"), or let every new record wait for a person
    #: ("review", `crmsync review list|accept|reject`).
    on_new_record: OnNewRecord = "match-then-create"

    @field_validator("only_categories")
    @classmethod
    def _categories(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return _check_categories(value)  # type: ignore[return-value]

    @field_validator("fields", "conflict_fields")
    @classmethod
    def _fields(cls, value: dict[str, str]) -> dict[str, str]:
        return _check_field_rules(value)  # type: ignore[return-value]

    @field_validator("phone_region")
    @classmethod
    def _region(cls, value: str) -> str:
        value = value.strip().upper()
        if value not in phonenumbers.SUPPORTED_REGIONS:
            raise PydanticCustomError("region", "must be a two-letter region code such as US, GB or DE")
        return value


class WorkerSettings(_Section):
    """The Celery worker's defaults (``crmsync worker`` options override them)."""

    concurrency: int = Field(default=4, ge=1)
    #: Queue names are ``<prefix>.to_exchange``, ``<prefix>.to_crm`` and ``<prefix>.maintenance``;
    #: ``crmsync worker`` consumes all three unless given ``-Q`` (e.g. ``-Q to_crm``).
    queue_prefix: str = Field(default="crmsync", min_length=1)
    #: The queues ``crmsync worker`` consumes without ``-Q``: purposes (to_exchange, to_crm,
    #: maintenance) or full queue names, comma-separated.
    queues: str = Field(default="to_exchange,to_crm,maintenance", min_length=1)


class MetricsSettings(_Section):
    """The Prometheus endpoint (see crmsync.metrics)."""

    #: Port the producer serves /metrics on; 0: off (``crmsync metrics-server`` serves it instead).
    port: int = Field(default=0, ge=0, le=65535)
    address: str = "127.0.0.1"
    #: Directory for prometheus-client's multiprocess mode (Celery pool processes and the
    #: producer write samples there; the server adds them up). Empty: PROMETHEUS_MULTIPROC_DIR.
    multiproc_dir: str | None = None


class LogSettings(_Section):
    level: LogLevel = "INFO"
    json_: bool = Field(default=False, alias="json")
    #: Log every EWS request and response (exchangelib's wire loggers) at DEBUG, redacted:
    #: credentials hidden, items whose Sensitivity is not Normal reduced to their ids. Off by
    #: default, also at ``level = "DEBUG"``; turn it on only to debug the protocol.
    ews_wire: bool = False

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True, serialize_by_alias=True)

    @field_validator("level", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.strip().upper() if isinstance(value, str) else value

    @property
    def json(self) -> bool:  # type: ignore[override]
        """Render log lines as JSON (one object per line) instead of the console format."""
        return self.json_


class ConsoleSettings(_Section):
    """The web console (``crmsync console``)."""

    #: The users file ``crmsync console add-user`` writes (one ``name:argon2-hash`` a line).
    #: A relative path is relative to the working directory.
    users_file: str = Field(default="crmsync-console-users", min_length=1)
    #: Environment variable holding the key that signs session cookies; unset: a random key is
    #: generated once into ``<users_file>.secret`` (mode 0600) next to the users file.
    secret_key_env: str | None = None

    @field_validator("secret_key_env")
    @classmethod
    def _env_name(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", value):
            raise PydanticCustomError("env_name", "is not an environment variable name")
        return value

    def secret_key(self) -> str | None:
        """The session key read now from ``secret_key_env`` (None when no variable is named)."""
        if not self.secret_key_env:
            return None
        return _read_secret(self.secret_key_env, "console.secret_key_env", self._env)


class Settings(BaseModel):
    """All of crmsync's settings. Build it with :func:`load_settings`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    crm: CrmSettings = Field(default_factory=CrmSettings)
    state: StateSettings = Field(default_factory=StateSettings)
    broker: BrokerSettings = Field(default_factory=BrokerSettings)
    exchange: ExchangeSettings = Field(default_factory=ExchangeSettings)
    mailboxes: tuple[MailboxSettings, ...] = ()
    sync: SyncSettings = Field(default_factory=SyncSettings)
    worker: WorkerSettings = Field(default_factory=WorkerSettings)
    metrics: MetricsSettings = Field(default_factory=MetricsSettings)
    log: LogSettings = Field(default_factory=LogSettings)
    console: ConsoleSettings = Field(default_factory=ConsoleSettings)

    _config_path: str | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _timing(self) -> Settings:
        """A lease must outlive two of the longest Exchange calls (it is renewed before each
        write), and the re-drive must not overtake a retry waiting in its back-off."""
        budget = self.exchange.call_budget_s
        if self.sync.lease_ttl_s < 2 * budget:
            raise _key_error("sync.lease_ttl_s", f"{self.sync.lease_ttl_s:g} must be at least {2 * budget:g} s: "
                             f"twice the longest Exchange call (2 x exchange.timeout_s + exchange.max_wait_s)")
        longest = self.sync.retry_backoff_max_s
        if self.sync.redrive_after_s <= longest:
            raise _key_error("sync.redrive_after_s", f"{self.sync.redrive_after_s:g} must be above {longest:g} s: "
                             "the longest retry countdown (sync.retry_backoff_max_s)")
        return self

    @model_validator(mode="after")
    def _graph_mailboxes(self) -> Settings:
        """A mailbox that overrides ``api = "graph"`` needs the Graph settings too."""
        if self.exchange.api != "graph" and any(m.api == "graph" for m in self.mailboxes):
            for key, why in self.exchange.graph_problems():
                raise _key_error(key, why)
        return self

    @model_validator(mode="after")
    def _mailbox_access(self) -> Settings:
        """Per-mailbox ``access``, ``username`` and ``password_env`` (EWS only); every EWS
        mailbox needs a username (its own or exchange.username) when auth is basic or ntlm."""
        exchange = self.exchange
        ews = [m for m in self.mailboxes if (m.api or exchange.api) == "ews"]
        for mbox in self.mailboxes:
            own = [key for key in ("access", "username", "password_env") if getattr(mbox, key) is not None]
            if own and (mbox.api or exchange.api) == "graph":
                raise _key_error("mailbox", f"{mbox.address}: {', '.join(own)} apply to EWS only; this mailbox "
                                 "uses api = 'graph' (its app registration acts for every mailbox)")
            if exchange.auth in ("noauth", "oauth") and (mbox.username or mbox.password_env):
                raise _key_error("mailbox", f"{mbox.address}: username and password_env are not used with "
                                 f"exchange.auth = {exchange.auth!r}; remove them or use basic/ntlm")
        if exchange.endpoint is not None and exchange.auth in ("basic", "ntlm") and not exchange.username:
            missing = [m.address for m in ews if not m.username]
            if missing or not ews:
                raise _key_error("exchange.username", f"is required when exchange.auth is {exchange.auth!r}"
                                 + (f" (or a username in [[mailbox]] {', '.join(missing)})" if ews else ""))
        return self

    @model_validator(mode="after")
    def _folder_place_needs_ews(self) -> Settings:
        """Public folders do not exist in Microsoft Graph; another mailbox's folder is EWS only too."""
        for mbox in self.mailboxes:
            if (mbox.api or self.exchange.api) != "graph":
                continue
            if mbox.public_folder:
                raise _key_error("mailbox", f"{mbox.address}: folder {mbox.folder!r} is a public folder, and Microsoft "
                                 "Graph has no public folders; use api = 'ews' for this mailbox")
            if mbox.folder_owner:
                raise _key_error("mailbox", f"{mbox.address}: folder_owner needs api = 'ews' (over Graph, list "
                                 f"{mbox.folder_owner} as a [[mailbox]] of its own: the app acts for every mailbox)")
        return self

    @model_validator(mode="after")
    def _hard_delete_needs_ews(self) -> Settings:
        """``on_crm_delete = "hard-delete"`` is an EWS HardDelete; over Graph it is refused here."""
        for mbox in self.mailboxes:
            rule = mbox.on_crm_delete or self.sync.on_crm_delete
            if rule == "hard-delete" and (mbox.api or self.exchange.api) == "graph":
                raise _key_error("mailbox", f"{mbox.address}: on_crm_delete = 'hard-delete' needs api = 'ews' "
                                 "(over Graph use move-to-deleted-items or unlink)")
        return self

    def exchange_for(self, address: str) -> ExchangeSettings:
        """The [exchange] settings one mailbox connects with: its own ``access``, ``username``
        and ``password_env`` where it sets them. Secrets are still read only when needed."""
        mbox = self.mailbox(address)
        update = {key: getattr(mbox, key) for key in ("access", "username", "password_env")
                  if getattr(mbox, key) is not None}
        if not update:
            return self.exchange
        copy = self.exchange.model_copy(update=update)
        private = dict(self.exchange.__pydantic_private__ or {})
        if "password_env" in update or "username" in update:
            private["_label"] = f"mailbox {mbox.address}"
        object.__setattr__(copy, "__pydantic_private__", private)
        return copy

    def api_of(self, address: str) -> str:
        """"ews" or "graph": the mailbox's own ``api``, else ``exchange.api``."""
        return self.mailbox(address).api or self.exchange.api

    @model_validator(mode="after")
    def _unique_mailboxes(self) -> Settings:
        seen: set[str] = set()
        for mailbox in self.mailboxes:
            if mailbox.address.lower() in seen:
                raise _key_error("mailbox", f"{mailbox.address} is listed twice")
            seen.add(mailbox.address.lower())
        return self

    @property
    def config_path(self) -> str | None:
        """The TOML file these settings were loaded from (None: defaults and environment only)."""
        return self._config_path

    def require_mailboxes(self) -> tuple[MailboxSettings, ...]:
        """The mailboxes, for commands that sync; ConfigError when none is configured."""
        if not self.mailboxes:
            raise ConfigError("config key mailbox: no mailbox is configured; add a [[mailbox]] table with "
                              "an address, or set CRMSYNC_MAILBOXES")
        return self.mailboxes

    def effective(self, address: str) -> MailboxSettings:
        """One mailbox's settings with every policy key it leaves out taken from ``[sync]``;
        field rules and per-field conflict policies merge (the mailbox's own win per field)."""
        mbox = self.mailbox(address)
        update: dict[str, Any] = {key: getattr(self.sync, key) for key in POLICY_KEYS if getattr(mbox, key) is None}
        update["fields"] = {**self.sync.fields, **(mbox.fields or {})}
        update["conflict_fields"] = {**self.sync.conflict_fields, **(mbox.conflict_fields or {})}
        return mbox.model_copy(update=update)

    def enabled_mailboxes(self) -> tuple[MailboxSettings, ...]:
        """The mailboxes that sync now (``enabled`` false: their producers and events pause)."""
        return tuple(m for m in self.mailboxes if self.effective(m.address).enabled)

    def mailbox(self, address: str) -> MailboxSettings:
        """The settings of one mailbox by address (case-insensitive); ConfigError if not listed."""
        for mailbox in self.mailboxes:
            if mailbox.address.lower() == address.lower():
                return mailbox
        raise ConfigError(f"mailbox {address}: not in the configuration (add a [[mailbox]] entry)")


# ---------------------------------------------------------------------------------- loading

_SECTIONS: dict[str, type[_Section]] = {
    "crm": CrmSettings,
    "state": StateSettings,
    "broker": BrokerSettings,
    "exchange": ExchangeSettings,
    "sync": SyncSettings,
    "worker": WorkerSettings,
    "metrics": MetricsSettings,
    "log": LogSettings,
    "console": ConsoleSettings,
}


def _keys(model: type[BaseModel]) -> dict[str, str]:
    """TOML key -> field name for a section model."""
    return {(info.alias or name): name for name, info in model.model_fields.items()}


def _is_sequence(model: type[BaseModel], field: str) -> bool:
    annotation = model.model_fields[field].annotation
    return typing.get_origin(annotation) in (tuple, list)


def _env_value(model: type[BaseModel], field: str, raw: str) -> Any:
    """An environment string as the value the field expects (lists split on commas)."""
    if _is_sequence(model, field):
        return tuple(part.strip() for part in raw.split(",") if part.strip())
    if raw == "" and model.model_fields[field].default is None:
        return None
    return raw


def _parse_mailboxes(raw: str) -> list[dict[str, Any]]:
    entries = []
    for part in raw.split(","):
        part = part.strip()
        if not part:
            continue
        address, sep, folder = part.partition("=")
        entry: dict[str, Any] = {"address": address.strip()}
        if sep:
            entry["folder"] = folder.strip()
        entries.append(entry)
    return entries


def load_settings(path: str | None = None, env: Mapping[str, str] | None = None) -> Settings:
    """Read the TOML file (``path``, else ``$CRMSYNC_CONFIG``, else none), apply the environment
    overrides, validate. Raises ConfigError with one line per problem, each naming the key and
    where its value came from."""
    env = os.environ if env is None else env
    path = path or env.get(ENV_CONFIG) or None
    file_label = str(path) if path else None

    data: dict[str, Any] = {}
    if path:
        try:
            with open(path, "rb") as handle:
                data = tomllib.load(handle)
        except FileNotFoundError:
            raise ConfigError(f"config file {path}: not found") from None
        except IsADirectoryError:
            raise ConfigError(f"config file {path}: is a directory, expected a TOML file") from None
        except PermissionError:
            raise ConfigError(f"config file {path}: permission denied") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path}: invalid TOML: {exc}") from None

    problems: list[str] = []
    sources: dict[tuple[str, ...], str] = {}  # (section, key) or ("mailbox",) -> "env X"/path

    # Secrets in the file are refused before anything else, without echoing their values.
    for section, secret_keys in _SECRET_KEYS.items():
        table = data.get(section)
        if isinstance(table, dict):
            for key, env_key in secret_keys.items():
                if key in table:
                    del table[key]
                    problems.append(
                        _line(f"{section}.{key}", "secrets are never stored in the config file; put it in an "
                              f"environment variable and name that variable with {section}.{env_key}", file_label)
                    )

    for section in ("crm", "state", "broker"):
        table = data.get(section)
        url = table.get("url") if isinstance(table, dict) else None
        if isinstance(url, str) and mask_url(url) != url:
            problems.append(
                _line(f"{section}.url", "contains a password; secrets are never stored in the config file: "
                      f"remove it from the URL and name an environment variable with {section}.password_env",
                      file_label)
            )
            del table["url"]

    merged: dict[str, Any] = {section: {} for section in _SECTIONS}
    for section, value in data.items():
        if section == "mailbox":
            merged["mailboxes"] = value
        elif section == "mailboxes":  # the natural typo; say what the file must say
            problems.append(_line("mailboxes", "unknown key; write each mailbox as a [[mailbox]] table", file_label))
        else:
            merged[section] = dict(value) if isinstance(value, dict) else value
    if file_label:
        for section, value in merged.items():
            if isinstance(value, dict):
                for key in value:
                    sources[(section, key)] = file_label
            sources[(section,)] = file_label

    for section, model in _SECTIONS.items():
        for key, field in _keys(model).items():
            name = f"{ENV_PREFIX}{section}_{key}".upper()
            if name in env:
                table = merged.get(section)
                if not isinstance(table, dict):
                    table = merged[section] = {}
                table[key] = _env_value(model, field, env[name])
                sources[(section, key)] = f"env {name}"
    if ENV_MAILBOXES in env:
        merged["mailboxes"] = _parse_mailboxes(env[ENV_MAILBOXES])
        sources[("mailboxes",)] = f"env {ENV_MAILBOXES}"

    settings: Settings | None = None
    try:
        settings = Settings.model_validate(merged)
    except ValidationError as exc:
        listed = merged.get("mailboxes")
        addresses = [m.get("address") if isinstance(m, dict) else None for m in listed] \
            if isinstance(listed, list) else []
        problems.extend(_describe(error, sources, file_label, addresses) for error in exc.errors())
    if problems:
        raise ConfigError("\n".join(problems))
    assert settings is not None
    _bind_env(settings, env, file_label)
    return settings


def _bind_env(settings: Settings, env: Mapping[str, str], path: str | None) -> None:
    """Secrets are read at call time from the same environment the settings were loaded from."""
    object.__setattr__(settings, "__pydantic_private__", {"_config_path": path})
    for section in (settings.crm, settings.state, settings.broker, settings.exchange, settings.console):
        object.__setattr__(section, "__pydantic_private__", {**(section.__pydantic_private__ or {}), "_env": env})


def _line(key: str, message: str, source: str | None) -> str:
    where = f" [from {source}]" if source else " [default]"
    return f"config key {key}: {message}{where}"


def _key_name(loc: tuple[Any, ...]) -> tuple[str, tuple[str, ...]]:
    """Dotted key name as the user writes it, and the lookup key for its source."""
    parts: list[str] = []
    for item in loc:
        if isinstance(item, int):
            parts[-1] = f"{parts[-1]}[{item}]"
        elif item == "mailboxes":
            parts.append("mailbox")
        else:
            parts.append(str(item))
    text = ".".join(parts)
    if loc and loc[0] == "mailboxes":
        return text, ("mailboxes",)
    return text, tuple(str(p) for p in loc[:2])


def _describe(error: Mapping[str, Any], sources: Mapping[tuple[str, ...], str], file_label: str | None,
              addresses: typing.Sequence[Any] = ()) -> str:
    loc = tuple(error["loc"])
    # A [[mailbox]] key's error also names the mailbox (unless its address is what is wrong).
    mailbox = ""
    if len(loc) > 2 and loc[0] == "mailboxes" and isinstance(loc[1], int) and loc[2] != "address" \
            and loc[1] < len(addresses) and isinstance(addresses[loc[1]], str):
        mailbox = f" (mailbox {addresses[loc[1]]})"
    kind = error["type"]
    ctx = error.get("ctx") or {}
    value = error.get("input")
    if kind == _KEY_MARK:
        loc = loc + tuple(ctx["key"].split(".")) if ctx["key"] != "mailbox" else ("mailboxes",)
    key, source_key = _key_name(loc)
    source = sources.get(source_key) or sources.get(source_key[:1]) or file_label
    if isinstance(value, str) and loc[-1:] in (("url",), ("endpoint",)):
        value = mask_url(value)
    got = f" (got {value!r})" if not isinstance(value, (dict, list, tuple)) else ""

    if kind == _KEY_MARK:
        message, got = ctx["message"], ""
    elif kind == "literal_error":
        choices = re.findall(r"'([^']*)'", str(ctx.get("expected", "")))
        message = "must be one of " + ", ".join(choices)
    elif kind == "extra_forbidden":
        section = loc[0] if len(loc) > 1 else None
        model = _SECTIONS.get(str(section)) if section else None
        known = ", ".join(_keys(model)) if model else ", ".join(["mailbox", *_SECTIONS])
        message, got = f"unknown key (known keys here: {known})", ""  # never echo: it may be a secret
    elif kind == "missing":
        message, got = "is required", ""
    elif kind in ("bool_parsing", "bool_type"):
        message = "must be true or false"
    elif kind in ("int_parsing", "int_type", "int_from_float"):
        message = "must be a whole number"
    elif kind in ("float_parsing", "float_type"):
        message = "must be a number"
    elif kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        sign = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<", "less_than_equal": "<="}[kind]
        bound = next(iter(ctx.values()))
        message = f"must be {sign} {bound}"
    elif kind in ("model_type", "model_attributes_type", "dict_type"):
        message = f"must be a table ([{key}])" if len(loc) == 1 else "must be a table"
    elif kind in ("tuple_type", "list_type"):
        message = "must be an array of tables ([[mailbox]])" if loc == ("mailboxes",) else "must be a list"
    elif kind == "string_type":
        message = "must be a string"
    elif kind == "string_too_short":
        message = "must not be empty"
    else:
        message = str(error["msg"]).removeprefix("Value error, ")
        message = message[:1].lower() + message[1:]
    return _line(key, message + got + mailbox, source)
