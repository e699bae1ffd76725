"""The Microsoft Graph v1.0 front door (contacts and contact folders) over the same store as EWS.

Routes (``{u}`` is the mailbox's SMTP address or its user id, ``{f}`` a folder id or ``contacts``):

    POST /{tenant}/oauth2/v2.0/token                         client credentials -> bearer token
    GET  /{tenant}/v2.0/.well-known/openid-configuration     OIDC discovery (MSAL reads it)
    GET               /v1.0/users/{u}                       (id, mail, userPrincipalName, displayName)
    GET|POST          /v1.0/users/{u}/contactFolders        (children of the default Contacts folder)
    GET|PATCH|DELETE  /v1.0/users/{u}/contactFolders/{f}
    GET|POST          /v1.0/users/{u}/contactFolders/{f}/childFolders   (nests: .../childFolders/{g}/...)
    GET|POST          /v1.0/users/{u}/contactFolders/{f}/contacts
    GET               /v1.0/users/{u}/contactFolders/{f}/contacts/delta
    GET|PATCH|DELETE  /v1.0/users/{u}/contactFolders/{f}/contacts/{c}
    GET|POST          /v1.0/users/{u}/contacts              (the default Contacts folder)
    GET|PATCH|DELETE  /v1.0/users/{u}/contacts/{c}          (a contact in any folder of the mailbox)
    POST              /v1.0/$batch

Every Graph request is counted in the admin stats as ``graph:<operation>`` (see ``OPERATIONS``),
a ``$batch`` once as ``graph:batch`` and each of its parts under its own operation (the stats'
``graph_batch_parts`` says how many of the counted requests were such parts, and
``graph_over_concurrency`` how many were answered 429 for the mailbox concurrency limit),
may meet an injected fault for that operation (or ``graph:*``), and holds one of the
app's ``--graph-mailbox-concurrency`` (default 4) slots on the mailbox while it runs.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import threading
import time
import uuid
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit

from .contact_xml import ext_key
from .graph_auth import AuthError, aad_error_body, check_token, openid_configuration, signing_key, token_request
from .graph_json import (
    CONTACT_PROPERTIES,
    FOLDER_PROPERTIES,
    GraphError,
    bad_request,
    contact_changes,
    contact_json,
    ext_properties,
    folder_json,
    from_graph_id,
    new_contact_data,
    parse_ext_id,
    read_fields,
    to_graph_id,
    updates_element,
)
from .graph_query import Evaluator, ExtIdValue, parse_expand, parse_filter, parse_orderby, parse_select, sort_objects, unsupported
from .registry import EwsError

log = logging.getLogger("ews_emulator.graph")

GRAPH_FAULT_KINDS = {"throttle_429", "http_503", "delay", "drop"}
OPERATIONS = ("graph:token", "graph:get user", "graph:list contactFolders", "graph:get contactFolder",
              "graph:create contactFolder", "graph:update contactFolder", "graph:delete contactFolder",
              "graph:list contacts",
              "graph:get contact", "graph:create contact", "graph:update contact", "graph:delete contact",
              "graph:delta", "graph:batch")
MAX_BATCH = 20
DEFAULT_PAGE = 10
MAX_PAGE = 1000
JSON_TYPE = "application/json;odata.metadata=minimal;odata.streaming=true;IEEE754Compatible=false;charset=utf-8"
_CONTACT_CLASS = "IPM.Contact"
_KNOWN_OPTIONS = {"$select", "$filter", "$top", "$skip", "$orderby", "$expand", "$count", "$skiptoken",
                  "$deltatoken", "$search", "$format"}


class _Drop(Exception):
    """An injected ``drop`` fault: close the connection without an answer."""


@dataclass
class GraphRequest:
    method: str
    path: str                              # after /v1.0, without the query string
    query: dict[str, str]
    headers: dict[str, str]                # lower-case names
    body: Any
    base: str                              # scheme://host:port of this emulator
    claims: dict | None
    raw_query: str = ""
    in_batch: bool = False


@dataclass
class GraphResponse:
    status: int
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)


class GraphState:
    """Per-emulator Graph state: in-flight requests per (app, mailbox)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.inflight: dict[tuple[str, str], int] = {}


def _state(emu) -> GraphState:
    st = emu.state.get("graph")
    if st is None:
        with emu.lock:
            st = emu.state.setdefault("graph", GraphState())
    return st


def handles(path: str) -> bool:
    """Whether ``path`` (the request target) belongs to the Graph front door or its token service."""
    p = path.split("?", 1)[0].lower()
    if p == "/v1.0" or p.startswith("/v1.0/"):
        return True
    parts = p.strip("/").split("/")
    return len(parts) >= 2 and (parts[1:] == ["oauth2", "v2.0", "token"]
                                or parts[1:] == ["v2.0", ".well-known", "openid-configuration"]
                                or parts[1:] == ["oauth2", "v2.0", "authorize"])


# -- HTTP entry point ---------------------------------------------------------------------------
def serve(handler, method: str) -> None:
    """Answer one HTTP request for the Graph front door (``handler`` is the server's request handler)."""
    emu = handler.emu
    body = handler._read_body()
    host = handler.headers.get("Host") or f"{emu.host}:{emu.port}"
    base = f"{emu.scheme}://{host}"
    split = urlsplit(handler.path)
    path = unquote(split.path)
    lower = path.lower()
    if not (lower == "/v1.0" or lower.startswith("/v1.0/")):
        return _identity(handler, emu, method, path, body, base)
    request_id = str(uuid.uuid4())
    client_request_id = handler.headers.get("client-request-id") or request_id
    try:
        claims = _authenticate(emu, handler.headers.get("Authorization", ""))
        query = _parse_query(split.query)
        parsed = None
        if body:
            try:
                parsed = json.loads(body)
            except ValueError:
                raise bad_request("Unable to read JSON request payload. Please ensure Content-Type header is set"
                                  " and payload is of valid JSON format.") from None
        req = GraphRequest(method, path[len("/v1.0"):] or "/", query,
                           {k.lower(): v for k, v in handler.headers.items()}, parsed, base, claims,
                           raw_query=split.query)
        if req.path.rstrip("/").lower() == "/$batch":
            resp = _batch(emu, req)
        else:
            resp = dispatch(emu, req)
    except _Drop:
        return handler._drop()
    except GraphError as e:
        resp = error_response(e)
    _send(handler, resp, request_id, client_request_id)


