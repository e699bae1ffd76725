"""Item operations: CreateItem, GetItem, FindItem, UpdateItem, DeleteItem, MoveItem."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager

from lxml import etree

from . import text_index
from .contact_xml import (
    INDEXED,
    ITEM_CLASS_BY_TAG,
    apply_child,
    check_limits,
    ext_key,
    field_value,
    item_to_xml,
    localname,
    parse_item,
    parse_shape,
    uri_to_element,
)
from .folder_ops import page
from .folders import default_mailbox, resolve_folder, resolve_item
from .registry import Context, EwsError, m, operation, t
from .restrictions import apply_sort, compile_restriction, key_lookup, referenced_uris
from .soap import error_message, new_response, ok_message, require

DEFAULT_FOLDER_BY_TAG = {"Contact": "contacts", "DistributionList": "contacts", "CalendarItem": "calendar",
                         "Task": "tasks"}
URI_TAGS = ("FieldURI", "IndexedFieldURI", "ExtendedFieldURI")


def _children(elem: etree._Element | None) -> list[etree._Element]:
    return [c for c in elem if isinstance(c.tag, str)] if elem is not None else []


def _id_only(item: dict) -> etree._Element:
    out = etree.Element(t(item["data"].get("tag", "Contact")))
    etree.SubElement(out, t("ItemId"), Id=item["id"], ChangeKey=item["change_key"])
    return out


@operation("CreateItem")
def create_item(ctx: Context, req: etree._Element) -> etree._Element:
    resp, messages = new_response("CreateItem")
    saved = req.find(m("SavedItemFolderId"))
    items = _children(require(req, m("Items")))
    target = None
    if saved is not None:
        try:
            target = resolve_folder(ctx, saved)
        except EwsError as e:
            for _ in items:
                error_message(messages, "CreateItem", e)
            return resp
    results: list[tuple[etree._Element | None, EwsError | None]] = []
    with ctx.store.write() as tx:
        for elem in items:
            try:
                data = parse_item(elem)
                check_limits(data, None, "ErrorItemSavePropertyError")
                folder = target
                if folder is None:
                    mailbox = default_mailbox(ctx)
                    folder = ctx.store.distinguished_folder(
                        mailbox, DEFAULT_FOLDER_BY_TAG.get(data["tag"], "drafts"))
                item_class = data["t"].pop("ItemClass", None) or ITEM_CLASS_BY_TAG.get(data["tag"], "IPM.Item")
                item = tx.insert_item(folder["mailbox"], folder["id"], item_class, data)
                results.append((_id_only(item), None))
            except EwsError as e:
                results.append((None, e))
    for out, err in results:
        if err is not None:
            error_message(messages, "CreateItem", err)
        else:
            msg = ok_message(messages, "CreateItem")
            etree.SubElement(msg, m("Items")).append(out)
    return resp


@operation("GetItem")
def get_item(ctx: Context, req: etree._Element) -> etree._Element:
    shape = parse_shape(req.find(m("ItemShape")))
    resp, messages = new_response("GetItem")
    for iid in _children(require(req, m("ItemIds"))):
        try:
            item = resolve_item(ctx, iid)
        except EwsError as e:
            error_message(messages, "GetItem", e)
            continue
        msg = ok_message(messages, "GetItem")
        etree.SubElement(msg, m("Items")).append(item_to_xml(item, shape))
    return resp


@operation("FindItem")
def find_item(ctx: Context, req: etree._Element) -> etree._Element:
    shape = parse_shape(req.find(m("ItemShape")))
    restriction = req.find(m("Restriction"))
    order = req.find(m("SortOrder"))
    view = req.find(m("IndexedPageItemView"))
    pred = compile_restriction(restriction, field_value)
    resp, messages = new_response("FindItem")
    for fid in _children(require(req, m("ParentFolderIds"))):
        try:
            folder = resolve_folder(ctx, fid)
        except EwsError as e:
            error_message(messages, "FindItem", e)
            continue
        if restriction is None and order is None:
            # Page over ids first; decode only the items of this page.
            ids = ctx.store.folder_item_ids(folder["id"])
            chunk, nxt, last = page(ids, view)
            total = len(ids)
            if not shape.all and not shape.fields and not shape.ext:
                elems = []
                for id_, ck in chunk:
                    e = etree.Element(t("Contact"))
                    etree.SubElement(e, t("ItemId"), Id=id_, ChangeKey=ck)
                    elems.append(e)
            else:
                elems = [item_to_xml(i, shape, find=True) for i in ctx.store.get_items([i for i, _ in chunk])]
        else:
            with _snapshot(ctx):   # the matches and the page read from one state of the store
                items = _matching(ctx, folder["id"], restriction, order, pred)
                apply_sort(items, order, field_value)
                chunk, nxt, last = page(items, view)
                total = len(items)
                elems = [item_to_xml(i, shape, find=True) for i in ctx.store.get_items([i["id"] for i in chunk])]
        msg = ok_message(messages, "FindItem")
        rf = etree.SubElement(msg, m("RootFolder"), IndexedPagingOffset=str(nxt), TotalItemsInView=str(total),
                              IncludesLastItemInRange="true" if last else "false")
        container = etree.SubElement(rf, t("Items"))
        for e in elems:
            container.append(e)
    return resp


@contextmanager
def _snapshot(ctx: Context) -> Iterator[None]:
    """A read transaction on this thread's connection (WAL: writers carry on beside it)."""
    ctx.store.execute("BEGIN")
    try:
        yield
    finally:
        ctx.store.execute("COMMIT")


