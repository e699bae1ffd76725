"""The HTTP(S) server: SOAP dispatch at /EWS/Exchange.asmx, Basic auth, impersonation, fault
injection and the loopback-only admin API at /_emulator/. The Microsoft Graph front door
(/v1.0/... and the token service) lives in graph_routes; this module only hands it its requests."""

from __future__ import annotations

import base64
import hmac
import importlib
import ipaddress
import json
import logging
import os
import socket
import ssl
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from lxml import etree

from . import graph_routes
from .graph_auth import GraphApps
from .registry import NS_SOAP, OPERATIONS, Context, EwsError, Streaming, t
from .soap import SERVER_VERSION, envelope, error_message, fault, new_response
from .store import Store

log = logging.getLogger("ews_emulator")

EWS_PATH = "/ews/exchange.asmx"
ADMIN_PREFIX = "/_emulator/"
OPERATION_MODULES = ("ews_emulator.folder_ops", "ews_emulator.item_ops", "ews_emulator.misc_ops",
                     "ews_emulator.sync_ops", "ews_emulator.notify_ops")
KNOWN_VERSIONS = {"Exchange2007", "Exchange2007_SP1", "Exchange2010", "Exchange2010_SP1", "Exchange2010_SP2",
                  "Exchange2013", "Exchange2013_SP1", "Exchange2015", "Exchange2015_SP1", "Exchange2016",
                  "V2015_10_05", "V2016_01_06", "V2016_04_13", "V2016_07_13", "V2016_10_10", "V2017_01_07",
                  "V2017_04_14", "V2017_07_11"}
FAULT_KINDS = {"server_busy", "http_500", "http_503", "delay", "drop", "throttle_429"}
EWS_FAULT_KINDS = {"server_busy", "http_500", "http_503", "delay", "drop"}
_PARSER = etree.XMLParser(resolve_entities=False, no_network=True, huge_tree=True, remove_blank_text=False)
_ASPNET_500 = (b"<html><head><title>Runtime Error</title></head><body>"
               b"<h1>Server Error in '/EWS' Application.</h1><h2><i>Runtime Error</i></h2></body></html>")


@dataclass
class EmulatorConfig:
    """Who may connect and act on which mailbox; parsed once at startup."""

    users: dict[str, str] = field(default_factory=dict)           # address -> password
    impersonators: set[str] = field(default_factory=set)               # over every mailbox
    #: impersonator -> the mailboxes it may impersonate (ApplicationImpersonation assigned with a
    #: management scope, ``New-ManagementRoleAssignment -CustomRecipientWriteScope``)
    impersonation_scopes: dict[str, set[str]] = field(default_factory=dict)
    delegates: dict[str, set[str]] = field(default_factory=dict)  # owner -> delegates
    no_auth: bool = False
    extra_mailboxes: set[str] = field(default_factory=set)
    realm: str = "ews-emulator"
    #: --public-folders: the server has a public folder tree every mailbox can use.
    public_folders: bool = False
    graph: GraphApps = field(default_factory=GraphApps)     # Graph app registrations and limits

    @property
    def mailboxes(self) -> set[str]:
        return set(self.users) | self.extra_mailboxes

    @classmethod
    def from_args(cls, users: list[str] = (), impersonators: list[str] = (), delegates: list[str] = (),
                  no_auth: bool = False, mailboxes: list[str] = (), graph_apps: list[str] = (),
                  graph_app_scopes: list[str] = (), graph_token_lifetime: int = 3599,
                  graph_mailbox_concurrency: int = 4, graph_app_certs: list[str] = ()) -> EmulatorConfig:
        """Build from the command-line forms ADDRESS:PASSWORD, OWNER:DELEGATE, TENANT:CLIENT_ID:SECRET
        and CLIENT_ID:MAILBOX."""
        cfg = cls(no_auth=no_auth)
        cfg.graph = GraphApps.from_args(graph_apps, graph_app_scopes, graph_token_lifetime,
                                        graph_mailbox_concurrency, graph_app_certs)
        for spec in users:
            address, sep, password = spec.partition(":")
            if not sep or not address:
                raise ValueError(f"--user {address or spec!r}: expected ADDRESS:PASSWORD")
            cfg.users[address.strip().lower()] = password
        for spec in impersonators:     # ADDRESS (every mailbox) or ADDRESS:TARGET[,TARGET...]
            who, sep, scope = spec.partition(":")
            who = who.strip().lower()
            targets = {a.strip().lower() for a in scope.split(",") if a.strip()}
            if not who or (sep and not targets):
                raise ValueError(f"--impersonator {spec!r}: expected ADDRESS or ADDRESS:MAILBOX[,MAILBOX...]")
            if sep:
                cfg.impersonation_scopes.setdefault(who, set()).update(targets)
            else:
                cfg.impersonators.add(who)
        for spec in delegates:
            owner, sep, delegate = spec.partition(":")
            if not sep or not owner or not delegate:
                raise ValueError(f"--delegate {spec!r}: expected OWNER:DELEGATE")
            cfg.delegates.setdefault(owner.strip().lower(), set()).add(delegate.strip().lower())
        cfg.extra_mailboxes = {a.strip().lower() for a in mailboxes}
        return cfg


