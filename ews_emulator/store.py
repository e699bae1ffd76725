"""The emulator's mailbox store: folders, items and a change journal in one SQLite file.

Used by every operation module (items/folders here, and sync_ops/notify_ops, which read the
journal and register ``Store.listeners`` to wake subscriptions). Every mutation goes through
``Store.write()``, a single IMMEDIATE transaction per request that also appends the journal rows,
so a crash can never leave an item change without its journal entry (sync states stay exact).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from . import text_index

SCHEMA = """
CREATE TABLE IF NOT EXISTS folders (
    id TEXT PRIMARY KEY,
    mailbox TEXT NOT NULL,
    parent_id TEXT,
    distinguished TEXT,
    display_name TEXT NOT NULL,
    folder_class TEXT,
    change_key TEXT NOT NULL,
    created TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS folders_parent ON folders(parent_id);
CREATE UNIQUE INDEX IF NOT EXISTS folders_distinguished ON folders(mailbox, distinguished)
    WHERE distinguished IS NOT NULL;
CREATE TABLE IF NOT EXISTS items (
    id TEXT PRIMARY KEY,
    mailbox TEXT NOT NULL,
    folder_id TEXT NOT NULL,
    change_key TEXT NOT NULL,
    item_class TEXT NOT NULL,
    data TEXT NOT NULL,
    created TEXT NOT NULL,
    modified TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS items_folder ON items(folder_id, created);
CREATE TABLE IF NOT EXISTS journal (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    mailbox TEXT NOT NULL,
    folder_id TEXT NOT NULL,
    item_id TEXT,
    kind TEXT NOT NULL,
    change_key TEXT,
    old_folder_id TEXT,
    ts TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS journal_mailbox_folder ON journal(mailbox, folder_id, seq);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS folder_props (
    folder_id TEXT NOT NULL,
    key TEXT NOT NULL,
    rec TEXT NOT NULL,
    PRIMARY KEY (folder_id, key)
);
"""

# Folder tree created for every new mailbox: (distinguished id, display name, folder class, parent).
DEFAULT_TREE: list[tuple[str, str, str | None, str | None]] = [
    # Exchange names the mailbox root "root" (exchangelib's live suite: root.tree() starts with
    # "root", calendar.absolute == "/root/<tois name>/Calendar"); msgfolderroot below it is
    # "Top of Information Store".
    ("root", "root", None, None),
    ("msgfolderroot", "Top of Information Store", "IPF.Note", "root"),
    ("inbox", "Inbox", "IPF.Note", "msgfolderroot"),
    ("outbox", "Outbox", "IPF.Note", "msgfolderroot"),
    ("sentitems", "Sent Items", "IPF.Note", "msgfolderroot"),
    ("drafts", "Drafts", "IPF.Note", "msgfolderroot"),
    ("deleteditems", "Deleted Items", "IPF.Note", "msgfolderroot"),
    ("junkemail", "Junk Email", "IPF.Note", "msgfolderroot"),
    ("calendar", "Calendar", "IPF.Appointment", "msgfolderroot"),
    ("contacts", "Contacts", "IPF.Contact", "msgfolderroot"),
    ("tasks", "Tasks", "IPF.Task", "msgfolderroot"),
    ("notes", "Notes", "IPF.StickyNote", "msgfolderroot"),
    ("journal", "Journal", "IPF.Journal", "msgfolderroot"),
    ("recoverableitemsroot", "Recoverable Items", None, "root"),
    ("recoverableitemsdeletions", "Deletions", None, "recoverableitemsroot"),
]


#: The store's name for the public folder tree (``--public-folders``): not an address, so no
#: mailbox can be called that. Its folders and items are reachable by every mailbox.
PUBLIC = "(public folders)"

#: Public folder tree: the root, and the hidden dumpster that soft-deleted items of public
#: folders go to (Exchange keeps them in the public folder's own dumpster, not in anyone's
#: Deleted Items).
PUBLIC_TREE: list[tuple[str, str, str | None, str | None]] = [
    ("publicfoldersroot", "IPM_SUBTREE", None, None),
    ("recoverableitemsdeletions", "Deletions", None, None),
]


def now_iso() -> str:
    """UTC now as Exchange writes it (second precision, Z suffix)."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def new_id(kind: bytes = b"\x00\x00\x00\x46") -> str:
    """An opaque, URL-unsafe base64 id shaped like Exchange's (AAMkA... style), unique by randomness."""
    return base64.b64encode(b"\x00\x00" + kind + os.urandom(30)).decode()


def new_change_key() -> str:
    """A fresh opaque ChangeKey; every modification gets a new one."""
    return base64.b64encode(b"\x16\x00\x00\x00" + os.urandom(11)).decode()


class Store:
    """SQLite-backed store. Reads use one connection per thread (WAL lets them run beside the
    writer); writes are serialized by a lock and run in one transaction each.

    ``listeners`` are called after each commit with the journal rows it wrote (list of dicts);
    notify_ops uses this to wake pull/streaming subscriptions.
    """

    def __init__(self, path: str) -> None:
        self.path = str(path)
        self.listeners: list[Callable[[list[dict]], None]] = []
        self._local = threading.local()
        self._write_lock = threading.Lock()
        self.generation = 0          # bumped after every committed write (read caches key on it)
        self._ids_cache: dict[str, tuple[int, list[tuple[str, str]]]] = {}
        self._indexes: set[str] = set()      # expression indexes known to exist (folder_items_by_ext)
        conn = self._conn()
        conn.executescript(SCHEMA)
        indexed = self.get_meta("item_text") == text_index.VERSION
        if not indexed:
            conn.execute("DROP TABLE IF EXISTS item_text")
        conn.executescript(text_index.SCHEMA)
        if not indexed:
            self._reindex_text()

    def _reindex_text(self) -> None:
        """Build the text index (``text_index``) of every stored item: a store made before it
        existed (or with an older form of it) gets it on first open."""
        with self.write() as tx:
            for item_id, folder_id, data in tx.conn.execute("SELECT id, folder_id, data FROM items").fetchall():
                text_index.index_item(tx.conn, item_id, folder_id, json.loads(data))
            tx.conn.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('item_text', ?)", (text_index.VERSION,))

    # -- connections ------------------------------------------------------------------------
    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30)
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA foreign_keys=OFF")
            self._local.conn = conn
        return conn

    def execute(self, sql: str, params: tuple | list = ()) -> sqlite3.Cursor:
        """Run a read (or a DDL for extension tables) on this thread's connection."""
        return self._conn().execute(sql, params)

    def close(self) -> None:
        """Close this thread's connection (other threads' connections close with their thread)."""
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    @contextmanager
    def write(self) -> Iterator[WriteTx]:
        """One write transaction; journal rows written inside are handed to ``listeners`` after
        commit."""
        with self._write_lock:
            conn = self._conn()
            conn.execute("BEGIN IMMEDIATE")
            tx = WriteTx(self, conn)
            try:
                yield tx
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
            self.generation += 1
        if tx.journal_rows:
            for listener in list(self.listeners):
                try:
                    listener(tx.journal_rows)
                except Exception:  # noqa: BLE001 - a broken subscriber must not fail the write
                    pass

    # -- meta -------------------------------------------------------------------------------
    def get_meta(self, key: str) -> str | None:
        row = self.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return row[0] if row else None

    def set_meta(self, key: str, value: str) -> None:
        with self._write_lock:
            self._conn().execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (key, value))

    # -- mailboxes --------------------------------------------------------------------------
    def ensure_mailbox(self, mailbox: str) -> None:
        """Create the default folder tree for ``mailbox`` unless it exists (idempotent)."""
        mailbox = mailbox.lower()
        root = self.distinguished_folder(mailbox, "root")
        if root is not None:
            if root["display_name"] == "Top of Information Store":   # stores made before the rename
                with self.write() as tx:
                    tx.update_folder(root, display_name="root")
            return
        with self.write() as tx:
            ids: dict[str, str] = {}
            for dist, name, cls, parent in DEFAULT_TREE:
                folder = tx.insert_folder(mailbox, ids.get(parent) if parent else None, name, cls, dist,
                                          journal=False)
                ids[dist] = folder["id"]

    def ensure_public_folders(self) -> None:
        """Create the (empty) public folder tree unless it exists (idempotent)."""
        if self.distinguished_folder(PUBLIC, "publicfoldersroot") is not None:
            return
        with self.write() as tx:
            for dist, name, cls, _parent in PUBLIC_TREE:
                tx.insert_folder(PUBLIC, None, name, cls, dist, journal=False)

    def mailboxes(self) -> list[str]:
        return [r[0] for r in self.execute("SELECT DISTINCT mailbox FROM folders WHERE mailbox != ?", (PUBLIC,))]

    # -- folders ----------------------------------------------------------------------------
    def get_folder(self, folder_id: str) -> dict | None:
        """The folder row as a dict (id, mailbox, parent_id, distinguished, display_name,
        folder_class, change_key, created), or None."""
        row = self.execute("SELECT * FROM folders WHERE id=?", (folder_id,)).fetchone()
        return dict(row) if row else None

    def distinguished_folder(self, mailbox: str, name: str) -> dict | None:
        row = self.execute("SELECT * FROM folders WHERE mailbox=? AND distinguished=?",
                           (mailbox.lower(), name)).fetchone()
        return dict(row) if row else None

    def child_folders(self, folder_id: str, deep: bool = False) -> list[dict]:
        """Direct children (or, with deep, every descendant in depth-first order)."""
        rows = [dict(r) for r in self.execute(
            "SELECT * FROM folders WHERE parent_id=? ORDER BY created, rowid", (folder_id,))]
        if not deep:
            return rows
        out: list[dict] = []
        for r in rows:
            out.append(r)
            out.extend(self.child_folders(r["id"], deep=True))
        return out

    def folder_ext(self, folder_id: str) -> dict[str, dict]:
        """The folder's extended properties: {key: record} as contact_xml.parse_extended makes them."""
        return {r[0]: json.loads(r[1]) for r in self.execute(
            "SELECT key, rec FROM folder_props WHERE folder_id=?", (folder_id,))}

    def folder_unread_count(self, folder_id: str) -> int:
        """Items of the folder whose IsRead is false."""
        return self.execute("SELECT COUNT(*) FROM items WHERE folder_id=? AND"
                            " json_extract(data, '$.t.IsRead')='false'", (folder_id,)).fetchone()[0]

    def folder_counts(self, folder_id: str) -> tuple[int, int]:
        """(item count, child folder count)."""
        items = self.execute("SELECT COUNT(*) FROM items WHERE folder_id=?", (folder_id,)).fetchone()[0]
        kids = self.execute("SELECT COUNT(*) FROM folders WHERE parent_id=?", (folder_id,)).fetchone()[0]
        return items, kids

    # -- items ------------------------------------------------------------------------------
    @staticmethod
    def _item(row: sqlite3.Row) -> dict:
        d = dict(row)
        d["data"] = json.loads(d["data"])
        return d

    def get_item(self, item_id: str) -> dict | None:
        """The item as a dict (id, mailbox, folder_id, change_key, item_class, data, created,
        modified) where data is the field dict described in contact_xml, or None."""
        row = self.execute("SELECT * FROM items WHERE id=?", (item_id,)).fetchone()
        return self._item(row) if row else None

    def get_items(self, item_ids: list[str]) -> list[dict]:
        """The stored items among ``item_ids``, in the order given (missing ids skipped)."""
        found: dict[str, dict] = {}
        for start in range(0, len(item_ids), 500):
            batch = item_ids[start:start + 500]
            marks = ",".join("?" * len(batch))
            for r in self.execute(f"SELECT * FROM items WHERE id IN ({marks})", batch):
                found[r["id"]] = self._item(r)
        return [found[i] for i in item_ids if i in found]

    def folder_items(self, folder_id: str) -> list[dict]:
        """Every item of the folder in creation order."""
        return [self._item(r) for r in self.execute(
            "SELECT * FROM items WHERE folder_id=? ORDER BY created, rowid", (folder_id,))]

    def folder_item_ids(self, folder_id: str) -> list[tuple[str, str]]:
        """(id, change_key) of every item in the folder, cheap (no JSON decoding); cached until the
        next write so paging through a large folder stays linear."""
        gen = self.generation
        hit = self._ids_cache.get(folder_id)
        if hit is not None and hit[0] == gen:
            return hit[1]
        ids = [(r[0], r[1]) for r in self.execute(
            "SELECT id, change_key FROM items WHERE folder_id=? ORDER BY created, rowid", (folder_id,))]
        if len(self._ids_cache) > 64:
            self._ids_cache.clear()
        self._ids_cache[folder_id] = (gen, ids)
        return ids

    def folder_items_by_ext(self, folder_id: str, ext_keys: list[str], value: str) -> list[dict] | None:
        """The items of the folder whose stored extended property (one of ``ext_keys``, the keys
        ``contact_xml.ext_key`` makes) has the text ``value``, compared ASCII case-insensitively,
        in creation order; None when that cannot be answered from an index (a key or value this
        lookup does not handle: the caller then scans). Each key gets an expression index on
        (folder, lower(value)) the first time it is looked up, so a lookup by a stamp costs a
        B-tree search, not a pass over the folder. A superset at worst: callers still test
        every item they get against the full filter."""
        if not value.isascii() or any(not k or any(ch in k for ch in "\"'\\") for k in ext_keys):
            return None
        rows: dict[str, tuple] = {}
        for key in ext_keys:
            expr = f"lower(json_extract(data, '$.ext.\"{key}\".v'))"
            self._ensure_index(f"items_ext_{hashlib.sha1(key.encode()).hexdigest()[:16]}", f"folder_id, {expr}")
            for r in self.execute(f"SELECT rowid AS _rowid, * FROM items WHERE folder_id=? AND {expr}=?",
                                  (folder_id, value.lower())):
                item = self._item(r)
                rows[item["id"]] = (item["created"], item.pop("_rowid"), item)
        return [entry[2] for entry in sorted(rows.values(), key=lambda e: (e[0], e[1]))]

    def _ensure_index(self, name: str, columns: str) -> None:
        if name in self._indexes:
            return
        with self._write_lock:
            self._conn().execute(f"CREATE INDEX IF NOT EXISTS {name} ON items({columns})")
            self._indexes.add(name)

    # -- journal ----------------------------------------------------------------------------
    def journal_since(self, mailbox: str, seq: int, folder_id: str | None = None) -> list[dict]:
        """Journal rows of ``mailbox`` with seq > ``seq`` (optionally one folder), in order."""
        if folder_id is None:
            cur = self.execute("SELECT * FROM journal WHERE mailbox=? AND seq>? ORDER BY seq",
                               (mailbox.lower(), seq))
        else:
            cur = self.execute(
                "SELECT * FROM journal WHERE mailbox=? AND folder_id=? AND seq>? ORDER BY seq",
                (mailbox.lower(), folder_id, seq))
        return [dict(r) for r in cur]

    def last_seq(self) -> int:
        row = self.execute("SELECT MAX(seq) FROM journal").fetchone()
        return row[0] or 0


class WriteTx:
    """Mutations inside one ``Store.write()`` transaction; each writes its journal row."""

    def __init__(self, store: Store, conn: sqlite3.Connection) -> None:
        self.store = store
        self.conn = conn
        self.journal_rows: list[dict] = []
        self.ts = now_iso()

    def _journal(self, mailbox: str, folder_id: str, item_id: str | None, kind: str,
                 change_key: str | None, old_folder_id: str | None = None) -> None:
        cur = self.conn.execute(
            "INSERT INTO journal(mailbox, folder_id, item_id, kind, change_key, old_folder_id, ts)"
            " VALUES (?,?,?,?,?,?,?)", (mailbox, folder_id, item_id, kind, change_key, old_folder_id, self.ts))
        self.journal_rows.append({"seq": cur.lastrowid, "mailbox": mailbox, "folder_id": folder_id,
                                  "item_id": item_id, "kind": kind, "change_key": change_key,
                                  "old_folder_id": old_folder_id, "ts": self.ts})

    # -- folders ----------------------------------------------------------------------------
    def insert_folder(self, mailbox: str, parent_id: str | None, display_name: str,
                      folder_class: str | None, distinguished: str | None = None,
                      journal: bool = True) -> dict:
        folder = {"id": new_id(b"\x00\x00\x00\x01"), "mailbox": mailbox.lower(), "parent_id": parent_id,
                  "distinguished": distinguished, "display_name": display_name,
                  "folder_class": folder_class, "change_key": new_change_key(), "created": self.ts}
        self.conn.execute(
            "INSERT INTO folders(id, mailbox, parent_id, distinguished, display_name, folder_class,"
            " change_key, created) VALUES (:id,:mailbox,:parent_id,:distinguished,:display_name,"
            ":folder_class,:change_key,:created)", folder)
        if journal:
            self._journal(folder["mailbox"], folder["id"], None, "folder_create", folder["change_key"])
        return folder

    def update_folder(self, folder: dict, **changes: Any) -> str:
        ck = new_change_key()
        sets = ", ".join(f"{k}=?" for k in changes)
        params = [*changes.values(), ck, folder["id"]]
        self.conn.execute(f"UPDATE folders SET {sets}{', ' if sets else ''}change_key=? WHERE id=?", params)
        self._journal(folder["mailbox"], folder["id"], None, "folder_update", ck)
        return ck

    def set_folder_ext(self, folder_id: str, key: str, rec: dict | None) -> None:
        """Set (or, with None, remove) one extended property of a folder; the caller journals the
        folder's update (``update_folder``)."""
        if rec is None:
            self.conn.execute("DELETE FROM folder_props WHERE folder_id=? AND key=?", (folder_id, key))
        else:
            self.conn.execute("INSERT OR REPLACE INTO folder_props(folder_id, key, rec) VALUES (?,?,?)",
                              (folder_id, key, json.dumps(rec, ensure_ascii=False)))

    def delete_folder(self, folder: dict) -> None:
        """Delete a folder, its subfolders and their items (journalling every removal)."""
        for child in self.store.child_folders(folder["id"]):
            self.delete_folder(child)
        for (item_id,) in self.conn.execute("SELECT id FROM items WHERE folder_id=?", (folder["id"],)).fetchall():
            self.conn.execute("DELETE FROM items WHERE id=?", (item_id,))
            self.conn.execute("DELETE FROM item_text WHERE item_id=?", (item_id,))
            self._journal(folder["mailbox"], folder["id"], item_id, "delete", None)
        self.conn.execute("DELETE FROM folders WHERE id=?", (folder["id"],))
        self.conn.execute("DELETE FROM folder_props WHERE folder_id=?", (folder["id"],))
        self._journal(folder["mailbox"], folder["id"], None, "folder_delete", None)

    # -- items ------------------------------------------------------------------------------
    def insert_item(self, mailbox: str, folder_id: str, item_class: str, data: dict) -> dict:
        item = {"id": new_id(), "mailbox": mailbox.lower(), "folder_id": folder_id,
                "change_key": new_change_key(), "item_class": item_class,
                "data": data, "created": self.ts, "modified": self.ts}
        self.conn.execute(
            "INSERT INTO items(id, mailbox, folder_id, change_key, item_class, data, created, modified)"
            " VALUES (?,?,?,?,?,?,?,?)",
            (item["id"], item["mailbox"], folder_id, item["change_key"], item_class,
             json.dumps(data, ensure_ascii=False, separators=(",", ":")), self.ts, self.ts))
        text_index.index_item(self.conn, item["id"], folder_id, data)
        self._journal(item["mailbox"], folder_id, item["id"], "create", item["change_key"])
        return item

    def update_item(self, item: dict, data: dict) -> str:
        """Replace the item's data; returns (and sets on ``item``) the new ChangeKey."""
        ck = new_change_key()
        self.conn.execute("UPDATE items SET data=?, change_key=?, modified=? WHERE id=?",
                          (json.dumps(data, ensure_ascii=False, separators=(",", ":")), ck, self.ts,
                           item["id"]))
        item.update(data=data, change_key=ck, modified=self.ts)
        text_index.index_item(self.conn, item["id"], item["folder_id"], data)
        self._journal(item["mailbox"], item["folder_id"], item["id"], "update", ck)
        return ck

    def move_item(self, item: dict, folder_id: str) -> str:
        """Move keeping the ItemId; journals delete (old folder) + create (new folder)."""
        ck = new_change_key()
        old = item["folder_id"]
        self.conn.execute("UPDATE items SET folder_id=?, change_key=?, modified=? WHERE id=?",
                          (folder_id, ck, self.ts, item["id"]))
        self.conn.execute("UPDATE item_text SET folder_id=? WHERE item_id=?", (folder_id, item["id"]))
        self._journal(item["mailbox"], old, item["id"], "delete", None)
        self._journal(item["mailbox"], folder_id, item["id"], "create", ck, old_folder_id=old)
        item.update(folder_id=folder_id, change_key=ck, modified=self.ts)
        return ck

    def delete_item(self, item: dict) -> None:
        self.conn.execute("DELETE FROM items WHERE id=?", (item["id"],))
        self.conn.execute("DELETE FROM item_text WHERE item_id=?", (item["id"],))
        self._journal(item["mailbox"], item["folder_id"], item["id"], "delete", None)
