"""SyncFolderItems and SyncFolderHierarchy.

Item sync reads the store's change journal: a SyncState names a mailbox, a folder and a journal
sequence number, so it stays valid across restarts and needs no per-client server state. Each
response covers the journal window (state seq, new seq] of that folder, collapsed per item to the
net change the client must apply (created+updated is one Create, created+deleted is nothing).

Hierarchy sync is a snapshot diff: folders are few, so the state carries the folder ids (and a
short hash of each ChangeKey) the client already has, which makes creates, updates and deletes
exact without relying on folder-parent history the journal does not keep.
"""

from __future__ import annotations

import base64
import hashlib
import json
import zlib

from lxml import etree

from .contact_xml import folder_to_xml, item_to_xml, parse_shape
from .folders import resolve_folder
from .registry import Context, EwsError, m, operation, t
from .soap import error_message, new_response, ok_message

# SyncFolderItems returns at most 512 changes per call (MS-OXWSSYNC, MaxSyncChangesReturnedType).
MAX_CHANGES = 512
_BATCH_ROWS = 2000
_CHECK = b"ews-emulator/sync-state/v1"


# -- opaque tokens ------------------------------------------------------------------------------
def encode_token(kind: str, payload: dict) -> str:
    """An opaque base64 token for ``payload`` with an integrity check (detects corruption and
    hand edits; it is not a secret)."""
    body = zlib.compress(json.dumps({"k": kind, **payload}, separators=(",", ":")).encode(), 6)
    digest = hashlib.blake2b(body, digest_size=8, key=_CHECK).digest()
    return base64.b64encode(digest + body).decode()


def decode_token(kind: str, token: str | None) -> dict | None:
    """The payload of a token made by ``encode_token(kind, ...)``, or None if it is not one."""
    if not token:
        return None
    try:
        raw = base64.b64decode(token.strip(), validate=True)
        digest, body = raw[:8], raw[8:]
        if hashlib.blake2b(body, digest_size=8, key=_CHECK).digest() != digest:
            return None
        payload = json.loads(zlib.decompress(body))
    except (ValueError, zlib.error):
        return None
    if not isinstance(payload, dict) or payload.get("k") != kind:
        return None
    return payload


def response_message(op: str) -> tuple[etree._Element, etree._Element]:
    """(<m:{op}Response>, its single successful <m:{op}ResponseMessage>)."""
    resp, messages = new_response(op)
    return resp, ok_message(messages, op)


def _bool(v: bool) -> str:
    return "true" if v else "false"


def _sync_error(op: str, last_in_range: str, err: EwsError) -> etree._Element:
    """An error message as Exchange sends it for the Sync operations: with an empty SyncState and
    IncludesLast...InRange=true (exchangelib reads both before it looks at the ResponseCode)."""
    resp, messages = new_response(op)
    msg = error_message(messages, op, err)
    etree.SubElement(msg, m("SyncState"))
    etree.SubElement(msg, m(last_in_range)).text = "true"
    return resp


# -- SyncFolderItems ----------------------------------------------------------------------------
def _journal_window(store, mailbox: str, folder_id: str, after: int, max_items: int,
                    ignore: set[str]) -> tuple[dict[str, list[str]], int, bool]:
    """Consume journal rows of one folder after ``after`` until ``max_items`` distinct items
    are covered. Returns ({item_id: [kinds in order]}, last consumed seq, reached the end)."""
    kinds: dict[str, list[str]] = {}
    reportable = 0
    last = after
    while True:
        rows = store.execute(
            "SELECT seq, item_id, kind FROM journal WHERE mailbox=? AND folder_id=? AND seq>?"
            " AND item_id IS NOT NULL ORDER BY seq LIMIT ?",
            (mailbox, folder_id, last, _BATCH_ROWS)).fetchall()
        for seq, item_id, kind in rows:
            if item_id in ignore:
                last = seq
                continue
            seen = kinds.get(item_id)
            if seen is None:
                if reportable >= max_items:
                    return kinds, last, False
                kinds[item_id] = seen = []
                reportable += 1
            seen.append(kind)
            last = seq
        if len(rows) < _BATCH_ROWS:
            return kinds, last, True


def _net_change(kinds: list[str]) -> str | None:
    """Collapse one item's journal kinds in a window into the change the client must apply."""
    first, final = kinds[0], kinds[-1]
    if first == "create":
        return None if final == "delete" else "Create"
    return "Delete" if final == "delete" else "Update"


def _fetch_items(store, ids: list[str]) -> dict[str, dict]:
    """The stored items for ``ids`` (absent ones missing), in one query per 500 ids."""
    out: dict[str, dict] = {}
    for i in range(0, len(ids), 500):
        chunk = ids[i:i + 500]
        rows = store.execute(
            f"SELECT * FROM items WHERE id IN ({','.join('?' * len(chunk))})", chunk).fetchall()
        for row in rows:
            d = dict(row)
            d["data"] = json.loads(d["data"])
            out[d["id"]] = d
    return out


@operation("SyncFolderItems")
def sync_folder_items(ctx: Context, req: etree._Element) -> etree._Element:
    """Item changes in one folder since a SyncState (all items as Create without one)."""
    try:
        return _sync_folder_items(ctx, req)
    except EwsError as err:
        return _sync_error("SyncFolderItems", "IncludesLastItemInRange", err)


