"""CRM rows <-> canonical contacts: table-driven cases (the round-trip law is in test_reconcile_laws)."""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal

import pytest

from crmsync.core.crm_mapping import (
    account_to_canonical,
    canonical_to_account_columns,
    canonical_to_contact_columns,
    contact_to_canonical,
)
from crmsync.errors import BadRecord
from schemas.canonical import ACCOUNT_FIELDS, CONTACT_FIELDS, CanonicalContact


def account_row(**values):
    row = {"id": 7, "account_no": "A-1007", "is_active": True, "updated_at": datetime(2026, 1, 2, 3, 4, 5)}
    row.update({f: None for f in ACCOUNT_FIELDS})
    row.update(values)
    return row


def contact_row(**values):
    row = {"id": 31, "account_id": 7, "updated_at": None}
    row.update({f: None for f in CONTACT_FIELDS if f != "company_name"})
    row.update(values)
    return row


def test_an_account_row_maps_every_column_to_its_field():
    row = account_row(**{f: f"value of {f}" for f in ACCOUNT_FIELDS})
    record = account_to_canonical(row)
    assert record.model_dump() == {f: f"value of {f}" for f in ACCOUNT_FIELDS}


def test_a_contact_row_takes_its_company_from_the_account():
    row = contact_row(first_name="Eve", last_name="Lind", email="eve@acme.test", notes="line 1\nline 2")
    record = contact_to_canonical(row, "Acme Ltd")
    assert record == CanonicalContact(
        first_name="Eve", last_name="Lind", email="eve@acme.test", notes="line 1\nline 2", company_name="Acme Ltd"
    )
    assert record.department is None


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        pytest.param("", None, id="empty_string_is_none"),
        pytest.param("   \t\n", None, id="whitespace_only_is_none"),
        pytest.param(None, None, id="null_is_none"),
        pytest.param("  Springfield ", "  Springfield ", id="other_text_is_kept_exactly_spaces_included"),
        pytest.param("<b>&amp;</b> \"'", "<b>&amp;</b> \"'", id="xml_special_characters_are_plain_text"),
        pytest.param("Zoë 🦊", "Zoë 🦊", id="emoji_and_accents_are_kept"),
        pytest.param(2134, "2134", id="integer_where_text_belongs_becomes_its_text"),
        pytest.param(12.5, "12.5", id="float_where_text_belongs_becomes_its_text"),
        pytest.param(Decimal("10115"), "10115", id="decimal_where_text_belongs_becomes_its_text"),
    ],
)
def test_values_coming_in_from_the_crm(raw, expected):
    assert account_to_canonical(account_row(postal_code=raw)).postal_code == expected


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        pytest.param(b"12345", "bytes", id="bytes_are_rejected"),
        pytest.param({"a": 1}, "dict", id="nested_mapping_is_rejected"),
        pytest.param(["x"], "list", id="list_is_rejected"),
        pytest.param(True, "boolean", id="boolean_is_rejected"),
        pytest.param(date(2026, 1, 1), "date", id="date_is_rejected"),
        pytest.param(float("nan"), "nan", id="nan_is_rejected"),
        pytest.param("tab\x0bbed", "U\\+000B", id="character_exchange_cannot_store_is_rejected"),
        pytest.param("nul\x00", "U\\+0000", id="nul_character_is_rejected"),
        pytest.param("c1\x80control", "U\\+0080", id="c1_control_exchangelib_writes_as_question_mark_is_rejected"),
        pytest.param("del\x7f", "U\\+007F", id="delete_character_is_rejected"),
        pytest.param("non\ufdd0char", "U\\+FDD0", id="noncharacter_exchangelib_writes_as_question_mark_is_rejected"),
    ],
)
def test_bad_account_values_name_the_record_and_the_field(raw, why):
    with pytest.raises(BadRecord, match=rf"^account:A-1007: field postal_code: .*{why}"):
        account_to_canonical(account_row(postal_code=raw))


def test_bad_contact_value_names_the_contact_and_the_field():
    with pytest.raises(BadRecord, match=r"^contact:31 \(account_id=.*\): field email: .*bytes"):
        contact_to_canonical(contact_row(email=b"x@y"), "Acme")


def test_bad_company_name_of_a_contact_names_its_account_as_the_source():
    with pytest.raises(BadRecord, match=r"^contact:31 .*via its account: field company_name"):
        contact_to_canonical(contact_row(), b"Acme")


def test_a_row_missing_a_mapped_column_is_a_bad_record():
    row = account_row()
    del row["website"]
    with pytest.raises(BadRecord, match=r"^account:A-1007: column 'website' is missing"):
        account_to_canonical(row)


def test_unmapped_columns_are_ignored():
    record = account_to_canonical(account_row(first_name="Ann", legacy_code="X9"))
    assert record.first_name == "Ann"


def test_account_changes_become_columns_and_empty_becomes_null():
    assert canonical_to_account_columns({"city": "Oslo", "fax": None, "notes": "", "state": "  "}) == {
        "city": "Oslo",
        "fax": None,
        "notes": None,
        "state": None,
    }


def test_contact_changes_drop_the_crm_readonly_company_name():
    assert canonical_to_contact_columns({"company_name": "Other Co", "job_title": "CTO"}) == {"job_title": "CTO"}


@pytest.mark.parametrize(
    ("convert", "field"),
    [
        pytest.param(canonical_to_contact_columns, "department", id="contact_has_no_department"),
        pytest.param(canonical_to_account_columns, "nickname", id="account_has_no_nickname"),
    ],
)
def test_a_change_to_a_field_the_table_does_not_sync_is_refused(convert, field):
    with pytest.raises(ValueError, match=field):
        convert({field: "x"})


def test_a_non_text_change_is_a_bad_record():
    with pytest.raises(BadRecord, match="city"):
        canonical_to_account_columns({"city": 5})  # type: ignore[dict-item]


def test_a_character_exchange_cannot_store_is_named_with_the_record_and_the_field():
    with pytest.raises(BadRecord, match=r"^account:A-1007: field notes: character U\+0090 at position 4 "
                                         r"cannot be stored in Exchange"):
        account_to_canonical(account_row(notes="call\x90me"))


def test_a_value_longer_than_exchange_holds_is_named_with_the_field_and_the_limit():
    with pytest.raises(BadRecord, match=r"^account:A-1007: field last_name: 256 characters, .*at most 255"):
        account_to_canonical(account_row(last_name="x" * 256))


def test_a_row_without_an_account_no_is_named_by_its_id():
    with pytest.raises(BadRecord, match=r"^accounts row id=17: field notes"):
        account_to_canonical({**account_row(notes="\x00"), "id": 17, "account_no": None})
