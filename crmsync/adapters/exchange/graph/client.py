"""A small synchronous Microsoft Graph client: one app registration, app-only (client credentials).

Why not the Graph SDK: crmsync's workers are synchronous Celery processes; httpx + msal is all
they need and keeps the failure modes visible:

* **Token.** msal's ``ConfidentialClientApplication.acquire_token_for_client`` caches the token
  and fetches a new one shortly before it expires. A 401 from Graph (token revoked, clock skew)
  drops the cache once and retries; a second 401 is a ConfigError. Token errors name the tenant,
  app and Entra ID's error code, never the secret (the secret is registered for log redaction
  when it is read, see ``crmsync.config``).
* **Throttling.** 429 and 503 carry ``Retry-After``. A wait that fits in what is left of
  ``max_wait_s`` (in total per call) is slept here and the request repeated; otherwise
  Transient(retry_after=the server's value) hands the retry to Celery, as the EWS adapter does
  with ErrorServerBusy. The value is bounded (``MIN_RETRY_AFTER`` .. ``MAX_RETRY_AFTER``).
* **Concurrency.** Exchange Online allows 4 concurrent requests per app per mailbox; each
  request holds slots of its mailbox from the ``limiter`` (see ``limiter``: counted in Redis
  across every crmsync process, or in this process only), and a ``$batch`` takes as many as it
  has requests (up to all of them), since Graph runs a batch's requests in parallel. A 429/503
  also pauses the mailbox for every process sharing the limiter, for its ``Retry-After``.
* **Every request** carries ``Prefer: IdType="ImmutableId"`` so ids survive moves between folders.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

import httpx
import msal
import structlog

from crmsync.adapters.exchange.graph.limiter import DEFAULT_LIMIT, LocalSlots, MailboxLimiter
from crmsync.errors import BadRecord, ConfigError, CrmsyncError, MailboxUnavailable, Stale, Transient

log = structlog.get_logger(__name__)

GRAPH_SCOPE = "https://graph.microsoft.com/.default"
IMMUTABLE_IDS = 'IdType="ImmutableId"'
MAX_BATCH = 20                       # Graph's limit of requests in one $batch
DEFAULT_RETRY_AFTER = 1.0            # seconds, when a 429/503 carries no (readable) Retry-After
#: Bounds of a Retry-After: at least this long (a 0 would let the in-process retries spin without
#: ever using up ``max_wait_s``), at most that long (it becomes the Celery countdown of the events).
MIN_RETRY_AFTER, MAX_RETRY_AFTER = 0.1, 300.0


def _retry_after(headers: Mapping[str, str]) -> float:
    try:
        asked = float(headers.get("Retry-After") or headers.get("retry-after") or DEFAULT_RETRY_AFTER)
    except ValueError:
        asked = DEFAULT_RETRY_AFTER
    return min(MAX_RETRY_AFTER, max(MIN_RETRY_AFTER, asked))


def error_code(body: Any) -> str:
    """Graph's ``error.code`` of an error body ("" when there is none)."""
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        return str(body["error"].get("code") or "")
    return ""


def _error_text(body: Any) -> str:
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        err = body["error"]
        msg = str(err.get("message") or "").strip().splitlines()[0:1]
        text = f"{err.get('code')}: {msg[0] if msg else ''}"
        return text if len(text) <= 200 else text[:200] + " ..."
    return "no error body"


def translate(status: int, headers: Mapping[str, str], body: Any, where: str,
              mailbox: str | None = None) -> CrmsyncError:
    """The crmsync error for a Graph error answer (``where`` names the mailbox and the action).
    With ``mailbox``, a denial of that mailbox (HTTP 403, no such mailbox) is MailboxUnavailable:
    reported and retried with back-off while the other mailboxes carry on."""
    text = _error_text(body)
    if status in (429, 503, 504) or status >= 500:
        wait = _retry_after(headers) if status in (429, 503) else None
        busy = "throttled" if status == 429 else "server unavailable"
        return Transient(f"{where}: {busy} (HTTP {status}, {text})", retry_after=wait)
    if status == 412:
        return Stale(f"{where}: the contact changed since it was read (HTTP 412, the ETag is no longer current)")
    if status == 401:
        return ConfigError(f"{where}: Graph refused the app's token (HTTP 401, {text}); check exchange.tenant_id, "
                           "exchange.client_id and the app's credentials")
    if status == 403:
        message = (f"{where}: access denied (HTTP 403, {text}); grant the app the Application permission "
                   "Contacts.ReadWrite and include this mailbox in its RBAC for Applications scope")
        return MailboxUnavailable(message, mailbox) if mailbox else ConfigError(message)
    if status == 404 and error_code(body) in ("ErrorInvalidUser", "MailboxNotEnabledForRESTAPI", "ResourceNotFound"):
        message = f"{where}: no such mailbox over Graph (HTTP 404, {text}); check the [[mailbox]] address"
        return MailboxUnavailable(message, mailbox) if mailbox else ConfigError(message)
    if status in (400, 404, 409, 413, 422):
        return BadRecord(f"{where}: Graph refused the request (HTTP {status}, {text})")
    return Transient(f"{where}: unexpected HTTP {status} ({text})")


