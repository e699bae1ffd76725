"""Subscribe (pull and streaming), GetEvents, GetStreamingEvents and Unsubscribe.

Events are read from the store's change journal, so a watermark is just a journal sequence
number wrapped in an opaque token. Subscriptions live in an ``ews_subscriptions`` table next to
the journal: a pull subscription survives an emulator restart for its Timeout, as on Exchange.
Open streams sleep on a condition that ``Store.listeners`` wakes after every commit, so a
change reaches a streaming client as soon as it is committed.
"""

from __future__ import annotations

import base64
import json
import os
import threading
import time
import weakref
from collections.abc import Iterator

from lxml import etree

from .folders import check_mailbox_access, default_mailbox, resolve_folder
from .registry import Context, EwsError, Streaming, m, operation, t
from .soap import error_message, new_response
from .sync_ops import decode_token, encode_token, response_message

EVENT_TYPES = ("CopiedEvent", "CreatedEvent", "DeletedEvent", "ModifiedEvent", "MovedEvent",
               "NewMailEvent", "FreeBusyChangedEvent")
MAX_EVENTS = 50                 # events per GetEvents call before MoreEvents=true
STREAMING_IDLE_MINUTES = 30     # a streaming subscription nobody listens to expires
_ROW_BATCH = 500

_SCHEMA = """
CREATE TABLE IF NOT EXISTS ews_subscriptions (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,            -- pull | streaming
    mailbox TEXT NOT NULL,
    owner TEXT,                    -- the acting identity that created it
    folder_ids TEXT,               -- JSON list, NULL = SubscribeToAllFolders
    event_types TEXT NOT NULL,     -- JSON list
    timeout_min INTEGER NOT NULL,
    seq INTEGER NOT NULL,          -- last journal seq handed out
    last_used REAL NOT NULL
)
"""


# -- per-store state: the table and the wake-up hub ------------------------------------------------
class _Hub:
    """Wakes open streams when the store commits journal rows."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.generation = 0

    def __call__(self, rows: list[dict]) -> None:
        with self.cond:
            self.generation += 1
            self.cond.notify_all()

    def wait(self, seen: int, timeout: float) -> int:
        with self.cond:
            self.cond.wait_for(lambda: self.generation != seen, timeout=max(timeout, 0))
            return self.generation


_HUBS: weakref.WeakKeyDictionary[object, _Hub] = weakref.WeakKeyDictionary()
_HUBS_LOCK = threading.Lock()


def _hub(store) -> _Hub:
    """The store's hub, created (with its table and listener) on first use."""
    with _HUBS_LOCK:
        hub = _HUBS.get(store)
        if hub is None:
            store.execute(_SCHEMA)
            hub = _Hub()
            store.listeners.append(hub)
            _HUBS[store] = hub
        return hub


def _setting(ctx: Context, name: str, default: float) -> float:
    """Optional tuning knobs on the running app (e.g. tests shorten minutes)."""
    cfg = getattr(ctx.app, "config", None)
    for source in (cfg, ctx.app):
        value = getattr(source, name, None)
        if isinstance(value, (int, float)) and value > 0:
            return float(value)
    return default


# -- tokens ---------------------------------------------------------------------------------------
def watermark(mailbox: str, seq: int) -> str:
    return encode_token("wm", {"mb": mailbox, "s": seq})


def _watermark_seq(ctx: Context, token: str | None, mailbox: str) -> int:
    state = decode_token("wm", token)
    if state is None or state.get("mb") != mailbox or int(state["s"]) > ctx.store.last_seq():
        raise EwsError("ErrorInvalidWatermark", "The watermark used for creating this subscription "
                       "or for GetEvents is not valid for this mailbox.")
    return int(state["s"])


