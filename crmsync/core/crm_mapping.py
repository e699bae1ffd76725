"""Rows of the reference CRM schema <-> the canonical contact (pure: plain dicts in and out).

The SQLAlchemy adapter hands over a row as a mapping of column -> value and writes back the
column dict produced here; nothing in this module touches a database.

Decisions that make the round trip lossless (row -> canonical -> columns gives back every value
that carries information, unchanged):

* Empty means ``None``. Exchange cannot hold an empty string, so ``""`` and whitespace-only
  strings (which normalization treats as empty anyway, and Outlook trims) become ``None`` on the
  way in and on the way out. Any other text is kept exactly as it is, spaces included: the
  values crmsync writes are the user's own (normalization is for comparing only).
* A number where text belongs (``int``, ``float``, ``Decimal``; SQLite's type affinity turns a
  postal code like ``"12345"`` into ``12345``) becomes ``str(value)``. A bool, bytes, a date or a
  nested object is rejected with ``BadRecord``, as is text Exchange would not store as it is
  (``crmsync.core.storable``): a character exchangelib writes as '?' (U+000B from a spreadsheet
  paste, a C1 control from a mis-decoded import) or a name longer than Exchange holds. Silently
  changing it would be a change nobody made, and it would come back into the CRM changed.
  Messages start with the record (``account:ACC-1``, ``accounts row id=17`` when it has no
  account_no, ``contact:31 (account_id=7)``) and the field.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from decimal import Decimal

from crmsync.core.storable import check_storable
from crmsync.errors import BadRecord
from schemas.canonical import ACCOUNT_FIELDS, CONTACT_CRM_READONLY, CONTACT_FIELDS, CanonicalContact

#: Canonical field -> ``accounts`` column (the reference schema uses the same names).
ACCOUNT_COLUMNS: Mapping[str, str] = {f: f for f in ACCOUNT_FIELDS}

#: Canonical field -> ``contacts`` column; ``company_name`` lives on the account and is absent.
CONTACT_COLUMNS: Mapping[str, str] = {f: f for f in CONTACT_FIELDS if f not in CONTACT_CRM_READONLY}

def _describe_account(row: Mapping[str, object]) -> str:
    no = row.get("account_no")
    if isinstance(no, str) and no.strip():
        return f"account:{no}"
    return f"accounts row id={row.get('id')!r}"


def _describe_contact(row: Mapping[str, object]) -> str:
    return f"contact:{row.get('id')} (account_id={row.get('account_id')!r})"


def _text(value: object, where: str, field: str) -> str | None:
    """One CRM value as canonical text, or BadRecord naming the record, the field and why."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise BadRecord(f"{where}: field {field}: holds a boolean where text belongs")
    if isinstance(value, (int, float, Decimal)):
        if isinstance(value, (float, Decimal)) and not math.isfinite(value):
            raise BadRecord(f"{where}: field {field}: holds {value!r}, not a usable value")
        value = str(value)
    if not isinstance(value, str):
        raise BadRecord(
            f"{where}: field {field}: holds {type(value).__name__} where text belongs"
        )
    check_storable(where, field, value)
    return value if value.strip() else None


def _column(row: Mapping[str, object], column: str, where: str) -> object:
    if column not in row:
        raise BadRecord(f"{where}: column {column!r} is missing from the row read")
    return row[column]


def account_to_canonical(row: Mapping[str, object]) -> CanonicalContact:
    """An ``accounts`` row as the canonical contact (its company and primary person)."""
    where = _describe_account(row)
    return CanonicalContact(
        **{f: _text(_column(row, c, where), where, c) for f, c in ACCOUNT_COLUMNS.items()}
    )


def contact_to_canonical(row: Mapping[str, object], company_name: object) -> CanonicalContact:
    """A ``contacts`` row as the canonical contact, with its account's ``company_name``."""
    where = _describe_contact(row)
    values = {f: _text(_column(row, c, where), where, c) for f, c in CONTACT_COLUMNS.items()}
    values["company_name"] = _text(company_name, where + " via its account", "company_name")
    return CanonicalContact(**values)


def _columns(changes: Mapping[str, str | None], columns: Mapping[str, str], table: str,
             known: tuple[str, ...]) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for field, value in changes.items():
        if field not in known:
            raise ValueError(f"{field!r} is not a synced field of {table}")
        if field not in columns:
            continue  # CRM-read-only: Exchange never writes it
        if value is not None and not isinstance(value, str):
            raise BadRecord(f"{table}: change to {field!r} is {type(value).__name__}, not text")
        out[columns[field]] = value if value is not None and value.strip() else None
    return out


def canonical_to_account_columns(changes: Mapping[str, str | None]) -> dict[str, str | None]:
    """Canonical field changes as ``accounts`` column values (empty -> NULL)."""
    return _columns(changes, ACCOUNT_COLUMNS, "accounts", ACCOUNT_FIELDS)


def canonical_to_contact_columns(changes: Mapping[str, str | None]) -> dict[str, str | None]:
    """Canonical field changes as ``contacts`` column values; ``company_name`` is dropped."""
    return _columns(changes, CONTACT_COLUMNS, "contacts", CONTACT_FIELDS)
