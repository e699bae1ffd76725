"""The Exchange field mapping: lossless for every mapped field, and it never touches the user's
own indexed entries (a HomePhone2, a Home address, an EmailAddress3)."""

from __future__ import annotations

import pytest
from exchangelib import Contact
from exchangelib.indexed_properties import EmailAddress, PhoneNumber, PhysicalAddress
from exchangelib.properties import Body, HTMLBody
from hypothesis import given, settings
from hypothesis import strategies as st

from crmsync.adapters.exchange.ews.mapping import (
    apply_changes,
    body_text,
    contact_kwargs,
    html_to_text,
    to_canonical,
)
from crmsync.errors import BadRecord
from schemas.canonical import ACCOUNT_FIELDS, CanonicalContact

# Text exchangelib sends unchanged: no surrogates, no controls (but tab, newline, CR, NEL), no U+FDD0..FDDF/FFFE/FFFF.
xml_chars = st.characters(
    blacklist_categories=("Cs",),
    blacklist_characters=[chr(c) for c in (*range(0x20), *range(0x7F, 0xA0), *range(0xFDD0, 0xFDE0), 0xFFFE, 0xFFFF)
                          if c not in (0x09, 0x0A, 0x0D, 0x85)],
)
specials = st.sampled_from(["<", ">", "&", '"', "'", "&amp;", "]]>", "<b>x</b>", "Ünïcödé", "名前", "🙂"])
text = st.lists(st.one_of(st.text(xml_chars, min_size=1, max_size=20), specials), min_size=1, max_size=5).map("".join)
short = text.filter(lambda s: len(s) <= 255)
notes = st.lists(st.one_of(text, st.sampled_from(["\n", "\r\n", "\n\n", "\t"])), min_size=1, max_size=8).map("".join)


def optional(strategy):
    return st.none() | strategy


records = st.builds(
    CanonicalContact,
    **{f: optional(text) for f in ACCOUNT_FIELDS if f not in ("first_name", "last_name", "notes")},
    first_name=optional(short),
    last_name=optional(short),
    notes=optional(notes),
)

user_phone = st.builds(PhoneNumber, label=st.sampled_from(["HomePhone2", "BusinessPhone2", "Pager", "CarPhone"]),
                       phone_number=text)
user_email = st.builds(EmailAddress, label=st.just("EmailAddress3"), email=text)
user_address = st.builds(PhysicalAddress, label=st.sampled_from(["Home", "Other"]), street=optional(text),
                         city=optional(text), zipcode=optional(text))


@settings(max_examples=300, deadline=None)
@given(records)
def test_canonical_to_contact_and_back_is_lossless(record):
    contact = Contact(**contact_kwargs(record.model_dump()))
    assert to_canonical(contact) == record


@settings(max_examples=200, deadline=None)
@given(records, records)
def test_apply_changes_turns_one_record_into_another(before, after):
    contact = Contact(**contact_kwargs(before.model_dump()))
    changes = {f: getattr(after, f) for f in ACCOUNT_FIELDS if getattr(after, f) != getattr(before, f)}
    updated = apply_changes(contact, changes)
    assert to_canonical(contact) == after
    if not changes:
        assert updated == []


@settings(max_examples=200, deadline=None)
@given(records, records, st.lists(user_phone, max_size=3, unique_by=lambda p: p.label),
       st.lists(user_email, max_size=1), st.lists(user_address, max_size=2, unique_by=lambda a: a.label))
def test_apply_changes_keeps_the_users_other_indexed_entries(before, after, phones, emails, addresses):
    kwargs = contact_kwargs(before.model_dump())
    kwargs["phone_numbers"] = [*kwargs.get("phone_numbers", []), *phones]
    kwargs["email_addresses"] = [*kwargs.get("email_addresses", []), *emails]
    kwargs["physical_addresses"] = [*kwargs.get("physical_addresses", []), *addresses]
    contact = Contact(**kwargs)
    apply_changes(contact, after.model_dump())
    assert to_canonical(contact) == after
    assert [p for p in contact.phone_numbers or [] if p in phones] == phones
    assert [e for e in contact.email_addresses or [] if e in emails] == emails
    assert [a for a in contact.physical_addresses or [] if a in addresses] == addresses


def test_clearing_the_last_business_address_part_removes_the_entry_but_keeps_home():
    home = PhysicalAddress(label="Home", street="1 Home St", city="Hometown")
    contact = Contact(**contact_kwargs({"city": "Bern"}))
    contact.physical_addresses = [*contact.physical_addresses, home]
    updated = apply_changes(contact, {"city": None})
    assert updated == ["physical_addresses"]
    assert contact.physical_addresses == [home]


def test_a_cleared_phone_is_removed_and_the_others_stay_in_order():
    contact = Contact(**contact_kwargs({"phone_business": "+41 1", "phone_mobile": "+41 2"}))
    contact.phone_numbers.insert(0, PhoneNumber(label="HomePhone2", phone_number="+41 3"))
    apply_changes(contact, {"phone_business": None, "fax": "+41 4"})
    assert [(p.label, p.phone_number) for p in contact.phone_numbers] == [
        ("HomePhone2", "+41 3"), ("MobilePhone", "+41 2"), ("BusinessFax", "+41 4")]