# -- subscriptions table ----------------------------------------------------------------------------
def _load(ctx: Context, sub_id: str | None, kind: str) -> dict:
    """The subscription ``sub_id`` of ``kind``, checked for owner and expiry."""
    _hub(ctx.store)
    row = ctx.store.execute("SELECT * FROM ews_subscriptions WHERE id=?", (sub_id or "",)).fetchone()
    if row is None:
        raise EwsError("ErrorSubscriptionNotFound", "The specified subscription was not found.")
    sub = dict(row)
    if ctx.mailbox is not None and ctx.mailbox != sub["owner"]:
        raise EwsError("ErrorSubscriptionAccessDenied",
                       "A subscription can only be used by the account that created it.")
    if sub["kind"] != kind:
        code = "ErrorInvalidPullSubscriptionId" if kind == "pull" else "ErrorInvalidSubscription"
        raise EwsError(code, f"Subscription {sub_id} is a {sub['kind']} subscription, not a {kind} one.")
    if time.time() - sub["last_used"] > sub["timeout_min"] * 60:
        _delete(ctx, sub["id"])
        raise EwsError("ErrorExpiredSubscription", "The subscription has expired.")
    sub["folder_ids"] = None if sub["folder_ids"] is None else set(json.loads(sub["folder_ids"]))
    sub["event_types"] = set(json.loads(sub["event_types"]))
    return sub


def _save_progress(ctx: Context, sub_id: str, seq: int) -> None:
    with ctx.store.write() as tx:
        tx.conn.execute("UPDATE ews_subscriptions SET seq=max(seq, ?), last_used=? WHERE id=?",
                        (seq, time.time(), sub_id))


def _delete(ctx: Context, sub_id: str) -> None:
    with ctx.store.write() as tx:
        tx.conn.execute("DELETE FROM ews_subscriptions WHERE id=?", (sub_id,))


# -- events -----------------------------------------------------------------------------------------
def _id(parent: etree._Element, tag: str, id_: str, ck: str | None = None) -> None:
    e = etree.SubElement(parent, t(tag), Id=id_)
    if ck:
        e.set("ChangeKey", ck)


class _EventReader:
    """Turns journal rows after a seq into the events one subscription should see."""

    def __init__(self, ctx: Context, sub: dict) -> None:
        self.store = ctx.store
        self.sub = sub
        self._folders: dict[str, dict | None] = {}

    def _folder(self, folder_id: str) -> dict | None:
        if folder_id not in self._folders:
            self._folders[folder_id] = self.store.get_folder(folder_id)
        return self._folders[folder_id]

    def _watched(self, *folder_ids: str | None) -> bool:
        wanted = self.sub["folder_ids"]
        return wanted is None or any(f in wanted for f in folder_ids if f)

    def read(self, after: int, limit: int) -> tuple[list[etree._Element], int, bool]:
        """(events, seq of the last row examined, more rows may follow)."""
        events: list[etree._Element] = []
        last = after
        mailbox = self.sub["mailbox"]
        while True:
            rows = [dict(r) for r in self.store.execute(
                "SELECT * FROM journal WHERE mailbox=? AND seq>? ORDER BY seq LIMIT ?",
                (mailbox, last, _ROW_BATCH + 1))]
            batch, lookahead = rows[:_ROW_BATCH], rows[_ROW_BATCH:]
            for i, row in enumerate(batch):
                nxt = batch[i + 1] if i + 1 < len(batch) else (lookahead[0] if lookahead else None)
                event = self._event(row, nxt)
                if event is not None:
                    if len(events) >= limit:
                        return events, last, True
                    events.append(event)
                last = row["seq"]
            if not lookahead:
                return events, last, False

    def _event(self, row: dict, nxt: dict | None) -> etree._Element | None:
        kind, item_id, folder_id = row["kind"], row["item_id"], row["folder_id"]
        if (kind == "delete" and nxt is not None and nxt["kind"] == "create"
                and nxt["item_id"] == item_id and nxt["old_folder_id"] == folder_id):
            return None  # first half of a move: the create that follows is the MovedEvent
        if item_id is not None:
            old_parent = row["old_folder_id"] if kind == "create" else None
            name = {"create": "MovedEvent" if old_parent else "CreatedEvent",
                    "update": "ModifiedEvent", "delete": "DeletedEvent"}.get(kind)
            if name is None or name not in self.sub["event_types"]:
                return None
            if not self._watched(folder_id, old_parent):
                return None
            ev = self._start(name, row)
            _id(ev, "ItemId", item_id, row["change_key"])
            parent = self._folder(folder_id)
            _id(ev, "ParentFolderId", folder_id, parent["change_key"] if parent else None)
            if old_parent:
                _id(ev, "OldItemId", item_id)
                old = self._folder(old_parent)
                _id(ev, "OldParentFolderId", old_parent, old["change_key"] if old else None)
            return ev
        name = {"folder_create": "CreatedEvent", "folder_update": "ModifiedEvent",
                "folder_delete": "DeletedEvent"}.get(kind)
        if name is None or name not in self.sub["event_types"]:
            return None
        folder = self._folder(folder_id)
        parent_id = folder["parent_id"] if folder else None
        if not self._watched(folder_id, parent_id):
            return None
        ev = self._start(name, row)
        _id(ev, "FolderId", folder_id, row["change_key"])
        if parent_id:
            parent = self._folder(parent_id)
            _id(ev, "ParentFolderId", parent_id, parent["change_key"] if parent else None)
        return ev

    def _start(self, name: str, row: dict) -> etree._Element:
        ev = etree.Element(t(name))
        etree.SubElement(ev, t("Watermark")).text = watermark(self.sub["mailbox"], row["seq"])
        etree.SubElement(ev, t("TimeStamp")).text = row["ts"]
        return ev


