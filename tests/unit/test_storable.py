"""What Exchange can store losslessly: the specification as a table (pure, no exchangelib).

exchangelib replaces every character XML cannot carry — and a few more it distrusts (C1
controls, U+FDD0..U+FDDF) — by '?'; a value that would change on the way must be refused, naming
the record, the field and the character, never silently rewritten on either side.
"""

from __future__ import annotations

import pytest

from crmsync.core.storable import MAX_LENGTH, check_storable, first_unstorable
from crmsync.errors import BadRecord

CARRIED = [
    ("tab", "a\tb"), ("newline", "a\nb"), ("carriage_return", "a\r\nb"), ("tilde_u007e", "a~b"),
    ("nel_u0085", "a\x85b"), ("nbsp_u00a0", "a\xa0b"), ("u_fdcf", "a\ufdcfb"), ("u_fde0", "a\ufde0b"),
    ("u_fffd", "a\ufffdb"), ("bom_ufeff", "\ufeffab"), ("line_separator", "a\u2028b"), ("emoji", "🦊 Zoë"),
    ("supplementary_noncharacter_u1fffe", "a\U0001fffeb"),
]

REFUSED = [
    ("nul", "a\x00b", 0x00), ("u0008", "\x08", 0x08), ("vertical_tab", "x\x0b", 0x0B), ("form_feed", "\x0c", 0x0C),
    ("u001f", "\x1f", 0x1F), ("delete_u007f", "a\x7fb", 0x7F), ("u0080", "\x80", 0x80), ("u0084", "\x84", 0x84),
    ("u0086", "\x86", 0x86), ("u009f", "\x9f", 0x9F), ("u_fdd0", "\ufdd0", 0xFDD0), ("u_fddf", "\ufddf", 0xFDDF),
    ("u_fffe", "\ufffe", 0xFFFE), ("u_ffff", "\uffff", 0xFFFF), ("lone_surrogate", "a\ud800", 0xD800),
]


@pytest.mark.parametrize("value", [v for _, v in CARRIED], ids=[i for i, _ in CARRIED])
def test_characters_exchange_carries_are_accepted(value: str) -> None:
    assert first_unstorable(value) is None
    check_storable("account:A-1", "notes", value)


@pytest.mark.parametrize(("value", "code"), [(v, c) for _, v, c in REFUSED], ids=[i for i, _, _ in REFUSED])
def test_characters_exchange_would_change_are_a_bad_record_naming_record_field_and_character(
        value: str, code: int) -> None:
    assert first_unstorable(value) == (value.index(chr(code)), chr(code))
    with pytest.raises(BadRecord, match=rf"^account:A-1: field notes: character U\+{code:04X} .*cannot be stored in Exchange"):
        check_storable("account:A-1", "notes", value)


@pytest.mark.parametrize("field", sorted(MAX_LENGTH))
def test_values_longer_than_exchange_holds_are_a_bad_record_naming_field_and_limit(field: str) -> None:
    limit = MAX_LENGTH[field]
    check_storable("account:A-1", field, "x" * limit)
    with pytest.raises(BadRecord, match=rf"^account:A-1: field {field}: {limit + 1} characters, .*at most {limit}"):
        check_storable("account:A-1", field, "x" * (limit + 1))


def test_names_are_limited_to_255_characters_as_exchangelib_enforces() -> None:
    assert MAX_LENGTH["first_name"] == MAX_LENGTH["last_name"] == 255


def test_empty_values_are_storable() -> None:
    check_storable("account:A-1", "first_name", None)
    check_storable("account:A-1", "first_name", "")
