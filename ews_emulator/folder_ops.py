"""Folder operations: GetFolder, FindFolder, CreateFolder, DeleteFolder, UpdateFolder."""

from __future__ import annotations

from lxml import etree

from .contact_xml import folder_to_xml, localname, parse_shape
from .folders import resolve_folder
from .registry import Context, EwsError, m, operation, t
from .restrictions import compile_restriction
from .soap import error_message, new_response, ok_message, require

FOLDER_URIS = {"folder:DisplayName": "display_name", "folder:FolderClass": "folder_class",
               "folder:FolderId": "id", "folder:ParentFolderId": "parent_id"}


def folder_field(folder: dict, uri: etree._Element):
    key = FOLDER_URIS.get(uri.get("FieldURI", ""))
    return folder.get(key) if key else None


def page(objs: list, view: etree._Element | None) -> tuple[list, int, bool]:
    """Apply an IndexedPage*View: (page, next offset, includes last item)."""
    total = len(objs)
    if view is None:
        return objs, total, True
    max_entries = int(view.get("MaxEntriesReturned") or total or 1)
    offset = int(view.get("Offset") or 0)
    if view.get("BasePoint") == "End":
        end = max(total - offset, 0)
        start = max(end - max_entries, 0)
        chunk = objs[start:end]
        return chunk, offset + len(chunk), start == 0
    chunk = objs[offset:offset + max_entries]
    nxt = offset + len(chunk)
    return chunk, nxt, nxt >= total


def _folder_elem(ctx: Context, folder: dict, shape) -> etree._Element:
    return folder_to_xml(folder, shape, ctx.store.folder_counts(folder["id"]))


@operation("GetFolder")
def get_folder(ctx: Context, req: etree._Element) -> etree._Element:
    shape = parse_shape(req.find(m("FolderShape")))
    resp, messages = new_response("GetFolder")
    for fid in require(req, m("FolderIds")):
        if not isinstance(fid.tag, str):
            continue
        try:
            folder = resolve_folder(ctx, fid)
        except EwsError as e:
            error_message(messages, "GetFolder", e)
            continue
        msg = ok_message(messages, "GetFolder")
        etree.SubElement(msg, m("Folders")).append(_folder_elem(ctx, folder, shape))
    return resp


@operation("FindFolder")
def find_folder(ctx: Context, req: etree._Element) -> etree._Element:
    shape = parse_shape(req.find(m("FolderShape")))
    deep = req.get("Traversal", "Shallow") == "Deep"
    pred = compile_restriction(req.find(m("Restriction")), folder_field)
    view = req.find(m("IndexedPageFolderView"))
    resp, messages = new_response("FindFolder")
    for fid in require(req, m("ParentFolderIds")):
        if not isinstance(fid.tag, str):
            continue
        try:
            parent = resolve_folder(ctx, fid)
        except EwsError as e:
            error_message(messages, "FindFolder", e)
            continue
        folders = [f for f in ctx.store.child_folders(parent["id"], deep=deep) if pred(f)]
        chunk, nxt, last = page(folders, view)
        msg = ok_message(messages, "FindFolder")
        rf = etree.SubElement(msg, m("RootFolder"), IndexedPagingOffset=str(nxt),
                              TotalItemsInView=str(len(folders)),
                              IncludesLastItemInRange="true" if last else "false")
        container = etree.SubElement(rf, t("Folders"))
        for f in chunk:
            container.append(_folder_elem(ctx, f, shape))
    return resp


DEFAULT_CLASS_BY_TAG = {"ContactsFolder": "IPF.Contact", "CalendarFolder": "IPF.Appointment",
                        "TasksFolder": "IPF.Task", "Folder": "IPF.Note", "SearchFolder": "IPF.Note"}