def _notification(sub: dict, previous: int, events: list[etree._Element], more: bool,
                  status_seq: int | None = None) -> etree._Element:
    note = etree.Element(m("Notification"))
    etree.SubElement(note, t("SubscriptionId")).text = sub["id"]
    etree.SubElement(note, t("PreviousWatermark")).text = watermark(sub["mailbox"], previous)
    etree.SubElement(note, t("MoreEvents")).text = "true" if more else "false"
    for ev in events:
        note.append(ev)
    if not events:
        status = etree.SubElement(note, t("StatusEvent"))
        etree.SubElement(status, t("Watermark")).text = watermark(
            sub["mailbox"], previous if status_seq is None else status_seq)
    return note


# -- Subscribe --------------------------------------------------------------------------------------
@operation("Subscribe")
def subscribe(ctx: Context, req: etree._Element) -> etree._Element:
    """Create a pull or streaming subscription on some folders (or all) of one mailbox."""
    store = ctx.store
    _hub(store)
    spec = req.find(m("PullSubscriptionRequest"))
    kind = "pull"
    if spec is None:
        spec = req.find(m("StreamingSubscriptionRequest"))
        kind = "streaming"
    if spec is None:
        if req.find(m("PushSubscriptionRequest")) is not None:
            raise EwsError("ErrorInvalidSubscriptionRequest",
                           "Push subscriptions are not supported by this emulator; use pull or streaming.")
        raise EwsError("ErrorInvalidSubscriptionRequest", "No subscription request was given.")

    all_folders = (spec.get("SubscribeToAllFolders") or "").lower() in ("true", "1")
    folder_ids: list[str] | None = None
    mailbox: str | None = None
    if all_folders:
        mailbox = default_mailbox(ctx)
        check_mailbox_access(ctx, mailbox)
    else:
        ids_elem = spec.find(t("FolderIds"))
        if ids_elem is None or len(ids_elem) == 0:
            raise EwsError("ErrorInvalidSubscriptionRequest",
                           "A subscription needs FolderIds or SubscribeToAllFolders.")
        folder_ids = []
        for fe in ids_elem:
            folder = resolve_folder(ctx, fe)
            if mailbox is not None and folder["mailbox"] != mailbox:
                raise EwsError("ErrorInvalidSubscriptionRequest",
                               "All folders of a subscription must belong to the same mailbox.")
            mailbox = folder["mailbox"]
            folder_ids.append(folder["id"])
    types_elem = spec.find(t("EventTypes"))
    event_types = [e.text.strip() for e in types_elem] if types_elem is not None else []
    unknown = [e for e in event_types if e not in EVENT_TYPES]
    if not event_types or unknown:
        raise EwsError("ErrorInvalidSubscriptionRequest",
                       f"EventTypes must be a non-empty list of {', '.join(EVENT_TYPES)}"
                       + (f"; unknown: {', '.join(unknown)}" if unknown else "."))

    if kind == "pull":
        try:
            timeout = int(spec.findtext(t("Timeout")) or "")
        except ValueError:
            timeout = 0
        if not 1 <= timeout <= 1440:
            raise EwsError("ErrorInvalidArgument", "Timeout of a pull subscription must be 1 to 1440 minutes.")
        given = spec.findtext(m("Watermark")) or spec.findtext(t("Watermark"))
        seq = _watermark_seq(ctx, given, mailbox) if given else store.last_seq()
    else:
        timeout = STREAMING_IDLE_MINUTES
        seq = store.last_seq()

    sub_id = base64.b64encode(b"\x17\x00" + os.urandom(30)).decode()
    now = time.time()
    with store.write() as tx:
        tx.conn.execute("DELETE FROM ews_subscriptions WHERE last_used + timeout_min * 60 < ?", (now,))
        tx.conn.execute(
            "INSERT INTO ews_subscriptions(id, kind, mailbox, owner, folder_ids, event_types,"
            " timeout_min, seq, last_used) VALUES (?,?,?,?,?,?,?,?,?)",
            (sub_id, kind, mailbox, ctx.mailbox, None if folder_ids is None else json.dumps(folder_ids),
             json.dumps(event_types), timeout, seq, now))

    resp, msg = response_message("Subscribe")
    etree.SubElement(msg, m("SubscriptionId")).text = sub_id
    if kind == "pull":
        etree.SubElement(msg, m("Watermark")).text = watermark(mailbox, seq)
    return resp