def _send(handler, resp: GraphResponse, request_id: str, client_request_id: str) -> None:
    if isinstance(resp.body, dict) and "error" in resp.body and isinstance(resp.body["error"], dict):
        resp.body["error"].setdefault("innerError", {}).update(
            {"date": _now(), "request-id": request_id, "client-request-id": client_request_id})
    headers = {"request-id": request_id, "client-request-id": client_request_id, "OData-Version": "4.0",
               "Cache-Control": "no-cache", **resp.headers}
    if resp.body is None:
        handler.send_response(resp.status)
        for k, v in headers.items():
            handler.send_header(k, v)
        handler.send_header("Content-Length", "0")
        handler.end_headers()
        return
    handler._send(resp.status, json.dumps(resp.body, ensure_ascii=False).encode(), JSON_TYPE, headers)


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S")


def error_response(e: GraphError) -> GraphResponse:
    return GraphResponse(e.status, {"error": {"code": e.code, "message": e.message, "innerError": {}}},
                         dict(e.headers))


def _parse_query(raw: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in parse_qsl(raw, keep_blank_values=True):
        key = k.strip()
        if key.startswith("$"):
            key = key.lower()
        elif "$" + key.lower() in _KNOWN_OPTIONS:   # Graph v1.0 accepts system options without the $
            key = "$" + key.lower()
        if key in out:
            raise bad_request(f"Query option '{key}' was specified more than once, but it must be specified"
                              f" at most once.")
        out[key] = v
    for key in out:
        if key.startswith("$") and key not in _KNOWN_OPTIONS:
            raise bad_request(f"Query option '{key}' is not allowed. To allow it, set the 'AllowedQueryOptions'"
                              f" property on EnableQueryAttribute or QueryValidationSettings.")
    return out


# -- identity platform --------------------------------------------------------------------------
def _identity(handler, emu, method: str, path: str, body: bytes, base: str) -> None:
    parts = path.strip("/").split("/")
    tenant = parts[0]
    apps = emu.config.graph
    rest = [p.lower() for p in parts[1:]]

    def send(status: int, obj: dict) -> None:
        handler._send(status, json.dumps(obj).encode(), "application/json; charset=utf-8",
                      {"Cache-Control": "no-store, no-cache", "Pragma": "no-cache"})

    if rest == ["v2.0", ".well-known", "openid-configuration"] and method == "GET":
        if tenant.lower() not in apps.tenants:
            err = AuthError(400, "invalid_tenant", f"AADSTS90002: Tenant '{tenant}' not found. Check to make sure"
                                                   f" you have the correct tenant ID and are signing into the"
                                                   f" correct cloud.", 90002)
            return send(400, aad_error_body(err))
        return send(200, openid_configuration(base, tenant))
    if rest == ["oauth2", "v2.0", "token"] and method == "POST":
        with emu.lock:
            emu.stats["graph:token"] += 1
        form = dict(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))
        basic = None
        auth = handler.headers.get("Authorization", "")
        if auth[:6].lower() == "basic ":
            try:
                user, _, pw = base64.b64decode(auth[6:].strip()).decode().partition(":")
                basic = (unquote(user), unquote(pw))
            except (ValueError, UnicodeDecodeError):
                basic = None
        try:
            return send(200, token_request(signing_key(emu.store), apps, tenant, form, basic,
                                           endpoint=f"{base}/{tenant}/oauth2/v2.0/token"))
        except AuthError as e:
            return send(e.status, aad_error_body(e))
    err = AuthError(400, "invalid_request", f"AADSTS900561: The endpoint only accepts the emulator's"
                                            f" client-credentials flow; {method} {path} is not supported.", 900561)
    return send(400, aad_error_body(err))


def _authenticate(emu, header: str) -> dict:
    cfg = emu.config
    if cfg.no_auth:
        return {"appid": "anonymous", "tid": "", "no_auth": True}
    token = header[7:].strip() if header[:7].lower() == "bearer " else ""
    try:
        return check_token(signing_key(emu.store), cfg.graph, token)
    except AuthError as e:
        headers = {}
        if e.status == 401:
            headers["WWW-Authenticate"] = ('Bearer realm="", authorization_uri="https://login.microsoftonline.com/'
                                           'common/oauth2/authorize", client_id="00000003-0000-0000-c000-'
                                           '000000000000"')
        raise GraphError(e.status, e.error, e.description, headers) from None