#: Where an item's data keeps what a field URI names (see contact_xml.field_value).
_DATA_PARTS = {"ExtendedFieldURI": ("ext",), "IndexedFieldURI": ("idx",), "FieldURI": ("t", "x")}


def _matching(ctx: Context, folder_id: str, restriction: etree._Element | None, order: etree._Element | None,
              pred) -> list[dict]:
    """The folder's items that satisfy the restriction, in creation order, holding what the
    restriction and the sort order read (the caller reads the page it returns in full)."""
    lookup = key_lookup(restriction)
    if lookup is not None and localname(lookup[0].tag) == "ExtendedFieldURI":
        ids = _ids_by_extended_value(ctx, folder_id, ext_key(dict(lookup[0].attrib)), lookup[1])
        if ids is not None:
            return ctx.store.get_items(ids) if order is not None else [{"id": i} for i in ids]
    narrowed = text_index.candidates(ctx.store.execute, folder_id, restriction)
    return [i for i in _items_for_query(ctx, folder_id, restriction, order, ids=narrowed) if pred(i)]


def _ids_by_extended_value(ctx: Context, folder_id: str, key: str, wanted: frozenset[str]) -> list[str] | None:
    """Ids of the folder's items whose extended property ``key`` has a value (casefolded)
    among ``wanted``, in creation order: a look-up by stamped keys reads only that property
    of each item, as field_value would give it. None when the key cannot be put in a JSON path.

    The values are remembered per item and ChangeKey (every change of an item's data gives it a
    new ChangeKey), so a look-up reads the property again only of items new or changed since
    the last one; what it goes through each time is the folder's ids and ChangeKeys."""
    if '"' in key or "\\" in key:
        return None
    known = _remembered(ctx, folder_id, key)
    rows = ctx.store.execute("SELECT id, change_key FROM items WHERE folder_id=? ORDER BY created, rowid",
                             (folder_id,)).fetchall()
    stale = [item_id for item_id, ck in rows if known.get(item_id, ("",))[0] != ck]
    for start in range(0, len(stale), 500):
        part = stale[start:start + 500]
        for item_id, ck, raw in ctx.store.execute(
                f"SELECT id, change_key, json_extract(data, ?) FROM items WHERE id IN ({','.join('?' * len(part))})",
                (f'$.ext."{key}"', *part)):
            known[item_id] = (ck, _casefolded(raw))
    current = {item_id: known[item_id] for item_id, ck in rows if known.get(item_id, ("",))[0] == ck}
    _remember(ctx, folder_id, key, current)
    return [item_id for item_id, (_, values) in current.items() if any(v in wanted for v in values)]


def _casefolded(raw: str | None) -> tuple[str, ...]:
    """The values of an extended property record (its JSON), casefolded; () when absent."""
    if raw is None:
        return ()
    rec = json.loads(raw)
    got = rec.get("vs") if "vs" in rec else rec.get("v")
    if got is None:
        return ()
    return tuple(str(v).casefold() for v in (got if isinstance(got, list) else (got,)))


def _remembered(ctx: Context, folder_id: str, key: str) -> dict[str, tuple[str, tuple[str, ...]]]:
    """A copy of what the last look-up of ``key`` in the folder read (empty without a running emulator)."""
    cache = ctx.app.state.get(_EXT_VALUES, {}) if ctx.app is not None else {}
    return dict(cache.get((folder_id, key), {}))


