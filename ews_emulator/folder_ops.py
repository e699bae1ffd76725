"""Folder operations: GetFolder, FindFolder, CreateFolder, DeleteFolder, UpdateFolder, MoveFolder,
EmptyFolder."""

from __future__ import annotations

from lxml import etree

from .contact_xml import ext_key, folder_tag, folder_to_xml, localname, parse_extended, parse_shape
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
    sh = parse_shape(shape)
    return folder_to_xml(folder, sh, ctx.store.folder_counts(folder["id"]),
                         ext=ctx.store.folder_ext(folder["id"]) if sh.ext else None,
                         unread=ctx.store.folder_unread_count(folder["id"]))


def _sibling_named(ctx: Context, parent_id: str, name: str, other_than: str | None = None) -> bool:
    return any(f["display_name"].casefold() == name.casefold() and f["id"] != other_than
               for f in ctx.store.child_folders(parent_id))


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
            if _sibling_named(ctx, parent["id"], name):
                raise EwsError("ErrorFolderExists", "A folder with the specified name already exists.")
            props = [parse_extended(c) for c in fe if isinstance(c.tag, str) and localname(c.tag) == "ExtendedProperty"]
            with ctx.store.write() as tx:
                folder = tx.insert_folder(parent["mailbox"], parent["id"], name, cls)
                for key, rec in props:
                    tx.set_folder_ext(folder["id"], key, rec)
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
                trash = None
                if delete_type == "MoveToDeletedItems":
                    trash = ctx.store.distinguished_folder(folder["mailbox"], "deleteditems")
                if delete_type == "MoveToDeletedItems" and trash is not None:
                    tx.update_folder(folder, parent_id=trash["id"])
                else:   # HardDelete, SoftDelete, or a public folder (no Deleted Items)
                    tx.delete_folder(folder)
        except EwsError as e:
            error_message(messages, "DeleteFolder", e)
            continue
        ok_message(messages, "DeleteFolder")
    return resp


@operation("UpdateFolder")
def update_folder(ctx: Context, req: etree._Element) -> etree._Element:
    """SetFolderField/DeleteFolderField on DisplayName, FolderClass and extended properties.
    A new name that a sibling already has is ErrorFolderExists, as on CreateFolder; other
    properties are ErrorInvalidPropertySet (read-only or not kept by the emulator)."""
    resp, messages = new_response("UpdateFolder")
    for change in require(req, m("FolderChanges")):
        if not isinstance(change.tag, str):
            continue
        try:
            fid = next(c for c in change if isinstance(c.tag, str) and localname(c.tag) in
                       ("FolderId", "DistinguishedFolderId"))
            folder = resolve_folder(ctx, fid)
            changes: dict = {}
            ext_changes: dict[str, dict | None] = {}
            for upd in require(change, t("Updates")):
                if not isinstance(upd.tag, str):
                    continue
                deleting = localname(upd.tag) == "DeleteFolderField"
                uri = next((c for c in upd if isinstance(c.tag, str) and
                            localname(c.tag) in ("FieldURI", "ExtendedFieldURI")), None)
                if uri is not None and localname(uri.tag) == "ExtendedFieldURI":
                    if deleting:
                        ext_changes[ext_key(dict(uri.attrib))] = None
                    else:
                        holder = upd[-1]
                        ep = holder.find(t("ExtendedProperty"))
                        if ep is None:
                            raise EwsError("ErrorIncorrectUpdatePropertyCount",
                                           "An object within a change description must contain one and only one"
                                           " property to modify.")
                        key, rec = parse_extended(ep)
                        ext_changes[key] = rec
                    continue
                key = FOLDER_URIS.get(uri.get("FieldURI", "")) if uri is not None else None
                if key not in ("display_name", "folder_class"):
                    raise EwsError("ErrorInvalidPropertySet", "Only DisplayName and FolderClass can be updated.")
                if deleting:
                    changes[key] = None if key == "folder_class" else folder[key]
                else:
                    holder = upd[-1]
                    changes[key] = holder.findtext(t("DisplayName" if key == "display_name" else "FolderClass"))
            new_name = changes.get("display_name")
            if new_name is not None and folder["parent_id"] and \
                    _sibling_named(ctx, folder["parent_id"], new_name, other_than=folder["id"]):
                raise EwsError("ErrorFolderExists", "A folder with the specified name already exists.")
            with ctx.store.write() as tx:
                for key, rec in ext_changes.items():
                    tx.set_folder_ext(folder["id"], key, rec)
                ck = tx.update_folder(folder, **changes)
        except EwsError as e:
            error_message(messages, "UpdateFolder", e)
            continue
        msg = ok_message(messages, "UpdateFolder")
        out = etree.SubElement(etree.SubElement(msg, m("Folders")), t(folder_tag(folder.get("folder_class"))))
        etree.SubElement(out, t("FolderId"), Id=folder["id"], ChangeKey=ck)
    return resp