# -- dispatch -----------------------------------------------------------------------------------
def mailbox_user_id(mailbox: str) -> str:
    """The stable user id (a GUID) the emulator gives a mailbox; accepted wherever {u} is."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"ews-emulator:mailbox:{mailbox.lower()}"))


def _resolve_user(emu, segment: str) -> str:
    seg = segment.strip().lower()
    boxes = emu.config.mailboxes
    if seg in boxes:
        return seg
    for box in boxes:
        if mailbox_user_id(box) == seg:
            return box
    raise GraphError(404, "ErrorInvalidUser", f"The requested user '{segment}' is invalid.")


@dataclass
class _Route:
    op: str
    mailbox: str
    user_seg: str
    folder_chain: list[str]           # folder ids / well-known names along the path
    contact_id: str | None
    kind: str                          # folders | folder | childFolders | contacts | contact | delta


def _route(emu, req: GraphRequest) -> _Route:
    segs = [s for s in req.path.split("/") if s]
    low = [s.lower() for s in segs]
    if not segs:
        raise bad_request("Invalid request.")
    if low[0] == "me":
        raise bad_request("/me request is only valid with delegated authentication flow.")
    if low[0] != "users" or len(segs) < 2:
        raise bad_request(f"Resource not found for the segment '{segs[-1]}'.")
    user_seg = segs[1]
    mailbox = _resolve_user(emu, user_seg)
    if len(segs) == 2:
        return _Route("graph:get user" if req.method == "GET" else "", mailbox, user_seg, [], None, "user")
    rest, lrest = segs[2:], low[2:]
    m = req.method
    chain: list[str] = []
    if lrest[0] == "contacts":
        tail, ltail = rest[1:], lrest[1:]      # chain stays empty: the default folder / any folder
    elif lrest[0] == "contactfolders":
        if len(rest) == 1:
            return _Route({"GET": "graph:list contactFolders", "POST": "graph:create contactFolder"}.get(m, ""),
                          mailbox, user_seg, [], None, "folders")
        chain = [rest[1]]
        i = 2
        while i + 1 < len(rest) and lrest[i] == "childfolders":
            chain.append(rest[i + 1])
            i += 2
        tail, ltail = rest[i:], lrest[i:]
        if not tail:
            return _Route({"GET": "graph:get contactFolder", "PATCH": "graph:update contactFolder",
                           "DELETE": "graph:delete contactFolder"}.get(m, ""), mailbox, user_seg, chain, None,
                          "folder")
        if ltail == ["childfolders"]:
            return _Route({"GET": "graph:list contactFolders", "POST": "graph:create contactFolder"}.get(m, ""),
                          mailbox, user_seg, chain, None, "childFolders")
        if ltail[0] != "contacts":
            raise bad_request(f"Resource not found for the segment '{tail[0]}'.")
        tail, ltail = tail[1:], ltail[1:]
    else:
        raise bad_request(f"Resource not found for the segment '{rest[0]}'.")
    if not tail:
        return _Route({"GET": "graph:list contacts", "POST": "graph:create contact"}.get(m, ""), mailbox, user_seg,
                      chain, None, "contacts")
    if ltail in (["delta"], ["microsoft.graph.delta"], ["microsoft.graph.delta()"], ["delta()"]):
        if not chain:
            raise bad_request("Change tracking is available on /contactFolders/{id}/contacts/delta.")
        return _Route("graph:delta" if m == "GET" else "", mailbox, user_seg, chain, None, "delta")
    if len(tail) == 1:
        return _Route({"GET": "graph:get contact", "PATCH": "graph:update contact",
                       "DELETE": "graph:delete contact"}.get(m, ""), mailbox, user_seg, chain, tail[0], "contact")
    raise bad_request(f"Resource not found for the segment '{tail[1]}'.")


def dispatch(emu, req: GraphRequest) -> GraphResponse:
    """Route, authorize, throttle, inject faults and run one Graph request (also a batch part)."""
    try:
        route = _route(emu, req)
        if not route.op:
            raise GraphError(405, "Request_BadRequest", "Specified HTTP method is not allowed for the request"
                                                        " target.")
        claims = req.claims or {}
        app = str(claims.get("appid", "")).lower()
        if not claims.get("no_auth") and not emu.config.graph.may_use(app, route.mailbox):
            raise GraphError(403, "ErrorAccessDenied", "Access is denied. Check credentials and try again.")
    except GraphError as e:
        return error_response(e)
    st = _state(emu)
    key = (app, route.mailbox)
    limit = emu.config.graph.mailbox_concurrency
    with st.lock:
        with emu.lock:
            emu.stats[route.op] += 1
            if req.in_batch:
                emu.batched += 1
        if st.inflight.get(key, 0) >= limit:
            with emu.lock:
                emu.over_concurrency += 1
            return GraphResponse(429, {"error": {"code": "ApplicationThrottled",
                                                 "message": "Application is over its MailboxConcurrency limit.",
                                                 "innerError": {}}}, {"Retry-After": "1"})
        st.inflight[key] = st.inflight.get(key, 0) + 1
    try:
        fault = _fault(emu, route.op)
        if fault is not None:
            return fault
        return _run(emu, req, route)
    except GraphError as e:
        return error_response(e)
    except EwsError as e:
        return error_response(_from_ews(e))
    except _Drop:
        raise
    except Exception:  # noqa: BLE001 - one broken request must not kill the server
        log.exception("graph %s %s failed", req.method, req.path)
        return error_response(GraphError(500, "InternalServerError", "An internal server error occurred."))
    finally:
        with st.lock:
            st.inflight[key] -= 1
            if st.inflight[key] <= 0:
                del st.inflight[key]


def _fault(emu, op: str) -> GraphResponse | None:
    f = emu.take_fault(op, wildcard="graph:*")
    if f is None:
        return None
    retry = str(max(1, -(-f.back_off_ms // 1000))) if f.back_off_ms else "1"
    if f.kind == "drop":
        raise _Drop()
    if f.kind == "delay":
        time.sleep(f.delay_ms / 1000.0)
        return None
    if f.kind == "throttle_429":
        return GraphResponse(429, {"error": {"code": "TooManyRequests", "message": "Please retry again later.",
                                             "innerError": {}}}, {"Retry-After": retry})
    if f.kind == "http_503":
        return GraphResponse(503, {"error": {"code": "ServiceUnavailable",
                                             "message": "The service is temporarily unavailable. Please retry"
                                                        " later.", "innerError": {}}}, {"Retry-After": retry})
    return None


def _from_ews(e: EwsError) -> GraphError:
    status = {"ErrorItemNotFound": 404, "ErrorFolderNotFound": 404, "ErrorAccessDenied": 403,
              "ErrorNonExistentMailbox": 404, "ErrorIrresolvableConflict": 412, "ErrorFolderExists": 409,
              "ErrorServerBusy": 429}.get(e.code, 400)
    code = "ErrorItemNotFound" if e.code == "ErrorFolderNotFound" else e.code
    return GraphError(status, code, e.text)


# -- resources ----------------------------------------------------------------------------------
def _not_found() -> GraphError:
    return GraphError(404, "ErrorItemNotFound", "The specified object was not found in the store.")


def _check_id(graph_id: str) -> str:
    store_id = from_graph_id(graph_id)
    try:
        base64.b64decode(store_id, validate=True)
    except ValueError:
        raise GraphError(400, "ErrorInvalidIdMalformed", "Id is malformed.") from None
    return store_id


def _is_contact_folder(folder: dict) -> bool:
    return (folder.get("folder_class") or "").startswith("IPF.Contact") or folder.get("distinguished") == "contacts"


def _folder(emu, mailbox: str, chain: list[str]) -> dict:
    parent = None
    folder = None
    for fid in chain:
        if fid.lower() == "contacts" and parent is None:
            folder = emu.store.distinguished_folder(mailbox, "contacts")
        else:
            folder = emu.store.get_folder(_check_id(fid))
        if folder is None or folder["mailbox"] != mailbox or not _is_contact_folder(folder):
            raise _not_found()
        if parent is not None and folder["parent_id"] != parent["id"]:
            raise _not_found()
        parent = folder
    if folder is None:
        raise _not_found()
    return folder


def _prefer(req: GraphRequest) -> dict[str, str]:
    out: dict[str, str] = {}
    for part in req.headers.get("prefer", "").split(","):
        k, _, v = part.strip().partition("=")
        if k:
            out[k.strip().lower()] = v.strip().strip('"')
    return out


def _applied(req: GraphRequest, extra: list[str] = ()) -> dict[str, str]:
    prefs = list(extra)
    if _prefer(req).get("idtype", "").lower() == "immutableid":
        prefs.append('IdType="ImmutableId"')
    return {"Preference-Applied": ", ".join(prefs)} if prefs else {}


def _int_option(req: GraphRequest, name: str, default: int | None) -> int | None:
    raw = req.query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise bad_request(f"Invalid value '{raw}' for query option '{name}'.") from None
    if value < 0:
        raise bad_request(f"Invalid value '{raw}' for query option '{name}'; it must be non-negative.")
    return value


def _run(emu, req: GraphRequest, route: _Route) -> GraphResponse:
    m = req.method
    if route.kind == "user":
        user = {"id": mailbox_user_id(route.mailbox), "mail": route.mailbox, "userPrincipalName": route.mailbox,
                "displayName": route.mailbox.split("@", 1)[0]}
        return _one(req, user, ["id", "mail", "userPrincipalName", "displayName"], "microsoft.graph.user")
    if route.kind == "folders" or route.kind == "childFolders":
        parent = _folder(emu, route.mailbox, route.folder_chain or ["contacts"])
        if m == "GET":
            return _list_folders(emu, req, route, parent)
        return _create_folder(emu, req, route, parent)
    if route.kind == "folder":
        folder = _folder(emu, route.mailbox, route.folder_chain)
        if m == "GET":
            return _one(req, folder_json(folder), FOLDER_PROPERTIES, "microsoft.graph.contactFolder")
        if m == "PATCH":
            return _update_folder(emu, req, folder)
        return _delete_folder(emu, folder)
    if route.kind == "delta":
        return _delta(emu, req, route, _folder(emu, route.mailbox, route.folder_chain))
    if route.kind == "contacts":
        folder = _folder(emu, route.mailbox, route.folder_chain or ["contacts"])
        if m == "GET":
            return _list_contacts(emu, req, route, folder)
        return _create_contact(emu, req, folder)
    # /contacts/{id} finds a contact in any folder of the mailbox; under a folder, in that folder only.
    folder = _folder(emu, route.mailbox, route.folder_chain) if route.folder_chain else None
    item = _contact(emu, route.mailbox, route.contact_id, folder)
    if m == "GET":
        return _get_contact(req, item)
    if m == "PATCH":
        return _update_contact(emu, req, item["id"])
    return _delete_contact(emu, req, item["id"])


def _one(req: GraphRequest, obj: dict, allowed: list[str], type_name: str, status: int = 200) -> GraphResponse:
    for k in req.query:
        if k not in ("$select", "$expand"):
            raise bad_request(f"Query option '{k}' is not allowed on a single entity.")
    select = parse_select(req.query.get("$select"), allowed, type_name)
    return GraphResponse(status, _project(obj, select), _applied(req))


def _project(obj: dict, select: list[str] | None) -> dict:
    if select is None:
        return obj
    keep = {"@odata.etag", "id", "singleValueExtendedProperties", *select}
    return {k: v for k, v in obj.items() if k in keep}


def _page_links(req: GraphRequest, total: int, skip: int, top: int) -> dict:
    if skip + top >= total:
        return {}
    query = dict(req.query)
    query["$skip"] = str(skip + top)
    query["$top"] = str(top)
    return {"@odata.nextLink": f"{req.base}/v1.0{quote(req.path)}?{urlencode(query, quote_via=quote, safe='$')}"}


# -- folders ------------------------------------------------------------------------------------
def _list_folders(emu, req: GraphRequest, route: _Route, parent: dict) -> GraphResponse:
    select = parse_select(req.query.get("$select"), FOLDER_PROPERTIES, "microsoft.graph.contactFolder")
    order = parse_orderby(req.query.get("$orderby"), FOLDER_PROPERTIES)
    if "$expand" in req.query:
        raise bad_request("$expand is not supported on contactFolders by the emulator.")
    folders = [folder_json(f) for f in emu.store.child_folders(parent["id"]) if _is_contact_folder(f)]
    if req.query.get("$filter"):
        tree = parse_filter(req.query["$filter"])
        ev = Evaluator(_resolver(FOLDER_PROPERTIES))
        folders = [f for f in folders if ev.test(tree, f, {})]
    sort_objects(folders, order)
    top = min(_int_option(req, "$top", DEFAULT_PAGE) or DEFAULT_PAGE, MAX_PAGE)
    skip = _int_option(req, "$skip", 0)
    page = folders[skip:skip + top]
    body = {"@odata.context": f"{req.base}/v1.0/$metadata#users('{route.user_seg}')/contactFolders",
            "value": [_project(f, select) for f in page], **_page_links(req, len(folders), skip, top)}
    return GraphResponse(200, body, _applied(req))


def _resolver(allowed: list[str]):
    lookup = {p.lower(): p for p in allowed}

    def resolve(obj: dict, name: str) -> Any:
        prop = lookup.get(name.lower())
        if prop is None:
            raise bad_request(f"Could not find a property named '{name}'.", "RequestBroker--ParseUri")
        return obj.get(prop)
    return resolve


def _folder_name(body: Any) -> str:
    if not isinstance(body, dict):
        raise bad_request("The request body must be a JSON object.", "RequestBodyRead")
    for k in body:
        if k not in ("displayName", "parentFolderId", "id") and not k.startswith("@odata."):
            raise bad_request(f"The property '{k}' does not exist on type 'microsoft.graph.contactFolder'.",
                              "RequestBodyRead")
    name = body.get("displayName")
    if not isinstance(name, str) or not name.strip():
        raise bad_request("The displayName of a folder can't be empty.", "ErrorInvalidParameter")
    return name


def _create_folder(emu, req: GraphRequest, route: _Route, parent: dict) -> GraphResponse:
    name = _folder_name(req.body)
    with emu.store.write() as tx:
        if any(f["display_name"].lower() == name.lower() for f in emu.store.child_folders(parent["id"])):
            raise GraphError(409, "ErrorFolderExists", "A folder with the specified name already exists.")
        folder = tx.insert_folder(route.mailbox, parent["id"], name, "IPF.Contact")
    return GraphResponse(201, folder_json(folder), _applied(req))


def _update_folder(emu, req: GraphRequest, folder: dict) -> GraphResponse:
    name = _folder_name(req.body)
    if folder.get("distinguished"):
        raise GraphError(403, "ErrorAccessDenied", "Access is denied. Check credentials and try again.")
    with emu.store.write() as tx:
        siblings = emu.store.child_folders(folder["parent_id"]) if folder.get("parent_id") else []
        if any(f["id"] != folder["id"] and f["display_name"].lower() == name.lower() for f in siblings):
            raise GraphError(409, "ErrorFolderExists", "A folder with the specified name already exists.")
        tx.update_folder(folder, display_name=name)
    return GraphResponse(200, folder_json(emu.store.get_folder(folder["id"])), _applied(req))


def _delete_folder(emu, folder: dict) -> GraphResponse:
    if folder.get("distinguished"):
        raise GraphError(403, "ErrorDeleteDistinguishedFolder", "Distinguished folders cannot be deleted.")
    with emu.store.write() as tx:
        tx.delete_folder(folder)
    return GraphResponse(204)


# -- contacts -----------------------------------------------------------------------------------
class _Contact:
    """A stored contact with its Graph views computed on demand (filters on extended properties
    need no XML)."""

    def __init__(self, item: dict) -> None:
        self.item = item
        self._fields: dict | None = None
        self._json: dict | None = None
        self._ext: list[dict] | None = None

    @property
    def fields(self) -> dict:
        if self._fields is None:
            self._fields = read_fields(self.item)
        return self._fields

    @property
    def json(self) -> dict:
        if self._json is None:
            self._json = contact_json(self.item, self.fields)
        return self._json

    @property
    def ext(self) -> list[dict]:
        if self._ext is None:
            self._ext = [{"id": ExtIdValue(eid.graph), "value": value, "_eid": eid}
                         for eid, value in ext_properties(self.item, self._fields)]
        return self._ext


_CONTACT_LOOKUP = {p.lower(): p for p in CONTACT_PROPERTIES}


def _contact_resolve(obj: _Contact, name: str) -> Any:
    low = name.lower()
    if low == "singlevalueextendedproperties":
        return obj.ext
    prop = _CONTACT_LOOKUP.get(low)
    if prop is None:
        raise bad_request(f"Could not find a property named '{name}' on type 'microsoft.graph.contact'.",
                          "RequestBroker--ParseUri")
    return obj.json[prop]


def _ext_resolve(obj: dict, name: str) -> Any:
    low = name.lower()
    if low not in ("id", "value"):
        raise bad_request(f"Could not find a property named '{name}' on type"
                          f" 'microsoft.graph.singleValueLegacyExtendedProperty'.", "RequestBroker--ParseUri")
    return obj[low]


def _expanded(c: _Contact, expand) -> list[dict] | None:
    """The singleValueExtendedProperties to show for ``$expand`` (None: leave the property out)."""
    if expand is None:
        return None
    if expand is True:
        props = c.ext
    else:
        ev = Evaluator(_ext_resolve)
        props = [p for p in c.ext if ev.test(expand, p, {})]
    if not props:
        return None
    return [{"id": str(p["id"]), "value": p["value"]} for p in props]


def _render(c: _Contact, select: list[str] | None, expand) -> dict:
    out = _project(c.json, select)
    props = _expanded(c, expand)
    if props is not None:
        out = {**out, "singleValueExtendedProperties": props}
    return out


def _contact(emu, mailbox: str, graph_id: str, folder: dict | None) -> dict:
    item = emu.store.get_item(_check_id(graph_id))
    if item is None or item["mailbox"] != mailbox or not item["item_class"].startswith(_CONTACT_CLASS):
        raise _not_found()
    if folder is not None and item["folder_id"] != folder["id"]:
        raise _not_found()
    return item


def _get_contact(req: GraphRequest, item: dict) -> GraphResponse:
    for k in req.query:
        if k not in ("$select", "$expand"):
            raise bad_request(f"Query option '{k}' is not allowed on a single entity.")
    select = parse_select(req.query.get("$select"), CONTACT_PROPERTIES, "microsoft.graph.contact")
    expand = parse_expand(req.query.get("$expand"))
    return GraphResponse(200, _render(_Contact(item), select, expand), _applied(req))


def _list_contacts(emu, req: GraphRequest, route: _Route, folder: dict) -> GraphResponse:
    select = parse_select(req.query.get("$select"), CONTACT_PROPERTIES, "microsoft.graph.contact")
    expand = parse_expand(req.query.get("$expand"))
    order = parse_orderby(req.query.get("$orderby"), CONTACT_PROPERTIES)
    if "$search" in req.query:
        raise bad_request("$search is not supported by the emulator.", "ErrorInvalidUrlQuery")
    tree = parse_filter(req.query["$filter"]) if req.query.get("$filter") else None
    if tree is not None:
        _check_contact_lambdas(tree)
    top = min(_int_option(req, "$top", DEFAULT_PAGE) or DEFAULT_PAGE, MAX_PAGE)
    skip = _int_option(req, "$skip", 0)
    indexed = _by_ext_index(emu, folder, tree) if tree is not None else None
    contacts = [_Contact(i) for i in (indexed if indexed is not None else emu.store.folder_items(folder["id"]))
                if i["item_class"].startswith(_CONTACT_CLASS)]
    if tree is not None:
        ev = Evaluator(_contact_resolve)
        contacts = [c for c in contacts if ev.test(tree, c, {})]
    if order:
        objs = [(c.json, c) for c in contacts]
        keyed = [o for o, _ in objs]
        sort_objects(keyed, order)
        by_id = {id(o): c for o, c in objs}
        contacts = [by_id[id(o)] for o in keyed]
    page = contacts[skip:skip + top]
    body: dict = {"@odata.context": f"{req.base}/v1.0/$metadata#users('{route.user_seg}')/contacts"}
    if req.query.get("$count", "").lower() == "true":
        body["@odata.count"] = len(contacts)
    body["value"] = [_render(c, select, expand) for c in page]
    body.update(_page_links(req, len(contacts), skip, top))
    return GraphResponse(200, body, _applied(req))


_PHONE_COLLECTIONS = {"businessphones", "homephones"}


def _check_contact_lambdas(node: tuple) -> None:
    """Refuse, as Graph does (400 ErrorInvalidUrlQueryFilter), the lambdas Graph does not run on
    contacts: over ``emailAddresses`` only ``any(a: a/address eq '...')`` (user-list-contacts,
    "Optional query parameters": no other sub-property, operator or function); over the phone
    collections no function (``startswith``, ``contains``, ...).
    ``singleValueExtendedProperties/Any(...)`` is left as it is."""
    kind = node[0]
    if kind in ("or", "and"):
        _check_contact_lambdas(node[1])
        _check_contact_lambdas(node[2])
    elif kind == "not":
        _check_contact_lambdas(node[1])
    elif kind == "any" and node[3] is not None:
        coll = "/".join(node[1]).lower()
        if coll == "emailaddresses":
            if _address_eq(node[3], node[2]) is None:
                raise unsupported("emailAddresses can be filtered only with any(a: a/address eq '...').")
        elif coll in _PHONE_COLLECTIONS and _has_function(node[3]):
            raise unsupported(f"functions are not supported inside a lambda over '{'/'.join(node[1])}'.")


def _address_eq(node: tuple, var: str) -> Any:
    """The literal of ``var/address eq 'lit'`` (either side), else None."""
    if node[0] != "cmp" or node[1] != "eq":
        return None
    for a, b in ((node[2], node[3]), (node[3], node[2])):
        if (a[0] == "path" and b[0] == "lit" and isinstance(b[1], str) and len(a[1]) == 2 and a[1][0] == var
                and a[1][1].lower() == "address"):
            return b[1]
    return None


def _has_function(node: tuple) -> bool:
    if node[0] == "fn":
        return True
    return any(isinstance(part, tuple) and _has_function(part) for part in node[1:])


def _ext_eq(node: tuple, var: str) -> tuple[str, Any] | None:
    """("id" | "value", literal) for ``var/id eq 'lit'`` or ``var/value eq 'lit'`` (either side)."""
    if node[0] != "cmp" or node[1] != "eq":
        return None
    for a, b in ((node[2], node[3]), (node[3], node[2])):
        if a[0] == "path" and b[0] == "lit" and len(a[1]) == 2 and a[1][0] == var and a[1][1].lower() in ("id", "value"):
            return a[1][1].lower(), b[1]
    return None


def _by_ext_index(emu, folder: dict, tree: tuple) -> list[dict] | None:
    """The folder's candidates for a filter of the form
    ``singleValueExtendedProperties/Any(ep: ep/id eq '<String id>' and ep/value eq '<text>')``
    (a stamp lookup), from the store's index on that property; None for any other filter (the
    caller scans the folder). The caller still evaluates the filter on every candidate."""
    if tree[0] != "any" or [s.lower() for s in tree[1]] != ["singlevalueextendedproperties"] or tree[3] is None:
        return None
    cond = tree[3]
    if cond[0] != "and":
        return None
    terms = dict(t for t in (_ext_eq(cond[1], tree[2]), _ext_eq(cond[2], tree[2])) if t is not None)
    if set(terms) != {"id", "value"} or not isinstance(terms["id"], str) or not isinstance(terms["value"], str):
        return None
    try:
        eid = parse_ext_id(terms["id"])
    except GraphError:
        return None
    if eid.type != "String" or eid.is_sensitivity or eid.is_business_fax:
        return None
    return emu.store.folder_items_by_ext(folder["id"], [ext_key(u) for u in eid.uri_candidates()], terms["value"])


def _create_contact(emu, req: GraphRequest, folder: dict) -> GraphResponse:
    data = new_contact_data(req.body if req.body is not None else {})
    with emu.store.write() as tx:
        item = tx.insert_item(folder["mailbox"], folder["id"], _CONTACT_CLASS, data)
    return GraphResponse(201, contact_json(emu.store.get_item(item["id"])), _applied(req))


def _if_match(req: GraphRequest, item: dict) -> None:
    header = req.headers.get("if-match")
    if header is None:
        return
    tags = [h.strip() for h in header.split(",") if h.strip()]
    if "*" in tags:
        return
    current = item["change_key"]
    for tag in tags:
        if tag[:2].upper() == "W/":
            tag = tag[2:]
        if tag.strip('"') == current:
            return
    raise GraphError(412, "ErrorIrresolvableConflict",
                     "The send or update operation could not be performed because the change key passed in the"
                     " request does not match the current change key for the item.")


def _update_contact(emu, req: GraphRequest, item_id: str) -> GraphResponse:
    from .item_ops import apply_updates  # the EWS UpdateItem semantics, shared

    if req.body is None or not isinstance(req.body, dict):
        raise bad_request("The request body must be a JSON object.", "RequestBodyRead")
    with emu.store.write() as tx:
        item = emu.store.get_item(item_id)
        if item is None:
            raise _not_found()
        _if_match(req, item)
        changes = contact_changes(req.body, item)
        data = item["data"]
        try:
            apply_updates(data, updates_element(changes))
        except EwsError as e:
            raise bad_request(e.text, "ErrorInvalidProperty") from None
        tx.update_item(item, data)
    return GraphResponse(200, contact_json(emu.store.get_item(item_id)), _applied(req))


def _delete_contact(emu, req: GraphRequest, item_id: str) -> GraphResponse:
    with emu.store.write() as tx:
        item = emu.store.get_item(item_id)
        if item is None:
            raise _not_found()
        _if_match(req, item)
        trash = emu.store.distinguished_folder(item["mailbox"], "deleteditems")
        if item["folder_id"] == trash["id"]:
            trash = emu.store.distinguished_folder(item["mailbox"], "recoverableitemsdeletions")
        tx.move_item(item, trash["id"])
    return GraphResponse(204)


# -- delta --------------------------------------------------------------------------------------
_TOKEN_CONTEXT = b"ews-emulator/graph-delta/v1"


def _token_key(emu) -> bytes:
    return hashlib.sha256(signing_key(emu.store) + _TOKEN_CONTEXT).digest()


def encode_delta_token(emu, payload: dict) -> str:
    body = zlib.compress(json.dumps(payload, separators=(",", ":")).encode(), 6)
    mac = hmac.new(_token_key(emu), body, hashlib.sha256).digest()[:12]
    return base64.urlsafe_b64encode(mac + body).rstrip(b"=").decode()


def decode_delta_token(emu, token: str) -> dict | None:
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        mac, body = raw[:12], raw[12:]
        if not hmac.compare_digest(mac, hmac.new(_token_key(emu), body, hashlib.sha256).digest()[:12]):
            return None
        payload = json.loads(zlib.decompress(body))
    except (ValueError, zlib.error):
        return None
    return payload if isinstance(payload, dict) else None


def _sync_state_gone() -> GraphError:
    return GraphError(410, "syncStateNotFound", "The sync state is not found or is no longer valid. Start a new"
                                                " round of synchronization without a token.")


def _delta(emu, req: GraphRequest, route: _Route, folder: dict) -> GraphResponse:
    token = req.query.get("$deltatoken") or req.query.get("$skiptoken")
    prefs = _prefer(req)
    try:
        size = int(prefs.get("odata.maxpagesize", DEFAULT_PAGE))
    except ValueError:
        size = DEFAULT_PAGE
    size = max(1, min(size, MAX_PAGE))
    if token is not None:
        state = decode_delta_token(emu, token)
        if state is None or state.get("f") != folder["id"] or state.get("m") != route.mailbox:
            raise _sync_state_gone()
        select = state.get("sel")
    else:
        for k in req.query:
            if k != "$select":
                raise bad_request(f"Query option '{k}' is not supported with change tracking (delta); only"
                                  f" $select is.", "ErrorInvalidUrlQuery")
        select = parse_select(req.query.get("$select"), CONTACT_PROPERTIES, "microsoft.graph.contact")
        state = {"m": route.mailbox, "f": folder["id"], "s": emu.store.last_seq(), "c": [None, 0], "sel": select}
    if state.get("c") is not None:
        values, state, done = _delta_initial(emu, folder, state, size, select)
    else:
        values, state, done = _delta_changes(emu, folder, state, size, select)
    link_base = (f"{req.base}/v1.0/users/{quote(route.user_seg, safe='@')}/contactFolders/"
                 f"{quote(route.folder_chain[-1], safe='')}/contacts/delta")
    tok = encode_delta_token(emu, state)
    body = {"@odata.context": f"{req.base}/v1.0/$metadata#Collection(contact)", "value": values}
    if done:
        body["@odata.deltaLink"] = f"{link_base}?$deltatoken={tok}"
    else:
        body["@odata.nextLink"] = f"{link_base}?$skiptoken={tok}"
    applied = [f"odata.maxpagesize={size}"] if "odata.maxpagesize" in prefs else []
    return GraphResponse(200, body, _applied(req, applied))


def _delta_initial(emu, folder: dict, state: dict, size: int, select) -> tuple[list, dict, bool]:
    """One page of the initial round: every contact of the folder, by (created, rowid)."""
    created, rowid = state["c"]
    if created is None:
        rows = emu.store.execute(
            "SELECT id, created, rowid FROM items WHERE folder_id=? AND item_class LIKE 'IPM.Contact%'"
            " ORDER BY created, rowid LIMIT ?", (folder["id"], size + 1)).fetchall()
    else:
        rows = emu.store.execute(
            "SELECT id, created, rowid FROM items WHERE folder_id=? AND item_class LIKE 'IPM.Contact%'"
            " AND (created > ? OR (created = ? AND rowid > ?)) ORDER BY created, rowid LIMIT ?",
            (folder["id"], created, created, rowid, size + 1)).fetchall()
    more = len(rows) > size
    rows = rows[:size]
    items = emu.store.get_items([r[0] for r in rows])
    values = [_project(contact_json(i), select) for i in items]
    if more:
        return values, {**state, "c": [rows[-1][1], rows[-1][2]]}, False
    return values, {k: v for k, v in state.items() if k != "c"}, True


def _delta_changes(emu, folder: dict, state: dict, size: int, select) -> tuple[list, dict, bool]:
    """One page of an incremental round: the journal of the folder after the state's sequence
    number, collapsed per contact to its net change, at most ``size`` contacts."""
    after = int(state["s"])
    kinds: dict[str, list[str]] = {}
    last = after
    done = True
    batch = 2000
    while True:
        rows = emu.store.execute(
            "SELECT seq, item_id, kind FROM journal WHERE mailbox=? AND folder_id=? AND seq>? AND item_id IS NOT NULL"
            " ORDER BY seq LIMIT ?", (state["m"], folder["id"], last, batch)).fetchall()
        stop = False
        for seq, item_id, kind in rows:
            if item_id not in kinds and len(kinds) >= size:
                done, stop = False, True
                break
            kinds.setdefault(item_id, []).append(kind)
            last = seq
        if stop or len(rows) < batch:
            break
    current = {i["id"]: i for i in emu.store.get_items(list(kinds))}
    values = []
    for item_id, ks in kinds.items():
        if ks[-1] == "delete":
            if ks[0] != "create":
                values.append({"@odata.type": "#microsoft.graph.contact", "id": to_graph_id(item_id),
                               "@removed": {"reason": "deleted"}})
            continue
        item = current.get(item_id)
        if item is None or item["folder_id"] != folder["id"] or not item["item_class"].startswith(_CONTACT_CLASS):
            continue
        values.append(_project(contact_json(item), select))
    return values, {**state, "s": last}, done


# -- $batch -------------------------------------------------------------------------------------
def _batch(emu, req: GraphRequest) -> GraphResponse:
    if req.method != "POST":
        raise GraphError(405, "Request_BadRequest", "Specified HTTP method is not allowed for the request target.")
    with emu.lock:
        emu.stats["graph:batch"] += 1
    fault = _fault(emu, "graph:batch")
    if fault is not None:
        return fault
    body = req.body
    if not isinstance(body, dict) or not isinstance(body.get("requests"), list):
        raise bad_request("Invalid batch payload format.", "BadRequest")
    parts = body["requests"]
    if not parts:
        raise bad_request("Invalid batch payload format: the batch has no requests.", "BadRequest")
    if len(parts) > MAX_BATCH:
        raise bad_request(f"The number of requests in the batch ({len(parts)}) exceeds the maximum of"
                          f" {MAX_BATCH}.", "BadRequest")
    ids: list[str] = []
    for p in parts:
        if not isinstance(p, dict) or not p.get("id") or not p.get("method") or not p.get("url"):
            raise bad_request("Invalid batch payload format: every request needs id, method and url.", "BadRequest")
        if str(p["id"]) in ids:
            raise bad_request(f"Batch request ids must be unique; '{p['id']}' is repeated.", "BadRequest")
        ids.append(str(p["id"]))
    sequential = False
    for p in parts:
        deps = p.get("dependsOn")
        if deps is None:
            continue
        sequential = True
        if not isinstance(deps, list) or any(str(d) not in ids for d in deps):
            raise bad_request(f"Request '{p['id']}' depends on an id that is not in the batch.", "BadRequest")
    results: dict[str, GraphResponse] = {}

    def run(p: dict) -> GraphResponse:
        return _batch_part(emu, req, p)

    def run_pooled(p: dict) -> GraphResponse:
        try:
            return _batch_part(emu, req, p)
        finally:
            emu.store.close()   # pool threads end with the batch; so does their SQLite connection

    if sequential:
        for p in parts:
            failed = [d for d in p.get("dependsOn") or [] if results.get(str(d)) is None
                      or results[str(d)].status >= 400]
            if failed:
                results[str(p["id"])] = GraphResponse(424, {"error": {
                    "code": "FailedDependency", "message": f"Request depends on '{failed[0]}', which failed.",
                    "innerError": {}}})
            else:
                results[str(p["id"])] = run(p)
    else:
        with ThreadPoolExecutor(max_workers=4, thread_name_prefix="graph-batch") as pool:
            for p, r in zip(parts, pool.map(run_pooled, parts), strict=True):
                results[str(p["id"])] = r
    out = []
    for p in parts:
        r = results[str(p["id"])]
        headers = {"Content-Type": JSON_TYPE} if r.body is not None else {}
        headers.update(r.headers)
        entry = {"id": str(p["id"]), "status": r.status, "headers": headers}
        if r.body is not None:
            if isinstance(r.body, dict) and isinstance(r.body.get("error"), dict):
                r.body["error"].setdefault("innerError", {}).update({"date": _now()})
            entry["body"] = r.body
        out.append(entry)
    return GraphResponse(200, {"responses": out})


def _batch_part(emu, outer: GraphRequest, part: dict) -> GraphResponse:
    url = str(part["url"])
    if "://" in url:
        url = url.split("://", 1)[1]
        url = url[url.find("/"):] if "/" in url else "/"
    if not url.startswith("/"):
        url = "/" + url
    split = urlsplit(url)
    path = unquote(split.path)
    if path.lower().startswith("/v1.0/"):
        path = path[len("/v1.0"):]
    if path.rstrip("/").lower() == "/$batch":
        return error_response(bad_request("A batch cannot contain another batch."))
    headers = {str(k).lower(): str(v) for k, v in (part.get("headers") or {}).items()}
    try:
        query = _parse_query(split.query)
    except GraphError as e:
        return error_response(e)
    req = GraphRequest(str(part["method"]).upper(), path, query, headers, part.get("body"), outer.base, outer.claims,
                       raw_query=split.query, in_batch=True)
    return dispatch(emu, req)


__all__ = ["handles", "serve", "dispatch", "OPERATIONS", "GRAPH_FAULT_KINDS", "mailbox_user_id"]