def _remember(ctx: Context, folder_id: str, key: str, values: dict[str, tuple[str, tuple[str, ...]]]) -> None:
    if ctx.app is None:
        return
    cache = ctx.app.state.setdefault(_EXT_VALUES, {})
    if len(cache) > 64 and (folder_id, key) not in cache:
        cache.clear()
    cache[(folder_id, key)] = values


#: Where the emulator's state keeps the extended-property values that look-ups have read.
_EXT_VALUES = "item_ops.extended_values"


def _items_for_query(ctx: Context, folder_id: str, *query: etree._Element | None,
                     ids: set[str] | None = None) -> list[dict]:
    """The folder's items in creation order (only those among ``ids`` when given: what the text
    index left of the folder), each holding only the parts of its data that the restriction
    and sort order read (SQLite extracts them), so a query over a large folder does not decode
    every whole item; the page that is returned is read in full afterwards."""
    parts = sorted({p for u in referenced_uris(*query) for p in _DATA_PARTS[localname(u.tag)]})
    picked = "".join(f", json_extract(data, '$.{p}') AS part_{p}" for p in parts)
    select = f"SELECT rowid AS _rowid, id, mailbox, folder_id, change_key, item_class, created, modified{picked} FROM items"
    if ids is None:
        rows = list(ctx.store.execute(f"{select} WHERE folder_id=? ORDER BY created, rowid", (folder_id,)))
    else:
        wanted = sorted(ids)
        rows = []
        for start in range(0, len(wanted), 500):
            chunk = wanted[start:start + 500]
            rows += ctx.store.execute(f"{select} WHERE folder_id=? AND id IN ({','.join('?' * len(chunk))})",
                                      (folder_id, *chunk)).fetchall()
        rows.sort(key=lambda r: (r["created"], r["_rowid"]))
    out = []
    for row in rows:
        item = dict(row)
        del item["_rowid"]
        data = {}
        for p in parts:
            raw = item.pop(f"part_{p}")
            if raw is not None:
                data[p] = json.loads(raw)
        item["data"] = data
        out.append(item)
    return out


def _uri_and_value(update: etree._Element) -> tuple[etree._Element, etree._Element | None]:
    uri, value = None, None
    for c in update:
        if not isinstance(c.tag, str):
            continue
        if localname(c.tag) in URI_TAGS:
            uri = c
        else:
            value = c
    if uri is None:
        raise EwsError("ErrorSchemaValidation", f"{localname(update.tag)} has no field URI.")
    return uri, value


def _value_child(value: etree._Element | None, what: str) -> etree._Element:
    kids = _children(value)
    if len(kids) != 1:
        raise EwsError("ErrorIncorrectUpdatePropertyCount",
                       f"An object within a change description must contain one and only one property to modify"
                       f" ({what}).")
    return kids[0]


def _delete_field(data: dict, uri: etree._Element) -> None:
    kind = localname(uri.tag)
    if kind == "ExtendedFieldURI":
        data.get("ext", {}).pop(ext_key(dict(uri.attrib)), None)
        return
    furi = uri.get("FieldURI", "")
    name = uri_to_element(furi)
    if kind == "IndexedFieldURI":
        coll = data.get("idx", {}).get(name, {})
        key = uri.get("FieldIndex")
        parts = furi.split(":")
        if key in coll and len(parts) > 2 and "s" in coll[key]:
            coll[key]["s"].pop(parts[2], None)
            if not coll[key]["s"]:
                del coll[key]
        else:
            coll.pop(key, None)
        return
    if name in INDEXED:
        data.get("idx", {}).pop(name, None)
    data.get("t", {}).pop(name, None)
    data.get("x", {}).pop(name, None)


def _append_field(data: dict, child: etree._Element) -> None:
    name = localname(child.tag)
    if name in data.get("t", {}) and len(child) == 0:
        data["t"][name] += child.text or ""
        return
    frag = data.get("x", {}).get(name)
    if frag is None:
        apply_child(data, child)
        return
    existing = etree.fromstring(frag)
    if len(existing):
        for c in child:
            existing.append(c)
    else:
        existing.text = (existing.text or "") + (child.text or "")
    apply_child(data, existing)