@operation("CreateFolder")
def create_folder(ctx: Context, req: etree._Element) -> etree._Element:
    resp, messages = new_response("CreateFolder")
    try:
        parent = resolve_folder(ctx, require(req, m("ParentFolderId")))
    except EwsError as e:
        for _ in require(req, m("Folders")):
            error_message(messages, "CreateFolder", e)
        return resp
    for fe in require(req, m("Folders")):
        if not isinstance(fe.tag, str):
            continue
        name = fe.findtext(t("DisplayName")) or ""
        cls = fe.findtext(t("FolderClass")) or DEFAULT_CLASS_BY_TAG.get(localname(fe.tag), "IPF.Note")
        try:
            if not name:
                raise EwsError("ErrorSchemaValidation", "A folder needs a DisplayName.")
            if any(f["display_name"].casefold() == name.casefold()
                   for f in ctx.store.child_folders(parent["id"])):
                raise EwsError("ErrorFolderExists", "A folder with the specified name already exists.")
            with ctx.store.write() as tx:
                folder = tx.insert_folder(parent["mailbox"], parent["id"], name, cls)
        except EwsError as e:
            error_message(messages, "CreateFolder", e)
            continue
        msg = ok_message(messages, "CreateFolder")
        out = etree.SubElement(etree.SubElement(msg, m("Folders")), fe.tag)
        etree.SubElement(out, t("FolderId"), Id=folder["id"], ChangeKey=folder["change_key"])
    return resp


@operation("DeleteFolder")
def delete_folder(ctx: Context, req: etree._Element) -> etree._Element:
    delete_type = req.get("DeleteType", "HardDelete")
    resp, messages = new_response("DeleteFolder")
    for fid in require(req, m("FolderIds")):
        if not isinstance(fid.tag, str):
            continue
        try:
            folder = resolve_folder(ctx, fid)
            if folder["distinguished"]:
                raise EwsError("ErrorDeleteDistinguishedFolder", "Distinguished folders cannot be deleted.")
            with ctx.store.write() as tx:
                if delete_type == "MoveToDeletedItems":
                    trash = ctx.store.distinguished_folder(folder["mailbox"], "deleteditems")
                    tx.update_folder(folder, parent_id=trash["id"])
                else:
                    tx.delete_folder(folder)
        except EwsError as e:
            error_message(messages, "DeleteFolder", e)
            continue
        ok_message(messages, "DeleteFolder")
    return resp


@operation("UpdateFolder")
def update_folder(ctx: Context, req: etree._Element) -> etree._Element:
    resp, messages = new_response("UpdateFolder")
    for change in require(req, m("FolderChanges")):
        if not isinstance(change.tag, str):
            continue
        try:
            fid = next(c for c in change if isinstance(c.tag, str) and localname(c.tag) in
                       ("FolderId", "DistinguishedFolderId"))
            folder = resolve_folder(ctx, fid)
            changes: dict = {}
            for upd in change.find(t("Updates")):
                if not isinstance(upd.tag, str):
                    continue
                uri = next((c for c in upd if localname(c.tag) == "FieldURI"), None)
                key = FOLDER_URIS.get(uri.get("FieldURI", "")) if uri is not None else None
                if key not in ("display_name", "folder_class"):
                    raise EwsError("ErrorInvalidPropertySet", "Only DisplayName and FolderClass can be updated.")
                if localname(upd.tag) == "DeleteFolderField":
                    changes[key] = None if key == "folder_class" else folder[key]
                else:
                    holder = upd[-1]
                    changes[key] = holder.findtext(t("DisplayName" if key == "display_name" else "FolderClass"))
            with ctx.store.write() as tx:
                ck = tx.update_folder(folder, **changes)
        except EwsError as e:
            error_message(messages, "UpdateFolder", e)
            continue
        msg = ok_message(messages, "UpdateFolder")
        out = etree.SubElement(etree.SubElement(msg, m("Folders")), t("Folder"))
        etree.SubElement(out, t("FolderId"), Id=folder["id"], ChangeKey=ck)
    return resp