class _MsalHttp(httpx.Client):
    """httpx for msal's token requests. msal hands a certificate credential's ``client_assertion``
    over as bytes (``requests`` form-encodes bytes as their text); httpx would send ``str(bytes)``,
    the ``b'eyJ...'`` that Entra ID refuses as a malformed JWT. Bytes form values are decoded here."""

    def post(self, url: Any, *, data: Any = None, **kwargs: Any) -> httpx.Response:  # type: ignore[override]
        if isinstance(data, Mapping):
            data = {k: v.decode("ascii") if isinstance(v, bytes) else v for k, v in data.items()}
        return super().post(url, data=data, **kwargs)


class GraphClient:
    """Authenticated Graph requests for one app registration, shared by all its mailboxes."""

    def __init__(self, *, tenant_id: str, client_id: str, credential: str | dict[str, str],
                 authority: str = "https://login.microsoftonline.com",
                 graph_url: str = "https://graph.microsoft.com/v1.0", verify: Any = True,
                 timeout_s: float = 20.0, max_wait_s: float = 5.0, mailbox_concurrency: int = DEFAULT_LIMIT,
                 limiter: MailboxLimiter | None = None) -> None:
        self.tenant_id = tenant_id
        self.client_id = client_id
        self.authority = f"{authority.rstrip('/')}/{tenant_id}"
        self.graph_url = graph_url.rstrip("/")
        self.max_wait_s = max_wait_s
        self._credential = credential
        self._verify = verify
        self._timeout = timeout_s
        self.http = httpx.Client(base_url=self.graph_url + "/", verify=verify, timeout=timeout_s,
                                 headers={"Prefer": IMMUTABLE_IDS, "Accept": "application/json"})
        self._msal: msal.ConfidentialClientApplication | None = None
        self._msal_http: httpx.Client | None = None
        self._token_lock = threading.Lock()
        self.limiter: MailboxLimiter = limiter or LocalSlots(mailbox_concurrency, wait_s=timeout_s)
        self.requests_sent = 0          # HTTP requests to Graph (batches count once), for benchmarks

    # ------------------------------------------------------------------------- token

    def _app(self) -> msal.ConfidentialClientApplication:
        if self._msal is None:
            # msal speaks through a requests-like client; httpx's Client is one, and it uses
            # the same TLS trust as the Graph requests.
            self._msal_http = _MsalHttp(verify=self._verify, timeout=self._timeout)
            self._msal = msal.ConfidentialClientApplication(
                self.client_id, client_credential=self._credential, authority=self.authority,
                http_client=self._msal_http, instance_discovery=False)
        return self._msal

    def token(self, *, fresh: bool = False) -> str:
        """A bearer token for Graph (cached by msal until shortly before it expires)."""
        where = f"tenant {self.tenant_id}, app {self.client_id}: getting a Graph token from {self.authority}"
        with self._token_lock:
            if fresh:
                self._msal = None
            try:
                result = self._app().acquire_token_for_client(scopes=[GRAPH_SCOPE])
            except (httpx.TransportError, OSError) as exc:
                self._msal = None
                raise Transient(f"{where}: {type(exc).__name__}: {str(exc)[:200]}") from None
            except ValueError as exc:  # msal: the authority's discovery document is missing or wrong
                self._msal = None
                raise ConfigError(f"{where}: {str(exc)[:200]}; check exchange.authority and exchange.tenant_id") from None
        if "access_token" not in result:
            code = result.get("error") or "error"
            desc = str(result.get("error_description") or "").strip().splitlines()[0:1]
            detail = f"{code}: {desc[0] if desc else ''}"
            if code in ("temporarily_unavailable",) or str(code).startswith("server_error"):
                raise Transient(f"{where}: {detail}")
            raise ConfigError(f"{where}: {detail}; check exchange.tenant_id, exchange.client_id and the secret or "
                              "certificate the app was registered with")
        return str(result["access_token"])

    # ------------------------------------------------------------------------- requests

    @contextlib.contextmanager
    def _slot(self, mailbox: str | None, weight: int = 1) -> Iterator[None]:
        if mailbox is None:
            yield
            return
        with self.limiter.hold(mailbox, weight):
            yield

    def _check_origin(self, url: str) -> None:
        """Absolute URLs (nextLink, deltaLink) must point at the configured Graph: the token goes with them."""
        if "://" in url:
            mine, theirs = urlsplit(self.graph_url), urlsplit(url)
            if (mine.scheme, mine.netloc.lower()) != (theirs.scheme, theirs.netloc.lower()):
                raise ConfigError(f"a Graph link points at {theirs.scheme}://{theirs.netloc}, not at exchange.graph_url "
                                  f"({mine.scheme}://{mine.netloc}); not following it")

    def request(self, method: str, url: str, *, where: str, mailbox: str | None = None,
                allow: Sequence[int] = (), weight: int = 1, **kw: Any) -> httpx.Response:
        """Send one request; 2xx and the ``allow``-ed statuses are returned, other errors raise
        (see :func:`translate`). 429/503 are retried here while the waits fit in ``max_wait_s``."""
        self._check_origin(url)
        waited = 0.0
        refreshed = False
        extra = dict(kw.pop("headers", None) or {})
        while True:
            headers = {"Authorization": f"Bearer {self.token(fresh=False)}", **extra}
            try:
                with self._slot(mailbox, weight):
                    self.requests_sent += 1
                    resp = self.http.request(method, url.lstrip("/") if "://" not in url else url,
                                             headers=headers, **kw)
            except httpx.TransportError as exc:
                raise Transient(f"{where}: {type(exc).__name__}: {str(exc)[:200]}") from None
            if resp.status_code < 400 or resp.status_code in allow:
                return resp
            if resp.status_code == 401 and not refreshed:
                refreshed = True
                self.token(fresh=True)
                continue
            if resp.status_code in (429, 503):
                wait = _retry_after(resp.headers)
                if mailbox is not None:
                    self.limiter.pause(mailbox, wait)
                if waited + wait <= self.max_wait_s:
                    log.info("graph.throttled", where=where, status=resp.status_code, retry_after=wait)
                    time.sleep(wait)
                    waited += wait
                    continue
            raise translate(resp.status_code, resp.headers, _json(resp), where, mailbox)

    def batch(self, requests: Sequence[dict[str, Any]], *, where: str, mailbox: str | None = None
              ) -> list[tuple[int, dict[str, str], Any]]:
        """Send ``requests`` (``{"method", "url", "headers"?, "body"?}``; urls relative to /v1.0) in
        ``$batch`` requests of at most 20; (status, headers, body) per request, in order. A part
        answered 429/503 is sent again in the next batch while the waits fit in ``max_wait_s``."""
        results: list[tuple[int, dict[str, str], Any] | None] = [None] * len(requests)
        todo = list(range(len(requests)))
        waited = 0.0
        while todo:
            retry: list[int] = []
            longest = 0.0
            for start in range(0, len(todo), MAX_BATCH):
                chunk = todo[start:start + MAX_BATCH]
                parts = []
                for n, i in enumerate(chunk):
                    part = {"id": str(n + 1), **requests[i]}
                    part["url"] = "/" + part["url"].lstrip("/")
                    part["headers"] = {"Prefer": IMMUTABLE_IDS, **(part.get("headers") or {})}
                    if "body" in part:
                        part["headers"].setdefault("Content-Type", "application/json")
                    parts.append(part)
                resp = self.request("POST", "$batch", where=where, mailbox=mailbox, json={"requests": parts},
                                    weight=len(parts))
                answers = {str(a.get("id")): a for a in (_json(resp) or {}).get("responses", [])}
                for n, i in enumerate(chunk):
                    a = answers.get(str(n + 1)) or {"status": 500, "headers": {}, "body": None}
                    status, headers = int(a.get("status", 500)), dict(a.get("headers") or {})
                    results[i] = (status, headers, a.get("body"))
                    if status in (429, 503):
                        retry.append(i)
                        longest = max(longest, _retry_after(headers))
            if retry and mailbox is not None:
                self.limiter.pause(mailbox, longest)
            if not retry or waited + longest > self.max_wait_s:
                break
            time.sleep(longest)
            waited += longest
            todo = retry
        return [r if r is not None else (500, {}, None) for r in results]

    def close(self) -> None:
        self.http.close()
        if self._msal_http is not None:
            self._msal_http.close()


def _json(resp: httpx.Response) -> Any:
    try:
        return resp.json() if resp.content else None
    except ValueError:
        return None
