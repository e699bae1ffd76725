"""The rules every Exchange connector (EWS, Graph) applies to a contact the same way: what may be
written, and the names Outlook shows. One place, so the two connectors cannot drift apart."""

from __future__ import annotations

from collections.abc import Iterable

from crmsync.core.storable import check_storable
from crmsync.errors import BadRecord
from schemas.canonical import ACCOUNT_FIELDS


def storable(field: str, value: str | None) -> str | None:
    """``value`` unchanged (empty -> None), or BadRecord when Exchange would not store it as it is."""
    check_storable("writing to Exchange", field, value)
    return value if value else None


def check_known(fields: Iterable[str]) -> None:
    unknown = sorted(set(fields) - set(ACCOUNT_FIELDS))
    if unknown:
        raise BadRecord(f"unknown canonical field(s) {unknown}: the Exchange mapping knows {list(ACCOUNT_FIELDS)}")


def derive_display_name(first: str | None, last: str | None, company: str | None) -> str | None:
    """'First Last', else the company; what Outlook shows in the contact list."""
    name = " ".join(p for p in (first, last) if p)
    return name or company or None


def derive_file_as(first: str | None, last: str | None, company: str | None) -> str | None:
    """'Last, First' (Outlook's default filing), else the company."""
    if first and last:
        return f"{last}, {first}"
    return last or first or company or None


def kept_out(sensitivity: str | None, categories: Iterable[str] | None, stamped: bool,
             private_sensitivities: frozenset[str], only_categories: frozenset[str]) -> bool:
    """True when the contact is never read into the CRM (it reads as private, an empty record):
    its Sensitivity is in ``private_sensitivities``, or ``only_categories`` is set and the contact
    carries none of them. ``only_categories`` decides what is newly imported: a contact stamped
    with a CRM key (pushed by crmsync, or linked and merged) is not subject to it."""
    if sensitivity in private_sensitivities:
        return True
    return bool(only_categories) and not stamped and not (set(categories or ()) & only_categories)