def _sync_folder_items(ctx: Context, req: etree._Element) -> etree._Element:
    store = ctx.store
    folder_elem = req.find(m("SyncFolderId"))
    if folder_elem is None:
        raise EwsError("ErrorInvalidIdEmpty", "SyncFolderItems needs a SyncFolderId.")
    folder = resolve_folder(ctx, folder_elem)
    shape = parse_shape(req.find(m("ItemShape")))
    try:
        max_changes = int(req.findtext(m("MaxChangesReturned")) or "0")
    except ValueError:
        max_changes = 0
    if not 1 <= max_changes <= MAX_CHANGES:
        raise EwsError("ErrorInvalidArgument",
                       f"MaxChangesReturned must be between 1 and {MAX_CHANGES}, not "
                       f"{req.findtext(m('MaxChangesReturned'))!r}.")
    ignore_elem = req.find(m("Ignore"))
    ignore = {e.get("Id") for e in ignore_elem} if ignore_elem is not None else set()

    token = req.findtext(m("SyncState"))
    after = 0
    if token and token.strip():
        state = decode_token("items", token)
        if state is None or state.get("f") != folder["id"] or state.get("mb") != folder["mailbox"]:
            raise EwsError("ErrorInvalidSyncStateData",
                           "Synchronization state data is corrupt or otherwise invalid "
                           "(it was not issued for this folder).")
        after = int(state["s"])

    # Rows up to ``tip`` are committed and visible; if the window reaches the end of the folder's
    # journal the new state may jump to ``tip``, skipping other folders' rows.
    tip = store.last_seq()
    if after > tip:
        raise EwsError("ErrorInvalidSyncStateData",
                       "Synchronization state data is newer than this mailbox store.")
    kinds, last, at_end = _journal_window(store, folder["mailbox"], folder["id"], after, max_changes,
                                          ignore)
    new_seq = max(last, tip) if at_end else last

    changes = [(item_id, change) for item_id, ks in kinds.items()
               if (change := _net_change(ks)) is not None]
    items = _fetch_items(store, [i for i, c in changes if c != "Delete"])

    resp, msg = response_message("SyncFolderItems")
    etree.SubElement(msg, m("SyncState")).text = encode_token(
        "items", {"mb": folder["mailbox"], "f": folder["id"], "s": new_seq})
    etree.SubElement(msg, m("IncludesLastItemInRange")).text = _bool(at_end)
    changes_elem = etree.SubElement(msg, m("Changes"))
    for item_id, change in changes:
        if change == "Delete":
            etree.SubElement(etree.SubElement(changes_elem, t("Delete")), t("ItemId"), Id=item_id)
            continue
        item = items.get(item_id)
        if item is None or item["folder_id"] != folder["id"]:
            # Gone or moved away after this window: a later window reports its Delete.
            continue
        etree.SubElement(changes_elem, t(change)).append(item_to_xml(item, shape))
    return resp


# -- SyncFolderHierarchy ------------------------------------------------------------------------
def _ck_hash(change_key: str) -> str:
    return hashlib.blake2b(change_key.encode(), digest_size=4).hexdigest()


@operation("SyncFolderHierarchy")
def sync_folder_hierarchy(ctx: Context, req: etree._Element) -> etree._Element:
    """Folder changes below a folder (msgfolderroot when no SyncFolderId) since a SyncState."""
    try:
        return _sync_folder_hierarchy(ctx, req)
    except EwsError as err:
        return _sync_error("SyncFolderHierarchy", "IncludesLastFolderInRange", err)


def _sync_folder_hierarchy(ctx: Context, req: etree._Element) -> etree._Element:
    store = ctx.store
    folder_elem = req.find(m("SyncFolderId"))
    if folder_elem is None:
        root_elem = etree.Element(t("DistinguishedFolderId"), Id="msgfolderroot")
        folder = resolve_folder(ctx, root_elem)
    else:
        folder = resolve_folder(ctx, folder_elem)
    shape = parse_shape(req.find(m("FolderShape")))

    known: dict[str, str] = {}
    token = req.findtext(m("SyncState"))
    if token and token.strip():
        state = decode_token("folders", token)
        if state is None or state.get("f") != folder["id"] or state.get("mb") != folder["mailbox"]:
            raise EwsError("ErrorInvalidSyncStateData",
                           "Synchronization state data is corrupt or otherwise invalid "
                           "(it was not issued for this folder).")
        known = dict(state["c"])

    current = store.child_folders(folder["id"], deep=True)
    resp, msg = response_message("SyncFolderHierarchy")
    etree.SubElement(msg, m("SyncState")).text = encode_token(
        "folders", {"mb": folder["mailbox"], "f": folder["id"],
                    "c": {f["id"]: _ck_hash(f["change_key"]) for f in current}})
    etree.SubElement(msg, m("IncludesLastFolderInRange")).text = "true"
    changes_elem = etree.SubElement(msg, m("Changes"))
    present = set()
    for f in current:  # depth-first, so a parent is created before its children
        present.add(f["id"])
        old = known.get(f["id"])
        if old is None:
            change = "Create"
        elif old != _ck_hash(f["change_key"]):
            change = "Update"
        else:
            continue
        etree.SubElement(changes_elem, t(change)).append(
            folder_to_xml(f, shape, counts=store.folder_counts(f["id"])))
    for fid in known:
        if fid not in present:
            etree.SubElement(etree.SubElement(changes_elem, t("Delete")), t("FolderId"), Id=fid)
    return resp
