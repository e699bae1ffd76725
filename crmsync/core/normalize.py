"""The normalized form of a contact: used only to compare and to hash, never as a value written.

Two raw values that mean the same thing ("+1 (555) 010-2000" and "+15550102000", "Bob@Example.COM"
and "bob@example.com") have the same normalized form, so a server that reformats a value, or our
own write coming back as an event, is not seen as an edit (DESIGN.md §3: change detection is by
content). The user's own raw values are what crmsync writes.

Rules per field (``normalize_field``):

* every field: Unicode NFC, then whitespace is trimmed and internal runs of whitespace become one
  space; a value that is empty after that is ``None`` (empty and missing are the same thing);
* ``notes``: line breaks are kept (``\\r\\n`` and ``\\r`` become ``\\n``); inside each line runs of
  spaces become one space and trailing spaces are dropped; leading/trailing blank lines go;
* ``email``, ``email2``: email-validator's normalized form (``check_deliverability=False``),
  lowercased; a value it rejects is compared lowercased as it is. Never raises;
* phone fields: E.164 through ``phonenumbers`` (national numbers parsed in ``region``), with the
  extension kept as ``;ext=N``. A value holding anything but phone characters and an extension
  marker (e.g. "555 0102 ask for Bob") is compared as text, so a change to its words is not lost;
  a number phonenumbers cannot parse, or that is not a possible number, is compared by its digits;
* ``website``: no scheme, no trailing slash, host lowercased (the path keeps its case).

Stability: ``content_hash`` is a sha256 of canonical JSON (sorted keys, UTF-8, no whitespace)
of the normalized values plus ``NORMALIZATION_VERSION``; it is the same across processes, machines
and Python versions. Changing any rule above changes hashes: bump ``NORMALIZATION_VERSION`` when
doing so. Old link hashes then simply differ, which makes the next event for a link run a full
(harmless, write-free when nothing really changed) reconcile that stores the new hashes.
"""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from collections.abc import Iterable, Mapping
from functools import lru_cache

import phonenumbers
from email_validator import EmailNotValidError, validate_email

from schemas.canonical import CanonicalContact

#: Part of every content hash; bump it whenever a normalization rule changes.
NORMALIZATION_VERSION = 1

EMAIL_FIELDS = frozenset({"email", "email2"})
PHONE_FIELDS = frozenset({"phone_business", "phone_mobile", "phone_home", "fax"})
WEBSITE_FIELDS = frozenset({"website"})
MULTILINE_FIELDS = frozenset({"notes"})

_WS = re.compile(r"\s+")
_HSPACE = re.compile(r"[^\S\n]+")  # whitespace other than a newline
_SCHEME = re.compile(r"^[a-z][a-z0-9+.\-]*://", re.IGNORECASE)
# Digits and the punctuation people put in phone numbers, then an optional extension marker.
_PHONE = re.compile(
    r"^(?P<main>[\d +\-().\/]*?)\s*(?:(?:;\s*ext\s*=|extension|ext\.?|x|\#)\s*(?P<ext>\d+))?$",
    re.IGNORECASE,
)


@lru_cache(maxsize=65536)
def _text(value: str) -> str | None:
    value = _WS.sub(" ", unicodedata.normalize("NFC", value)).strip()
    return value or None


def _multiline(value: str) -> str | None:
    value = unicodedata.normalize("NFC", value).replace("\r\n", "\n").replace("\r", "\n")
    lines = (_HSPACE.sub(" ", line).rstrip() for line in value.split("\n"))
    return "\n".join(lines).strip() or None


def _email(value: str) -> str | None:
    text = _text(value)
    if text is None:
        return None
    if text.isascii() and "xn--" not in text.lower():
        # email-validator's normalized form of a plain-ASCII address differs from the address only
        # in case (an IDNA "xn--" domain is turned into Unicode, hence the guard), and an address
        # it rejects is compared lowercased anyway: skip it, it dominates the hashing cost of an
        # initial sync. tests/unit/test_normalize.py proves both paths agree.
        return text.lower()
    return _validated_email(text)


def _validated_email(text: str) -> str:
    try:
        return validate_email(text, check_deliverability=False).normalized.lower()
    except (EmailNotValidError, ValueError, UnicodeError):
        return text.lower()


def _ascii_digits(value: str) -> str:
    return "".join(str(unicodedata.decimal(ch)) for ch in value if unicodedata.decimal(ch, None) is not None)


def _phone(value: str, region: str) -> str | None:
    text = _text(value)
    if text is None:
        return None
    match = _PHONE.match(text)
    if match is None or not _ascii_digits(match["main"]):
        return text  # words in the field: compare them as words
    main, ext = match["main"].strip(), match["ext"]
    suffix = f";ext={_ascii_digits(ext)}" if ext else ""
    try:
        number = phonenumbers.parse(main, region)
    except phonenumbers.NumberParseException:
        number = None
    if number is not None and phonenumbers.is_possible_number(number):
        return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164) + suffix
    return ("+" if main.startswith("+") else "") + _ascii_digits(main) + suffix


def _website(value: str) -> str | None:
    text = _text(value)
    if text is None:
        return None
    text = _SCHEME.sub("", text)
    cut = min((i for i in (text.find(c) for c in "/?#") if i >= 0), default=len(text))
    text = (text[:cut].lower() + text[cut:]).rstrip("/")
    return text or None


def normalize_field(field: str, value: str | None, *, region: str = "US") -> str | None:
    """The comparison form of one field's value (``None`` when empty); never raises on text."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise TypeError(f"field {field!r}: expected text or None, got {type(value).__name__}")
    if field in EMAIL_FIELDS:
        return _email(value)
    if field in PHONE_FIELDS:
        return _phone(value, region)
    if field in WEBSITE_FIELDS:
        return _website(value)
    if field in MULTILINE_FIELDS:
        return _multiline(value)
    return _text(value)


_CANONICAL_FIELDS = frozenset(CanonicalContact.model_fields)


def _value(record: CanonicalContact | Mapping[str, str | None], field: str) -> str | None:
    if isinstance(record, Mapping):
        return record.get(field)
    if field not in _CANONICAL_FIELDS:
        raise ValueError(f"unknown canonical field {field!r}")
    value: str | None = getattr(record, field)
    return value


def normalized(
    record: CanonicalContact | Mapping[str, str | None], fields: Iterable[str], *, region: str
) -> dict[str, str | None]:
    """The normalized value of each of ``fields`` (a mapping stands for a partial record)."""
    return {f: normalize_field(f, _value(record, f), region=region) for f in fields}


def content_hash(
    record: CanonicalContact | Mapping[str, str | None], fields: Iterable[str], *, region: str
) -> str:
    """sha256 hex of the normalized ``fields``: equal iff the records mean the same thing."""
    payload = {"v": NORMALIZATION_VERSION, "fields": normalized(record, fields, region=region)}
    data = json.dumps(payload, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(data.encode("utf-8", "surrogatepass")).hexdigest()


def same(field: str, a: str | None, b: str | None, *, region: str) -> bool:
    """Whether two raw values of ``field`` mean the same thing."""
    return normalize_field(field, a, region=region) == normalize_field(field, b, region=region)