def test_only_the_changed_exchange_fields_are_returned_for_update():
    contact = Contact(**contact_kwargs({"first_name": "Ada", "last_name": "Lovelace", "city": "London"}))
    assert apply_changes(contact, {"job_title": "Analyst", "postal_code": "N1"}) == ["job_title", "physical_addresses"]


@pytest.mark.parametrize(
    ("values", "display_name", "file_as"),
    [
        ({"first_name": "Ada", "last_name": "Lovelace", "company_name": "Engines"}, "Ada Lovelace", "Lovelace, Ada"),
        ({"company_name": "Engines Ltd"}, "Engines Ltd", "Engines Ltd"),
        ({"email": "ada@example.com"}, "ada@example.com", None),
        ({}, "(no name)", None),
    ],
)
def test_display_name_is_derived_for_creates(values, display_name, file_as):
    kwargs = contact_kwargs(values)
    assert kwargs["display_name"] == display_name
    assert kwargs.get("file_as") == file_as


def test_a_renamed_person_gets_a_new_derived_display_name():
    contact = Contact(**contact_kwargs({"first_name": "Ada", "last_name": "Byron"}))
    updated = apply_changes(contact, {"last_name": "Lovelace"})
    assert (contact.display_name, contact.file_as) == ("Ada Lovelace", "Lovelace, Ada")
    assert set(updated) == {"surname", "display_name", "file_as"}


def test_a_display_name_typed_by_the_user_is_kept_on_rename():
    contact = Contact(**contact_kwargs({"first_name": "Ada", "last_name": "Byron"}))
    contact.display_name = "Countess of Lovelace"
    updated = apply_changes(contact, {"last_name": "Lovelace"})
    assert contact.display_name == "Countess of Lovelace"
    assert "display_name" not in updated


def test_display_and_file_as_are_not_part_of_the_canonical_record():
    contact = Contact(**contact_kwargs({"first_name": "Ada"}))
    contact.display_name, contact.file_as = "Somebody else", "Else, Some"
    assert to_canonical(contact) == CanonicalContact(first_name="Ada")


def test_empty_strings_read_as_none():
    contact = Contact(given_name="", company_name="", email_addresses=[EmailAddress(label="EmailAddress1", email="")],
                      body=Body(""))
    assert to_canonical(contact) == CanonicalContact()


def test_a_name_longer_than_exchange_allows_names_the_field():
    with pytest.raises(BadRecord, match="first_name: 256 characters, .*at most 255"):
        contact_kwargs({"first_name": "x" * 256})


def test_an_unknown_field_is_refused_with_its_name():
    with pytest.raises(BadRecord, match="nickname"):
        contact_kwargs({"nickname": "Ada"})


def test_an_html_body_reads_as_its_text_with_line_breaks():
    body = HTMLBody("<html><head><style>p{}</style></head><body><p>Call &amp; visit</p>"
                    "<div>line 2<br>line 3</div></body></html>")
    assert body_text(body) == "Call & visit\nline 2\nline 3"
    assert html_to_text("<p>a&nbsp;b</p>") == "a b"


def test_a_text_body_that_looks_like_html_is_kept_verbatim():
    assert body_text(Body("<p>not markup, the user typed it</p>")) == "<p>not markup, the user typed it</p>"


@pytest.mark.parametrize(("field", "value", "code"), [
    ("first_name", "a\x7fb", "007F"), ("notes", "x\ufffey", "FFFE"), ("job_title", "\x9c", "009C"),
    ("email", "a\x01@b.example", "0001"), ("street", "Main St\ufdd5", "FDD5"), ("phone_mobile", "555\x85\x86", "0086"),
])
def test_characters_exchangelib_would_rewrite_are_a_bad_record_not_a_question_mark(field, value, code):
    with pytest.raises(BadRecord, match=rf"field {field}: character U\+{code} .*cannot be stored in Exchange"):
        contact_kwargs({field: value})
    contact = Contact(**contact_kwargs({"first_name": "Ann"}))
    with pytest.raises(BadRecord, match=rf"field {field}: character U\+{code}"):
        apply_changes(contact, {field: value})


def test_the_refused_characters_are_exactly_those_exchangelib_rewrites_plus_lone_surrogates():
    """Kept in step with exchangelib: every BMP character its safe_xml_value changes is refused,
    and every character it keeps (apart from lone surrogates, which no UTF-8 request can carry)
    is accepted."""
    from exchangelib.util import safe_xml_value

    from crmsync.core.storable import first_unstorable

    for code in range(0x10000):
        ch = chr(code)
        rewritten = safe_xml_value(ch) != ch
        surrogate = 0xD800 <= code <= 0xDFFF
        assert (first_unstorable(ch) is not None) == (rewritten or surrogate), f"U+{code:04X}"