# -- GetEvents --------------------------------------------------------------------------------------
@operation("GetEvents")
def get_events(ctx: Context, req: etree._Element) -> etree._Element:
    """Events of a pull subscription after a watermark (a StatusEvent when there are none)."""
    sub = _load(ctx, req.findtext(m("SubscriptionId")), "pull")
    # Like Exchange, the subscription keeps its own position: each event is handed out once, even
    # to a client that repeats its first watermark (exchangelib's get_events() does while
    # MoreEvents is true). The watermark must still be a valid one of this mailbox.
    after = max(_watermark_seq(ctx, req.findtext(m("Watermark")), sub["mailbox"]), sub["seq"])
    tip = ctx.store.last_seq()
    events, last, more = _EventReader(ctx, sub).read(after, MAX_EVENTS)
    reached = last if more else max(last, tip)
    _save_progress(ctx, sub["id"], reached)
    resp, msg = response_message("GetEvents")
    msg.append(_notification(sub, after, events, more, status_seq=reached))
    return resp


# -- GetStreamingEvents -----------------------------------------------------------------------------
def _streaming_message(status: str, notifications: list[etree._Element]) -> etree._Element:
    resp, msg = response_message("GetStreamingEvents")
    if notifications:
        holder = etree.SubElement(msg, m("Notifications"))
        for n in notifications:
            holder.append(n)
    etree.SubElement(msg, m("ConnectionStatus")).text = status
    return resp


def _streaming_error(bad: list[str], err: EwsError) -> etree._Element:
    resp, messages = new_response("GetStreamingEvents")
    msg = error_message(messages, "GetStreamingEvents", err)
    ids = etree.SubElement(msg, m("ErrorSubscriptionIds"))
    for sub_id in bad:
        etree.SubElement(ids, t("SubscriptionId")).text = sub_id
    return resp