@dataclass
class Fault:
    operation: str
    kind: str
    count: int
    back_off_ms: int = 0
    delay_ms: int = 0


class Emulator:
    """A running emulator: config, store, injected faults, request statistics and the HTTP
    server. ``state`` is a free dict for operation modules (e.g. subscriptions)."""

    def __init__(self, config: EmulatorConfig, data_dir: str | os.PathLike, host: str = "127.0.0.1",
                 port: int = 0, tls_cert: str | None = None, tls_key: str | None = None) -> None:
        for mod in OPERATION_MODULES:
            try:
                importlib.import_module(mod)
            except ModuleNotFoundError as e:
                if e.name != mod:
                    raise
        self.config = config
        Path(data_dir).mkdir(parents=True, exist_ok=True)
        self.store = Store(str(Path(data_dir) / "mailboxes.sqlite3"))
        for mailbox in sorted(config.mailboxes):
            self.store.ensure_mailbox(mailbox)
        if config.public_folders:
            self.store.ensure_public_folders()
        self.state: dict[str, Any] = {}
        self.faults: list[Fault] = []
        self.stats: Counter[str] = Counter()
        self.batched = 0      # of the Graph requests in stats, those that came as parts of a $batch
        self.over_concurrency = 0   # Graph requests answered 429 for the app's mailbox concurrency limit
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.httpd = _Server((host, port), _Handler)
        self.httpd.emulator = self
        self.scheme = "http"
        if tls_cert:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(tls_cert, tls_key)
            self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True)
            self.scheme = "https"
        self.host, self.port = self.httpd.server_address[:2]
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host = self.host if ":" not in self.host else f"[{self.host}]"
        return f"{self.scheme}://{host}:{self.port}/EWS/Exchange.asmx"

    @property
    def graph_url(self) -> str:
        """The Graph front door's base (``.../v1.0``); the token service is ``{base}/{tenant}/oauth2/v2.0/token``."""
        return self.url.rsplit("/EWS/", 1)[0] + "/v1.0"

    def serve_forever(self) -> None:
        print(f"EWS emulator listening on {self.url}", flush=True)
        print(f"Graph front door at {self.graph_url}", flush=True)
        try:
            self.httpd.serve_forever(poll_interval=0.2)
        finally:
            self.httpd.server_close()

    def start(self) -> int:
        """Serve in a background thread; returns the bound port."""
        self._thread = threading.Thread(target=self.serve_forever, name="ews-emulator", daemon=True)
        self._thread.start()
        return self.port

    def stop(self) -> None:
        """Stop serving and wait for the server thread (open streaming responses are told to end)."""
        self.stopping.set()
        self.httpd.shutdown()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self.httpd.server_close()
        self.store.close()

    # -- faults -----------------------------------------------------------------------------
    def add_fault(self, spec: dict) -> Fault:
        kind = spec.get("kind")
        if kind not in FAULT_KINDS:
            raise ValueError(f"fault kind {kind!r} is not one of {sorted(FAULT_KINDS)}")
        operation = str(spec.get("operation") or "*")
        allowed = graph_routes.GRAPH_FAULT_KINDS if operation.startswith("graph:") else EWS_FAULT_KINDS
        if kind not in allowed:
            raise ValueError(f"fault kind {kind!r} does not apply to {operation!r}; use one of {sorted(allowed)}")
        f = Fault(operation=str(spec.get("operation") or "*"), kind=kind, count=int(spec.get("count", 1)),
                  back_off_ms=int(spec.get("back_off_ms", 0) or 0), delay_ms=int(spec.get("delay_ms", 0) or 0))
        with self.lock:
            self.faults.append(f)
        return f

    def take_fault(self, operation: str, wildcard: str = "*") -> Fault | None:
        """Consume one armed fault for ``operation`` (or for ``wildcard``: ``*`` covers the EWS
        operations, ``graph:*`` the Graph ones)."""
        if not self.faults:
            return None
        with self.lock:
            for f in self.faults:
                if f.count > 0 and f.operation in (wildcard, operation):
                    f.count -= 1
                    if f.count <= 0:
                        self.faults.remove(f)
                    return f
        return None


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128
    emulator: Emulator

    def handle_error(self, request, client_address) -> None:  # noqa: ANN001
        log.debug("connection error from %s", client_address, exc_info=True)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "Microsoft-IIS/10.0"
    sys_version = ""
    # Headers and body go out in two writes: with Nagle on, a small reply's body waited for the
    # client's delayed ACK of the headers (~40 ms per small FindItem/GetItem reply); TCP_NODELAY
    # sends it at once.
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        log.debug("%s " + format, self.address_string(), *args)

    @property
    def emu(self) -> Emulator:
        return self.server.emulator  # type: ignore[attr-defined]

    # -- plumbing ---------------------------------------------------------------------------
    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            parts = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    self.rfile.readline()
                    break
                parts.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(parts)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _send(self, status: int, body: bytes, content_type: str = "text/xml; charset=utf-8",
              headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def _drop(self) -> None:
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    # -- HTTP verbs -------------------------------------------------------------------------
    def do_GET(self) -> None:
        if self.path.startswith(ADMIN_PREFIX):
            return self._admin("GET")
        if graph_routes.handles(self.path):
            return graph_routes.serve(self, "GET")
        if self.path.lower().split("?")[0] == EWS_PATH:
            # Exchange answers GET on the endpoint after auth; clients use it as a probe.
            if self._authenticate() is False:
                return
            return self._send(200, b"<html><body>EWS emulator</body></html>", "text/html")
        self._send(404, b"Not Found", "text/plain")

    def do_DELETE(self) -> None:
        if self.path.startswith(ADMIN_PREFIX):
            return self._admin("DELETE")
        if graph_routes.handles(self.path):
            return graph_routes.serve(self, "DELETE")
        self._send(404, b"Not Found", "text/plain")

    def do_PATCH(self) -> None:
        if graph_routes.handles(self.path):
            return graph_routes.serve(self, "PATCH")
        self._read_body()
        self._send(404, b"Not Found", "text/plain")

    def do_POST(self) -> None:
        if self.path.startswith(ADMIN_PREFIX):
            return self._admin("POST")
        if graph_routes.handles(self.path):
            return graph_routes.serve(self, "POST")
        if self.path.lower().split("?")[0] != EWS_PATH:
            self._read_body()
            return self._send(404, b"Not Found", "text/plain")
        body = self._read_body()
        caller = self._authenticate()
        if caller is False:
            return
        self._soap(body, caller)

    def _authenticate(self) -> str | None | bool:
        """The caller's address (None with --no-auth), or False after answering 401."""
        cfg = self.emu.config
        if cfg.no_auth:
            return None
        header = self.headers.get("Authorization", "")
        if header[:6].lower() == "basic ":
            try:
                user, _, password = base64.b64decode(header[6:].strip()).decode("utf-8").partition(":")
            except (ValueError, UnicodeDecodeError):
                user, password = "", ""
            user = user.strip().lower()
            if "\\" in user:  # DOMAIN\user forms map to the address part after the backslash
                user = user.split("\\", 1)[1]
            expected = cfg.users.get(user)
            if expected is not None and hmac.compare_digest(expected.encode(), password.encode()):
                return user
        self._send(401, b"401 - Unauthorized: Access is denied due to invalid credentials.", "text/html",
                   {"WWW-Authenticate": f'Basic realm="{cfg.realm}"'})
        return False

    # -- admin API --------------------------------------------------------------------------
    def _admin(self, method: str) -> None:
        body = self._read_body()
        try:
            loopback = ipaddress.ip_address(self.client_address[0].split("%")[0]).is_loopback
        except ValueError:
            loopback = False
        if not loopback:
            return self._json(403, {"error": "the admin API only answers loopback clients"})
        path = self.path.split("?")[0].rstrip("/")
        emu = self.emu
        if path == "/_emulator/faults" and method == "POST":
            try:
                spec = json.loads(body or b"{}")
                f = emu.add_fault(spec)
            except (ValueError, TypeError) as e:
                return self._json(400, {"error": str(e)})
            return self._json(200, {"ok": True, "fault": vars(f)})
        if path == "/_emulator/faults" and method == "DELETE":
            with emu.lock:
                emu.faults.clear()
            return self._json(200, {"ok": True})
        if path == "/_emulator/faults" and method == "GET":
            with emu.lock:
                return self._json(200, {"faults": [vars(f) for f in emu.faults]})
        if path == "/_emulator/stats" and method == "GET":
            with emu.lock:
                return self._json(200, {"requests": dict(emu.stats), "graph_batch_parts": emu.batched,
                                        "graph_over_concurrency": emu.over_concurrency})
        if path == "/_emulator/stats/reset" and method == "POST":
            with emu.lock:
                emu.stats.clear()
                emu.batched = 0
                emu.over_concurrency = 0
            return self._json(200, {"ok": True})
        return self._json(404, {"error": f"no admin endpoint {method} {path}"})

    def _json(self, status: int, obj: Any) -> None:
        self._send(status, json.dumps(obj).encode(), "application/json")

    # -- SOAP -------------------------------------------------------------------------------
    def _soap(self, body: bytes, caller: str | None) -> None:
        emu = self.emu
        try:
            root = etree.fromstring(body, _PARSER)
        except etree.XMLSyntaxError as e:
            return self._fault(EwsError("ErrorSchemaValidation", f"The request failed schema validation: {e}"))
        soap_body = root.find(f"{{{NS_SOAP}}}Body")
        request = None
        if soap_body is not None:
            request = next((c for c in soap_body if isinstance(c.tag, str)), None)
        if request is None:
            return self._fault(EwsError("ErrorSchemaValidation", "The request failed schema validation: no body."))
        op = etree.QName(request).localname
        with emu.lock:
            emu.stats[op] += 1
        f = emu.take_fault(op)
        if f is not None:
            if f.kind == "drop":
                return self._drop()
            if f.kind == "delay":
                time.sleep(f.delay_ms / 1000.0)
            elif f.kind == "server_busy":
                return self._fault(EwsError(
                    "ErrorServerBusy", "The server cannot service this request right now. Try again later.",
                    {"BackOffMilliseconds": str(f.back_off_ms)}))
            elif f.kind in ("http_500", "http_503"):
                # back_off_ms, when given, is sent as Retry-After (whole seconds, at least 1).
                headers = {"Retry-After": str(max(1, round(f.back_off_ms / 1000)))} if f.back_off_ms else {}
                if f.kind == "http_500":
                    return self._send(500, _ASPNET_500, "text/html", headers)
                return self._send(503, b"<html><body>Service Unavailable</body></html>", "text/html", headers)
        header = root.find(f"{{{NS_SOAP}}}Header")
        version = "Exchange2016"
        mailbox = caller
        if header is not None:
            rsv = header.find(t("RequestServerVersion"))
            if rsv is not None:
                version = rsv.get("Version") or version
                if version not in KNOWN_VERSIONS:
                    return self._fault(EwsError(
                        "ErrorInvalidServerVersion", "The specified server version is invalid."))
            imp = header.find(t("ExchangeImpersonation"))
            if imp is not None:
                try:
                    mailbox = self._impersonate(caller, imp)
                except EwsError as e:
                    return self._fault(e)
        handler = OPERATIONS.get(op)
        if handler is None:
            return self._fault(EwsError("ErrorSchemaValidation", f"The request failed schema validation: the"
                                                                  f" operation {op} is not supported by the emulator."))
        ctx = Context(store=emu.store, caller=caller, mailbox=mailbox, request_version=version, app=emu)
        try:
            result = handler(ctx, request)
        except EwsError as e:
            if e.code == "ErrorSchemaValidation":
                return self._fault(e)
            resp, messages = new_response(op)
            error_message(messages, op, e)
            result = resp
        except Exception:  # noqa: BLE001 - one broken request must not kill the server
            log.exception("operation %s failed", op)
            resp, messages = new_response(op)
            error_message(messages, op, EwsError("ErrorInternalServerError",
                                                 "An internal server error occurred. The operation failed."))
            result = resp
        if isinstance(result, Streaming):
            return self._stream(result)
        self._send(200, envelope(result))

    def _impersonate(self, caller: str | None, imp: etree._Element) -> str:
        sid = imp.find(t("ConnectingSID"))
        target = None
        if sid is not None:
            for name in ("PrimarySmtpAddress", "SmtpAddress", "PrincipalName"):
                target = sid.findtext(t(name))
                if target:
                    break
        if not target:
            raise EwsError("ErrorImpersonationFailed", "Impersonation failed: no ConnectingSID address.")
        target = target.strip().lower()
        cfg = self.emu.config
        allowed = (caller in cfg.impersonators or caller == target
                   or target in cfg.impersonation_scopes.get(caller or "", set()))
        if not cfg.no_auth and not allowed:   # also a target outside the impersonator's scope
            raise EwsError("ErrorImpersonateUserDenied",
                           "The account does not have permission to impersonate the requested user.")
        if target not in cfg.mailboxes:
            raise EwsError("ErrorNonExistentMailbox",
                           f"The SMTP address has no mailbox associated with it: {target}")
        return target

    def _fault(self, err: EwsError) -> None:
        self._send(500, fault(err))

    def _stream(self, result: Streaming) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/xml; charset=utf-8")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        try:
            for elem in result.chunks:
                data = envelope(elem)
                self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
                self.wfile.flush()
                if self.emu.stopping.is_set():
                    break
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError, OSError):
            self.close_connection = True
        finally:
            close = getattr(result.chunks, "close", None)
            if close is not None:
                close()


def server_version_info() -> dict[str, str]:
    """The ServerVersionInfo attributes this emulator reports."""
    return dict(SERVER_VERSION)
