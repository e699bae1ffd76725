"""The CRM side on the reference schema, through SQLAlchemy Core (SQLite or PostgreSQL).

``updated_at`` is never written here: the triggers (``schemas.crm_triggers``) set it from the
database clock in UTC on every change, crmsync's own included, and ``modified_at`` reports it as
an aware UTC datetime.

Every write is one short transaction that re-reads the row and checks its version token first
(optimistic concurrency, DESIGN.md §3): on SQLite under ``BEGIN IMMEDIATE``, on PostgreSQL with
``SELECT ... FOR UPDATE``. No transaction is held across calls or network I/O.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import secrets
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any, Literal

from sqlalchemy import (
    Connection,
    Engine,
    LargeBinary,
    Select,
    and_,
    bindparam,
    cast,
    delete,
    exists,
    func,
    or_,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError

from crmsync.adapters.database import read_tx, write_tx
from crmsync.core.crm_mapping import (
    account_to_canonical,
    canonical_to_account_columns,
    canonical_to_contact_columns,
    contact_to_canonical,
)
from crmsync.core.matching import SearchTerms, fold
from crmsync.errors import BadRecord, Stale
from crmsync.ports import Changes, CrmRecord
from schemas.canonical import account_no_problem, crm_key, parse_crm_key
from schemas.crm_tables import accounts, contacts

#: IN-list size for batch reads (well under SQLite's bound-parameter limit).
BATCH = 500

_ACCOUNT_COLS = tuple(accounts.columns)
_CONTACT_COLS = tuple(contacts.columns)


def _version(row: Mapping[str, Any]) -> str:
    """sha256 of every column the row was read with (values as text, in column order)."""
    payload = json.dumps([[k, None if v is None else str(v)] for k, v in row.items()],
                         ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def _aware(ts: datetime | None) -> datetime | None:
    """``updated_at`` (naive UTC, kept by the triggers from the database clock) as aware UTC."""
    if ts is None:
        return None
    return ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts.astimezone(UTC)


def _contact_select() -> Select[Any]:
    # the account's company_name and account_no are part of a contact's canonical record/key
    return select(*_CONTACT_COLS, accounts.c.company_name.label("account_company_name"),
                  accounts.c.account_no.label("account_account_no")).join(
        accounts, accounts.c.id == contacts.c.account_id)


# built once: the worker reads a record on every event
_ACCOUNT_BY_NO = select(*_ACCOUNT_COLS).where(accounts.c.account_no == bindparam("no"))
_CONTACT_BY_ID = _contact_select().where(contacts.c.id == bindparam("cid"))
_ACCOUNT_BY_NO_LOCKED = _ACCOUNT_BY_NO.with_for_update()
_CONTACT_BY_ID_LOCKED = _CONTACT_BY_ID.with_for_update()  # locks the contact and its account


def _account_record(row: Mapping[str, Any]) -> CrmRecord:
    row = dict(row)
    problem = account_no_problem(row["account_no"])
    if problem is not None:
        raise BadRecord(f"accounts row id={row['id']}: {problem}")
    return CrmRecord(
        key=crm_key("account", row["account_no"]),
        record=account_to_canonical(row),
        version=_version(row),
        active=bool(row["is_active"]),
        modified_at=_aware(row["updated_at"]),
    )


def _contact_record(row: Mapping[str, Any]) -> CrmRecord:
    row = dict(row)
    company = row.pop("account_company_name")
    account_no = row.pop("account_account_no")
    problem = account_no_problem(account_no)
    if problem is not None:
        raise BadRecord(f"contact:{row['id']}: its account, accounts row id={row['account_id']}: {problem}")
    return CrmRecord(
        key=crm_key("contact", row["id"]),
        record=contact_to_canonical(row, company),
        version=_version({**row, "account_company_name": company}),
        active=True,
        modified_at=_aware(row["updated_at"]),
        account_key=crm_key("account", account_no),
    )


_PHONE_PUNCT = (" ", "-", "(", ")", ".", "/", "+")


def _digits_of(column: Any) -> Any:
    """The column with the usual phone punctuation removed (SQLite and PostgreSQL alike)."""
    for ch in _PHONE_PUNCT:
        column = func.replace(column, ch, "")
    return column


#: Characters the matcher's ``fold`` writes otherwise than SQL's lower() does, inside a word:
#: Latin letters with accents, either case (Latin-1 to Latin Extended-B, Latin Extended
#: Additional), ß, æ, ø, ł, þ, the usual combining marks (U+0300 to U+0331) and apostrophes,
#: which it drops. PostgreSQL folds with them; built on first use.
_FOLD_RANGES = ((0xC0, 0x250), (0x1E00, 0x1F00))
_DROPPED = "".join(map(chr, range(0x300, 0x332))) + "'’`"


@functools.cache
def _fold_map() -> tuple[tuple[str, str], ...]:
    out = []
    for lo, hi in _FOLD_RANGES:
        for c in map(chr, range(lo, hi)):
            folded = "".join(fold(c))
            if folded and folded != c.lower() and folded.isascii() and folded.isalnum():
                out.append((c, folded))
    return tuple(out) + tuple((c, "") for c in _DROPPED)


#: The SQL function SQLite folds with (registered on the connection of each search).
_SQLITE_FOLD = "crmsync_fold"


def _fold_text(value: str | None) -> str | None:
    """``value`` as the matcher folds it, its words joined by spaces (SQLite's ``crmsync_fold``)."""
    return None if value is None else " ".join(fold(value))


def _pg_folded(col: Any) -> Any:
    """PostgreSQL: ``col`` folded as the matcher folds it, all in the server: lower(), one
    translate() for the one-letter foldings (and the dropped marks), replace() for the few
    longer ones (ß, æ, œ, þ)."""
    pairs = _fold_map()
    single = [(c, f) for c, f in pairs if len(f) <= 1]
    src = "".join(c for c, f in single if f) + "".join(c for c, f in single if not f)
    expr = func.translate(func.lower(col), src, "".join(f for _, f in single if f))
    for c, f in pairs:
        if len(f) > 1:
            expr = func.replace(expr, c, f)
    return expr


def _sqlite_foldable(col: Any) -> Any:
    """SQLite: ``col`` may fold otherwise than lower() folds it: it holds a character outside
    ASCII (more bytes than characters) or an apostrophe. Only those values are folded in Python."""
    return or_(func.length(cast(col, LargeBinary)) != func.length(col), func.instr(col, "'") > 0,
               func.instr(col, "`") > 0)


def _folded_where(cols: list[Any], tokens: tuple[str, ...], plain: bool, dialect: str) -> Any:
    """Every folded word of ``tokens`` is held by one of ``cols`` folded as the matcher folds them
    (``matching.fold``: "Zoe" finds "Zoë" and "Zoë" finds "Zoe"). PostgreSQL folds in SQL
    (``_pg_folded``). SQLite has no translate() and too shallow a parser for a chain of
    replace(): the values that may fold otherwise than lower() (``_sqlite_foldable``, tested
    first) go through ``crmsync_fold`` (``matching.fold`` itself); in the other values lower()
    is the fold, and when the query's words are already its folded words (``plain``) the
    case-insensitive LIKE beside this condition finds them."""
    if dialect == "postgresql":
        return and_(*(or_(*(func.strpos(_pg_folded(c), w) > 0 for c in cols)) for w in tokens))
    folded = [getattr(func, _SQLITE_FOLD)(c) for c in cols]
    odd = or_(*(_sqlite_foldable(c) for c in cols))
    if plain:
        return and_(odd, *(or_(*(func.instr(f, w) > 0 for f in folded)) for w in tokens))
    return and_(*(or_(*(func.instr(func.lower(c), w) > 0 for c in cols),
                      and_(odd, or_(*(func.instr(f, w) > 0 for f in folded)))) for w in tokens))


def _search_where(table: Any, terms: SearchTerms, dialect: str) -> Any:
    """The WHERE of ``SqlCrm.search`` on ``accounts`` or ``contacts`` (a contact's company is its
    account's: a contact is found by its own name, e-mail or phone). Names and company are also
    compared folded (``_folded_where``), each folded word of the query as the matcher folds it."""
    cols = table.c
    parts = []
    if terms.words:
        names = [cols.first_name, cols.last_name]
        parts.append(and_(*(or_(*(c.icontains(w, autoescape=True) for c in names)) for w in terms.words)))
        if "company_name" in cols:
            parts.append(and_(*(cols.company_name.icontains(w, autoescape=True) for w in terms.words)))
        tokens = fold(terms.text)
        if tokens:
            plain = tokens == terms.words
            tokens = tuple(sorted(set(tokens), key=len, reverse=True))   # the rarest first: SQL stops early
            parts.append(_folded_where(names, tokens, plain, dialect))
            if "company_name" in cols:
                parts.append(_folded_where([cols.company_name], tokens, plain, dialect))
    mails = [c for c in (cols.get("email"), cols.get("email2")) if c is not None]
    parts.extend(c.icontains(terms.text, autoescape=True) for c in mails)
    if terms.digits:
        phones = [c for c in (cols.get(f) for f in ("phone_business", "phone_mobile", "phone_home", "fax"))
                  if c is not None]
        parts.extend(_digits_of(c).contains(terms.phone_tail, autoescape=True) for c in phones)
    return or_(*parts) if parts else None


def _contact_id(key: str, ident: str) -> int:
    try:
        return int(ident)
    except ValueError:
        raise BadRecord(f"CRM key {key!r}: a contact id must be an integer") from None


class SqlCrm:
    """``CrmSide`` over the reference schema (accounts + secondary contacts)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    # ----------------------------------------------------------------------------- reads
    def read(self, key: str) -> CrmRecord | None:
        with read_tx(self.engine) as conn:
            return self._read(conn, key)

    def read_many(self, keys: Iterable[str]) -> dict[str, CrmRecord]:
        """Batch read: key -> record for every key that exists (one query per 500 keys)."""
        account_nos: list[str] = []
        contact_ids: list[int] = []
        for key in keys:
            kind, ident = self._parse(key)
            if kind == "account":
                account_nos.append(ident)
            else:
                contact_ids.append(_contact_id(key, ident))
        out: dict[str, CrmRecord] = {}
        with read_tx(self.engine) as conn:
            for i in range(0, len(account_nos), BATCH):
                chunk = account_nos[i:i + BATCH]
                for row in conn.execute(select(*_ACCOUNT_COLS).where(accounts.c.account_no.in_(chunk))):
                    rec = _account_record(row._mapping)
                    out[rec.key] = rec
            for i in range(0, len(contact_ids), BATCH):
                chunk_ids = contact_ids[i:i + BATCH]
                for row in conn.execute(_contact_select().where(contacts.c.id.in_(chunk_ids))):
                    rec = _contact_record(row._mapping)
                    out[rec.key] = rec
        return out

    def find_similar(self, emails: Iterable[str], last_names: Iterable[str], limit: int = 200) -> dict[str, CrmRecord]:
        """Active accounts carrying one of ``emails`` (email or email2) or one of ``last_names``,
        case-insensitive: the candidates of a contact new in Outlook (an index-friendly query,
        never a scan in Python), at most ``limit``, by key."""
        mails = sorted({e.strip().lower() for e in emails if e and e.strip()})
        names = sorted({n.strip().lower() for n in last_names if n and n.strip()})
        if not mails and not names:
            return {}
        queries = []   # by e-mail first: a cut at ``limit`` drops last-name-only candidates
        if mails:
            queries.append(or_(func.lower(accounts.c.email).in_(mails), func.lower(accounts.c.email2).in_(mails)))
        if names:
            queries.append(func.lower(accounts.c.last_name).in_(names))
        out: dict[str, CrmRecord] = {}
        with read_tx(self.engine) as conn:
            for where in queries:
                query = (select(*_ACCOUNT_COLS).where(accounts.c.is_active.is_(True)).where(where)
                         .order_by(accounts.c.id).limit(limit))
                for row in conn.execute(query):
                    if len(out) >= limit:
                        return out
                    try:
                        rec = _account_record(row._mapping)
                    except BadRecord:
                        continue   # a bad row is reported when it is synced itself, not as a candidate
                    out.setdefault(rec.key, rec)
        return out

    def search(self, terms: SearchTerms, limit: int = 200, with_contacts: bool = True) -> dict[str, CrmRecord]:
        """Active accounts (then, ``with_contacts``, secondary contacts) whose name or company
        holds every word of ``terms``, whose e-mail holds its text, or whose phone holds the
        last digits of its number, case-insensitive: at most ``limit``, by key, in one SQL query
        per table with a LIMIT (the Link page's search; ``matching.search_fields`` then decides)."""
        out: dict[str, CrmRecord] = {}
        if not terms.text:
            return out
        tables: list[tuple[Any, Select[Any], Any]] = [
            (accounts, select(*_ACCOUNT_COLS).where(accounts.c.is_active.is_(True)), _account_record)]
        if with_contacts:
            tables.append((contacts, _contact_select(), _contact_record))
        for table, base, build in tables:
            where = _search_where(table, terms, self.engine.dialect.name)
            left = limit - len(out)
            if where is None or left <= 0:
                continue
            with read_tx(self.engine) as conn:
                if conn.dialect.name == "sqlite":
                    conn.connection.driver_connection.create_function(  # type: ignore[union-attr]
                        _SQLITE_FOLD, 1, _fold_text, deterministic=True)
                for row in conn.execute(base.where(where).order_by(table.c.id).limit(left)):
                    try:
                        rec = build(row._mapping)
                    except BadRecord:
                        continue   # reported when it is synced itself, not in a search
                    out[rec.key] = rec
        return out

    def all_keys(self, inactive: bool = False) -> list[str]:
        """Every active account's key (``inactive``: every account's), then every secondary
        contact's key (initial sync)."""
        query = select(accounts.c.account_no).order_by(accounts.c.id)
        if not inactive:
            query = query.where(accounts.c.is_active.is_(True))
        with read_tx(self.engine) as conn:
            acc = conn.execute(query).scalars()
            keys = [crm_key("account", no) for no in acc]
            con = conn.execute(select(contacts.c.id).order_by(contacts.c.id)).scalars()
            keys.extend(crm_key("contact", i) for i in con)
        return keys

    def contact_keys_of_account(self, account_no: str) -> list[str]:
        """The keys of an account's secondary contacts (an account change fans out to them,
        since their canonical record carries the account's company name)."""
        with read_tx(self.engine) as conn:
            ids = conn.execute(
                select(contacts.c.id).join(accounts, accounts.c.id == contacts.c.account_id)
                .where(accounts.c.account_no == account_no).order_by(contacts.c.id)
            ).scalars()
            return [crm_key("contact", i) for i in ids]

    def new_account_no(self) -> str:
        """A fresh, unused account_no for an account created from Exchange: ``EX-`` + 10 base32
        characters (50 random bits). The caller stamps it on the Exchange item before creating
        the row (DESIGN.md §3.1), so it must be unique before the row exists."""
        while True:
            candidate = "EX-" + base64.b32encode(secrets.token_bytes(10)).decode("ascii")[:10]
            with read_tx(self.engine) as conn:
                taken = conn.execute(select(exists().where(accounts.c.account_no == candidate))).scalar()
            if not taken:
                return candidate

    # ----------------------------------------------------------------------------- writes
    def update(self, key: str, changes: Changes, expect: str) -> CrmRecord:
        """Write ``changes`` (canonical field -> value) iff the row still has version ``expect``.

        Columns whose value is already the new one are not written; with nothing left to write
        the row is not touched at all (no new updated_at, no changelog row, no echo)."""
        kind, ident = self._parse(key)
        columns = self._columns(kind, key, changes)
        with write_tx(self.engine) as conn:
            current = self._read(conn, key, lock=True)
            if current is None:
                raise Stale(f"CRM record {key}: the row is gone (deleted since it was read)")
            if current.version != expect:
                raise Stale(f"CRM record {key}: changed since it was read (version mismatch)")
            raw = self._raw(conn, kind, ident, key)
            columns = {c: v for c, v in columns.items() if raw.get(c) != v}
            if not columns:
                return current
            table = accounts if kind == "account" else contacts
            where = (accounts.c.account_no == ident) if kind == "account" else (contacts.c.id == int(ident))
            conn.execute(update(table).where(where).values(**columns))
            new = self._read(conn, key)
            assert new is not None
            return new

    def create_account(self, account_no: str, values: Changes) -> CrmRecord:
        """Insert an active account with this account_no, or return the existing one."""
        key = crm_key("account", account_no)
        problem = account_no_problem(account_no)
        if problem is not None:
            raise BadRecord(f"CRM key {key!r}: {problem}")
        columns = self._columns("account", key, values)
        try:
            with write_tx(self.engine) as conn:
                existing = self._read(conn, key)
                if existing is not None:
                    return existing
                conn.execute(accounts.insert().values(
                    **columns, account_no=account_no, is_active=True))
                rec = self._read(conn, key)
                assert rec is not None
                return rec
        except IntegrityError:
            # a concurrent create of the same account_no won (PostgreSQL): it is ours to return
            rec = self.read(key)
            if rec is None:
                raise
            return rec

    def deactivate(self, key: str, expect: str | None) -> CrmRecord | None:
        """Set ``is_active = false`` on an account (never a hard delete); None if the row is gone.

        ``expect`` None skips the version check. Secondary contacts have no is_active column: for
        a contact key the row is left unchanged and returned (removing it is a policy decision)."""
        kind, ident = self._parse(key)
        with write_tx(self.engine) as conn:
            current = self._read(conn, key, lock=True)
            if current is None:
                return None
            if expect is not None and current.version != expect:
                raise Stale(f"CRM record {key}: changed since it was read (version mismatch)")
            if kind == "contact" or not current.active:
                return current
            conn.execute(update(accounts).where(accounts.c.account_no == ident)
                         .values(is_active=False))
            return self._read(conn, key)

    def delete_account(self, key: str, expect: str | None) -> Literal["deleted", "deactivated", "gone"]:
        """Delete an account row (``on_exchange_delete = "delete"``), iff it still has version
        ``expect`` (else Stale). An account that still has secondary contacts is deactivated
        instead: they are the CRM's records, not Outlook's to delete. A contact key is left alone."""
        kind, ident = self._parse(key)
        with write_tx(self.engine) as conn:
            current = self._read(conn, key, lock=True)
            if current is None:
                return "gone"
            if expect is not None and current.version != expect:
                raise Stale(f"CRM record {key}: changed since it was read (version mismatch)")
            if kind == "contact":
                return "deactivated"
            account_id = conn.execute(select(accounts.c.id).where(accounts.c.account_no == ident)).scalar_one()
            if conn.execute(select(contacts.c.id).where(contacts.c.account_id == account_id).limit(1)).first():
                conn.execute(update(accounts).where(accounts.c.id == account_id).values(is_active=False))
                return "deactivated"
            conn.execute(delete(accounts).where(accounts.c.id == account_id))
            return "deleted"

    def reactivate(self, key: str, expect: str) -> CrmRecord:
        """Set ``is_active = true`` on an account whose contact was restored in Outlook; Stale
        when the row has another version or is gone."""
        kind, ident = self._parse(key)
        with write_tx(self.engine) as conn:
            current = self._read(conn, key, lock=True)
            if current is None or current.version != expect:
                raise Stale(f"CRM record {key}: changed since it was read (version mismatch)")
            if kind == "contact" or current.active:
                return current
            conn.execute(update(accounts).where(accounts.c.account_no == ident)
                         .values(is_active=True))
            rec = self._read(conn, key)
            assert rec is not None
            return rec

    # ----------------------------------------------------------------------------- helpers
    def _parse(self, key: str) -> tuple[str, str]:
        """(kind, ident) of a key, or BadRecord: for an account_no a link cannot hold, naming
        the accounts row that has it (so the administrator can fix that row), else the key."""
        try:
            return parse_crm_key(key)
        except ValueError as exc:
            kind, _, ident = key.partition(":")
            problem = account_no_problem(ident) if kind == "account" else None
            if problem is not None:
                with read_tx(self.engine) as conn:
                    row_id = conn.execute(select(accounts.c.id).where(accounts.c.account_no == ident)
                                          .order_by(accounts.c.id).limit(1)).scalar()
                if row_id is not None:
                    raise BadRecord(f"accounts row id={row_id}: {problem}") from None
            raise BadRecord(str(exc)) from None

    @staticmethod
    def _columns(kind: str, key: str, changes: Changes) -> dict[str, str | None]:
        try:
            if kind == "account":
                return canonical_to_account_columns(changes)
            return canonical_to_contact_columns(changes)
        except ValueError as exc:  # an unknown field
            raise BadRecord(f"CRM record {key}: {exc}") from None

    def _read(self, conn: Connection, key: str, *, lock: bool = False) -> CrmRecord | None:
        kind, ident = self._parse(key)
        if kind == "account":
            stmt = _ACCOUNT_BY_NO_LOCKED if lock else _ACCOUNT_BY_NO
            row = conn.execute(stmt, {"no": ident}).first()
            return None if row is None else _account_record(row._mapping)
        stmt = _CONTACT_BY_ID_LOCKED if lock else _CONTACT_BY_ID
        row = conn.execute(stmt, {"cid": _contact_id(key, ident)}).first()
        return None if row is None else _contact_record(row._mapping)

    @staticmethod
    def _raw(conn: Connection, kind: str, ident: str, key: str) -> dict[str, Any]:
        if kind == "account":
            row = conn.execute(select(*_ACCOUNT_COLS).where(accounts.c.account_no == ident)).first()
        else:
            row = conn.execute(select(*_CONTACT_COLS).where(contacts.c.id == int(ident))).first()
        return {} if row is None else dict(row._mapping)