@operation("GetStreamingEvents")
def get_streaming_events(ctx: Context, req: etree._Element) -> etree._Element | Streaming:
    """Hold the connection open for ConnectionTimeout minutes, sending a Notification as soon as
    a subscribed change commits, an OK keep-alive when idle, and ConnectionStatus Closed at the
    end."""
    ids_elem = req.find(m("SubscriptionIds"))
    sub_ids = [e.text.strip() for e in ids_elem if e.text] if ids_elem is not None else []
    if not sub_ids:
        raise EwsError("ErrorInvalidSubscriptionRequest", "GetStreamingEvents needs SubscriptionIds.")
    subs: list[dict] = []
    for sub_id in sub_ids:
        try:
            subs.append(_load(ctx, sub_id, "streaming"))
        except EwsError as err:
            return _streaming_error([sub_id], err)
    try:
        minutes = int(req.findtext(m("ConnectionTimeout")) or "")
    except ValueError:
        minutes = 0
    if not 1 <= minutes <= 30:
        raise EwsError("ErrorInvalidArgument", "ConnectionTimeout must be 1 to 30 minutes.")
    minute = _setting(ctx, "streaming_minute_seconds", 60.0)
    keepalive = _setting(ctx, "streaming_keepalive_seconds", 30.0)
    return Streaming(_stream(ctx, subs, time.monotonic() + minutes * minute, keepalive))


def _stream(ctx: Context, subs: list[dict], deadline: float, keepalive: float) -> Iterator[etree._Element]:
    hub = _hub(ctx.store)
    generation = hub.generation
    stopping = getattr(ctx.app, "stopping", None)
    for sub in subs:  # an open stream keeps its subscriptions alive
        _save_progress(ctx, sub["id"], sub["seq"])
    cursors = {s["id"]: s["seq"] for s in subs}
    readers = {s["id"]: _EventReader(ctx, s) for s in subs}
    last_sent = time.monotonic()
    while True:
        notifications = []
        for sub in subs:
            exists = ctx.store.execute("SELECT 1 FROM ews_subscriptions WHERE id=?", (sub["id"],)).fetchone()
            if exists is None:  # unsubscribed while streaming
                yield _streaming_message("Closed", notifications)
                return
            after = cursors[sub["id"]]
            tip = ctx.store.last_seq()
            events, last, more = readers[sub["id"]].read(after, MAX_EVENTS)
            reached = last if more else max(last, tip)
            if events:
                notifications.append(_notification(sub, after, events, more))
            if reached != after or events:
                cursors[sub["id"]] = reached
                _save_progress(ctx, sub["id"], reached)
        now = time.monotonic()
        if notifications:
            yield _streaming_message("OK", notifications)
            last_sent = now
            if any(n.findtext(t("MoreEvents")) == "true" for n in notifications):
                continue
        elif now - last_sent >= keepalive:
            for sub in subs:  # keeps the subscriptions from expiring while the stream is open
                _save_progress(ctx, sub["id"], cursors[sub["id"]])
            yield _streaming_message("OK", [])
            last_sent = now
        if now >= deadline or (stopping is not None and stopping.is_set()):
            yield _streaming_message("Closed", [])
            return
        # Wake on a commit, at the next keep-alive or the deadline; check for shutdown each second.
        generation = hub.wait(generation, min(deadline, last_sent + keepalive, now + 1.0) - time.monotonic())


# -- Unsubscribe ------------------------------------------------------------------------------------
@operation("Unsubscribe")
def unsubscribe(ctx: Context, req: etree._Element) -> etree._Element:
    """End a pull or streaming subscription (an open stream then closes)."""
    sub_id = req.findtext(m("SubscriptionId"))
    _hub(ctx.store)
    row = ctx.store.execute("SELECT kind FROM ews_subscriptions WHERE id=?", (sub_id or "",)).fetchone()
    if row is None:
        raise EwsError("ErrorSubscriptionNotFound", "The specified subscription was not found.")
    _load(ctx, sub_id, row[0])  # owner check (and expiry)
    _delete(ctx, sub_id)
    hub = _hub(ctx.store)
    with hub.cond:  # wake an open stream so it notices
        hub.generation += 1
        hub.cond.notify_all()
    return response_message("Unsubscribe")[0]
