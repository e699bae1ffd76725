"""The canonical contact: the one shape both sides are mapped to and merged in.

A CRM account and its Exchange contact are compared field by field in this shape, so the
field names here are the vocabulary of the whole sync core.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict

#: Every field crmsync syncs for an account (the primary contact person of a company).
ACCOUNT_FIELDS: tuple[str, ...] = (
    "first_name",
    "last_name",
    "company_name",
    "job_title",
    "department",
    "email",
    "email2",
    "phone_business",
    "phone_mobile",
    "phone_home",
    "fax",
    "street",
    "city",
    "state",
    "postal_code",
    "country",
    "website",
    "notes",
)

#: The fields of a secondary contact. ``company_name`` comes from its account and is written
#: to Exchange only (the CRM keeps it on the account).
CONTACT_FIELDS: tuple[str, ...] = (
    "first_name",
    "last_name",
    "company_name",
    "job_title",
    "email",
    "phone_business",
    "phone_mobile",
    "notes",
)

#: Fields of a secondary contact that the CRM side never takes from Exchange.
CONTACT_CRM_READONLY: frozenset[str] = frozenset({"company_name"})

RecordKind = Literal["account", "contact"]


class CanonicalContact(BaseModel):
    """A person at a company, as both sides see it. ``None`` means the field is empty."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    first_name: str | None = None
    last_name: str | None = None
    company_name: str | None = None
    job_title: str | None = None
    department: str | None = None
    email: str | None = None
    email2: str | None = None
    phone_business: str | None = None
    phone_mobile: str | None = None
    phone_home: str | None = None
    fax: str | None = None
    street: str | None = None
    city: str | None = None
    state: str | None = None
    postal_code: str | None = None
    country: str | None = None
    website: str | None = None
    notes: str | None = None


def fields_for(kind: RecordKind) -> tuple[str, ...]:
    """The synced fields of one kind of CRM record."""
    return ACCOUNT_FIELDS if kind == "account" else CONTACT_FIELDS


def crm_key(kind: RecordKind, ident: str | int) -> str:
    """The stable key of a CRM record: ``account:<account_no>`` or ``contact:<id>``.

    Accounts are keyed by ``account_no`` (unique, never reused) so that an account created from
    Exchange can be given its key *before* its row exists (DESIGN.md §3.1).
    """
    return f"{kind}:{ident}"


#: Characters Exchange does not store as they are: XML 1.0 cannot carry them, or exchangelib
#: rewrites them to '?' on the way (``exchangelib.util.safe_xml_value``), or (lone surrogates)
#: UTF-8 cannot encode them. Everything else arrives unchanged.
EXCHANGE_UNSTORABLE = re.compile(
    "[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x84\x86-\x9f\ud800-\udfff\ufdd0-\ufddf\ufffe\uffff]"
)

#: The longest account_no a link holds: the key is stamped on the Exchange contact (a string
#: property crmsync searches by) and indexed in the state database, so it is bounded.
MAX_ACCOUNT_NO = 255


def account_no_problem(account_no: str) -> str | None:
    """Why this account_no cannot be a link's key (a sentence saying what to do), or None."""
    if account_no == "":
        return "account_no is empty; give the account a number"
    if not account_no.strip():
        return "account_no is only white space; give the account a number"
    bad = EXCHANGE_UNSTORABLE.search(account_no)
    if bad is not None:
        return (f"account_no contains the character U+{ord(bad.group()):04X} at position {bad.start()}, "
                "which the stamp on the Exchange contact cannot hold; give the account a number without it")
    if len(account_no) > MAX_ACCOUNT_NO:
        return (f"account_no has {len(account_no)} characters, at most {MAX_ACCOUNT_NO} fit in a link; "
                "give the account a shorter number")
    return None


def parse_crm_key(key: str) -> tuple[RecordKind, str]:
    """Split a CRM key; raises ValueError naming the key and what is wrong with it."""
    kind, sep, ident = key.partition(":")
    if not sep or kind not in ("account", "contact") or (kind == "contact" and not ident):
        raise ValueError(f"malformed CRM key {key!r}: expected 'account:<account_no>' or 'contact:<id>'")
    if kind == "account":
        problem = account_no_problem(ident)
        if problem is not None:
            raise ValueError(f"CRM key {key!r}: {problem}")
    return kind, ident  # type: ignore[return-value]