def apply_updates(data: dict, updates: etree._Element) -> set[str]:
    """Apply Set/Append/DeleteItemField changes to an item's data dict in place; returns the
    element names of the fields changed."""
    touched: set[str] = set()
    for upd in _children(updates):
        kind = localname(upd.tag)
        uri, value = _uri_and_value(upd)
        touched.add(uri_to_element(uri.get("FieldURI", "")))
        if kind in ("DeleteItemField", "DeleteFolderField"):
            _delete_field(data, uri)
            continue
        child = _value_child(value, uri.get("FieldURI") or uri.get("PropertyName") or "field")
        if kind == "AppendToItemField":
            _append_field(data, child)
        else:
            apply_child(data, child, merge_indexed=localname(uri.tag) == "IndexedFieldURI")
    return touched


@operation("UpdateItem")
def update_item(ctx: Context, req: etree._Element) -> etree._Element:
    conflict = req.get("ConflictResolution", "AutoResolve")
    resp, messages = new_response("UpdateItem")
    results: list[tuple[dict | None, EwsError | None]] = []
    with ctx.store.write() as tx:
        for change in _children(require(req, m("ItemChanges"))):
            try:
                iid = change.find(t("ItemId"))
                if iid is None:
                    raise EwsError("ErrorInvalidIdEmpty", "The item id is empty.")
                item = resolve_item(ctx, iid)
                sent_ck = iid.get("ChangeKey")
                if sent_ck and sent_ck != item["change_key"] and conflict == "NeverOverwrite":
                    raise EwsError("ErrorIrresolvableConflict",
                                   "The send or update operation could not be performed because the change key"
                                   " passed in the request does not match the current change key for the item.")
                data = item["data"]
                touched = apply_updates(data, change.find(t("Updates")))
                check_limits(data, touched, "ErrorPropertyUpdate")
                tx.update_item(item, data)
                results.append((item, None))
            except EwsError as e:
                results.append((None, e))
    for item, err in results:
        if err is not None:
            error_message(messages, "UpdateItem", err)
            continue
        msg = ok_message(messages, "UpdateItem")
        etree.SubElement(msg, m("Items")).append(_id_only(item))
        cr = etree.SubElement(msg, m("ConflictResults"))
        etree.SubElement(cr, t("Count")).text = "0"
    return resp


@operation("DeleteItem")
def delete_item(ctx: Context, req: etree._Element) -> etree._Element:
    delete_type = req.get("DeleteType", "HardDelete")
    resp, messages = new_response("DeleteItem")
    results: list[EwsError | None] = []
    with ctx.store.write() as tx:
        for iid in _children(require(req, m("ItemIds"))):
            try:
                item = resolve_item(ctx, iid)
                if delete_type == "HardDelete":
                    tx.delete_item(item)
                else:
                    trash = ctx.store.distinguished_folder(item["mailbox"], "deleteditems")
                    # a public folder has no Deleted Items: its items go to its dumpster
                    if trash is None or delete_type == "SoftDelete" or item["folder_id"] == trash["id"]:
                        trash = ctx.store.distinguished_folder(item["mailbox"], "recoverableitemsdeletions")
                    tx.move_item(item, trash["id"])
                results.append(None)
            except EwsError as e:
                results.append(e)
    for err in results:
        if err is not None:
            error_message(messages, "DeleteItem", err)
        else:
            ok_message(messages, "DeleteItem")
    return resp


@operation("MoveItem")
def move_item(ctx: Context, req: etree._Element) -> etree._Element:
    resp, messages = new_response("MoveItem")
    ids = _children(require(req, m("ItemIds")))
    try:
        target = resolve_folder(ctx, require(req, m("ToFolderId")))
    except EwsError as e:
        for _ in ids:
            error_message(messages, "MoveItem", e)
        return resp
    results: list[tuple[dict | None, EwsError | None]] = []
    with ctx.store.write() as tx:
        for iid in ids:
            try:
                item = resolve_item(ctx, iid)
                if item["mailbox"] != target["mailbox"]:
                    raise EwsError("ErrorCrossMailboxMoveCopy", "Cross-mailbox moves are not supported.")
                tx.move_item(item, target["id"])
                results.append((item, None))
            except EwsError as e:
                results.append((None, e))
    for item, err in results:
        if err is not None:
            error_message(messages, "MoveItem", err)
            continue
        msg = ok_message(messages, "MoveItem")
        etree.SubElement(msg, m("Items")).append(_id_only(item))
    return resp