def _is_inside(ctx: Context, folder_id: str, ancestor_id: str) -> bool:
    """True when ``folder_id`` is ``ancestor_id`` or below it."""
    seen = set()
    while folder_id and folder_id not in seen:
        if folder_id == ancestor_id:
            return True
        seen.add(folder_id)
        f = ctx.store.get_folder(folder_id)
        folder_id = f["parent_id"] if f else None
    return False


@operation("MoveFolder")
def move_folder(ctx: Context, req: etree._Element) -> etree._Element:
    """Move folders (with their items and subfolders) under ToFolderId. The FolderId stays (a
    folder's entry id survives a move inside its mailbox); the ChangeKey changes. Distinguished
    folders: ErrorMoveDistinguishedFolder; into itself or below itself: ErrorMoveCopyFailed; a
    sibling of the same name at the target: ErrorFolderExists."""
    resp, messages = new_response("MoveFolder")
    ids = [c for c in require(req, m("FolderIds")) if isinstance(c.tag, str)]
    try:
        target = resolve_folder(ctx, require(req, m("ToFolderId")))
    except EwsError as e:
        for _ in ids:
            error_message(messages, "MoveFolder", e)
        return resp
    for fid in ids:
        try:
            folder = resolve_folder(ctx, fid)
            if folder["distinguished"]:
                raise EwsError("ErrorMoveDistinguishedFolder", "Cannot move distinguished folder.")
            if folder["mailbox"] != target["mailbox"]:
                raise EwsError("ErrorCrossMailboxMoveCopy", "Cross-mailbox moves are not supported.")
            if _is_inside(ctx, target["id"], folder["id"]):
                raise EwsError("ErrorMoveCopyFailed", "The move or copy operation failed.")
            if _sibling_named(ctx, target["id"], folder["display_name"], other_than=folder["id"]):
                raise EwsError("ErrorFolderExists", "A folder with the specified name already exists.")
            with ctx.store.write() as tx:
                ck = tx.update_folder(folder, parent_id=target["id"])
        except EwsError as e:
            error_message(messages, "MoveFolder", e)
            continue
        msg = ok_message(messages, "MoveFolder")
        out = etree.SubElement(etree.SubElement(msg, m("Folders")), t(folder_tag(folder.get("folder_class"))))
        etree.SubElement(out, t("FolderId"), Id=folder["id"], ChangeKey=ck)
    return resp


@operation("EmptyFolder")
def empty_folder(ctx: Context, req: etree._Element) -> etree._Element:
    """Delete every item of the folders (DeleteType HardDelete, SoftDelete to the dumpster,
    MoveToDeletedItems) and, with DeleteSubFolders="true", their subfolders. A folder with a
    distinguished folder below it cannot have its subfolders deleted: ErrorCannotEmptyFolder."""
    delete_type = req.get("DeleteType", "HardDelete")
    with_subfolders = (req.get("DeleteSubFolders") or "false").lower() in ("true", "1")
    resp, messages = new_response("EmptyFolder")
    for fid in require(req, m("FolderIds")):
        if not isinstance(fid.tag, str):
            continue
        try:
            folder = resolve_folder(ctx, fid)
            subfolders = ctx.store.child_folders(folder["id"]) if with_subfolders else []
            if any(f["distinguished"] for f in ctx.store.child_folders(folder["id"], deep=True)) and with_subfolders:
                raise EwsError("ErrorCannotEmptyFolder", "The folder cannot be emptied.")
            with ctx.store.write() as tx:
                trash = None
                if delete_type == "SoftDelete":
                    trash = ctx.store.distinguished_folder(folder["mailbox"], "recoverableitemsdeletions")
                elif delete_type == "MoveToDeletedItems":
                    trash = ctx.store.distinguished_folder(folder["mailbox"], "deleteditems")
                for item in ctx.store.folder_items(folder["id"]):
                    if trash is None or trash["id"] == folder["id"]:
                        tx.delete_item(item)
                    else:
                        tx.move_item(item, trash["id"])
                for sub in subfolders:
                    if delete_type == "MoveToDeletedItems" and trash is not None and trash["id"] != folder["id"]:
                        tx.update_folder(sub, parent_id=trash["id"])
                    else:
                        tx.delete_folder(sub)
        except EwsError as e:
            error_message(messages, "EmptyFolder", e)
            continue
        ok_message(messages, "EmptyFolder")
    return resp
