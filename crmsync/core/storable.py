"""What Exchange can store exactly as it is (pure): the check both sides run before a value crosses.

A value that cannot cross losslessly is a bad record naming the record, the field and the
character or the limit (DESIGN.md §3.1), never a silent substitution:

* **Characters.** exchangelib replaces, on every request it writes, each character XML 1.0 cannot
  carry *and* the C1 controls and non-characters it distrusts — U+0000..U+0008, U+000B, U+000C,
  U+000E..U+001F, U+007F..U+0084, U+0086..U+009F, U+FDD0..U+FDDF, U+FFFE, U+FFFF — by ``?``
  (``exchangelib.util.safe_xml_value``). A lone surrogate cannot be encoded as UTF-8 at all.
  Everything else, tab, line breaks (CR included), U+0085 and supplementary-plane characters
  among it, arrives unchanged (checked against the emulator; a unit test keeps this set equal to
  exchangelib's).
* **Lengths.** Microsoft's EWS reference documents no length for the contact properties crmsync
  maps; the limits Exchange enforces on GivenName and Surname (255 characters) are the ones
  exchangelib checks before sending (its field definitions' ``max_length``). Those are enforced
  here by canonical field name; other fields have no documented limit and are not cut.
"""

from __future__ import annotations

from collections.abc import Mapping

from crmsync.errors import BadRecord
from schemas.canonical import EXCHANGE_UNSTORABLE as _UNSTORABLE

#: Canonical field -> the most characters Exchange holds in it (GivenName, Surname).
MAX_LENGTH: Mapping[str, int] = {"first_name": 255, "last_name": 255}


def first_unstorable(value: str) -> tuple[int, str] | None:
    """(position, character) of the first character Exchange cannot store as it is, or None."""
    bad = _UNSTORABLE.search(value)
    return None if bad is None else (bad.start(), bad.group())


def check_storable(where: str, field: str, value: str | None) -> None:
    """Raise BadRecord ``"<where>: field <field>: ..."`` when ``value`` would not arrive in
    Exchange exactly as it is (a character it rewrites, or more characters than it holds)."""
    if not value:
        return
    bad = first_unstorable(value)
    if bad is not None:
        pos, char = bad
        raise BadRecord(
            f"{where}: field {field}: character U+{ord(char):04X} at position {pos} cannot be stored "
            "in Exchange (exchangelib would write it as '?'); remove it in the CRM"
        )
    limit = MAX_LENGTH.get(field)
    if limit is not None and len(value) > limit:
        raise BadRecord(
            f"{where}: field {field}: {len(value)} characters, Exchange holds at most {limit}; "
            "shorten it in the CRM"
        )
