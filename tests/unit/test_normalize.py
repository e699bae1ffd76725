"""The normalized form: what counts as "the same value" when comparing and hashing."""

from __future__ import annotations

import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crmsync.core.normalize import content_hash, normalize_field, normalized, same
from schemas.canonical import ACCOUNT_FIELDS, CanonicalContact

SAME = [
    pytest.param("city", "  New   York ", "New York", id="text_is_trimmed_and_inner_spaces_collapse"),
    pytest.param("city", "Zu\u0308rich", "Z\u00fcrich", id="text_is_compared_in_unicode_nfc"),
    pytest.param("city", "", None, id="empty_text_is_none"),
    pytest.param("city", " \t\n ", None, id="whitespace_only_text_is_none"),
    pytest.param("city", "New\u00a0York", "New York", id="no_break_space_is_a_space"),
    pytest.param("notes", "a\r\nb", "a\nb", id="notes_crlf_is_lf"),
    pytest.param("notes", "a  \nb\t", "a\nb", id="notes_trailing_spaces_per_line_are_dropped"),
    pytest.param("notes", "\n\nhello\n\n", "hello", id="notes_leading_and_trailing_blank_lines_are_dropped"),
    pytest.param("notes", "a   b", "a b", id="notes_inner_space_runs_collapse"),
    pytest.param("email", "Bob.Smith@EXAMPLE.COM", "bob.smith@example.com", id="email_is_case_insensitive"),
    pytest.param("email", " bob@example.com ", "bob@example.com", id="email_is_trimmed"),
    pytest.param("email2", "Bob@Bücher.DE", "bob@bücher.de", id="email_with_unicode_domain_is_case_insensitive"),
    pytest.param("email", "Not An Email", "not an email", id="invalid_email_is_compared_lowercased"),
    pytest.param("phone_business", "+1 (555) 010-2000", "+15550102000", id="phone_formatting_is_ignored"),
    pytest.param("phone_business", "(555) 010-2000", "+1 555 010 2000", id="national_phone_uses_default_region"),
    pytest.param("phone_mobile", "555.010.2000 ext. 12", "+15550102000;ext=12", id="phone_extension_is_kept"),
    pytest.param("phone_home", "555-010-2000 x12", "(555) 010-2000 #12", id="phone_extension_markers_are_equivalent"),
    pytest.param("fax", "\uff15\uff15\uff15\uff10\uff11\uff10\uff12\uff10\uff10\uff10", "5550102000",
                 id="fullwidth_phone_digits_are_digits"),
    pytest.param("phone_business", "12-34", "1234", id="impossible_phone_is_compared_by_digits"),
    pytest.param("website", "https://Example.COM/", "example.com", id="website_ignores_scheme_case_of_host_and_trailing_slash"),
    pytest.param("website", "http://example.com", "https://example.com", id="website_http_and_https_are_the_same"),
    pytest.param("website", "http://", None, id="website_scheme_only_is_empty"),
]

DIFFERENT = [
    pytest.param("city", "paris", "Paris", id="text_case_matters"),
    pytest.param("notes", "a\nb", "a b", id="notes_line_breaks_matter"),
    pytest.param("phone_business", "555-010-2000 x12", "555-010-2000 x13", id="phone_extension_matters"),
    pytest.param("phone_business", "555 0102 ask Bob", "555 0102 ask Alice", id="phone_with_words_is_compared_as_text"),
    pytest.param("phone_business", "+44 20 7946 0000", "020 7946 0000", id="phone_region_matters"),
    pytest.param("website", "example.com/Path", "example.com/path", id="website_path_case_matters"),
    pytest.param("email", "bob@example.com", "bob@example.org", id="different_emails_differ"),
]


@pytest.mark.parametrize(("field", "a", "b"), SAME)
def test_values_that_mean_the_same_normalize_equal(field, a, b):
    assert same(field, a, b, region="US"), (normalize_field(field, a), normalize_field(field, b))


@pytest.mark.parametrize(("field", "a", "b"), DIFFERENT)
def test_values_that_differ_normalize_differently(field, a, b):
    assert not same(field, a, b, region="US")


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        pytest.param("phone_business", "+1 (555) 010-2000", "+15550102000", id="phone_is_e164"),
        pytest.param("phone_business", "(555) 010-2000 ext 7", "+15550102000;ext=7", id="phone_extension_form"),
        pytest.param("email", "Jane@Example.com", "jane@example.com", id="email_form"),
        pytest.param("website", "HTTP://WWW.Example.com/About/", "www.example.com/About", id="website_form"),
        pytest.param("notes", " line 1  \r\n\tline 2 \r\n", "line 1\n line 2", id="notes_form"),
        pytest.param("company_name", None, None, id="none_stays_none"),
    ],
)
def test_normalized_forms(field, value, expected):
    assert normalize_field(field, value, region="US") == expected


def test_region_decides_how_a_national_phone_number_reads():
    assert normalize_field("phone_business", "020 7946 0000", region="GB") == "+442079460000"
    assert not same("phone_business", "020 7946 0000", "+442079460000", region="US")


def test_non_text_value_is_a_type_error_naming_the_field():
    with pytest.raises(TypeError, match="phone_business"):
        normalize_field("phone_business", 5550102000)  # type: ignore[arg-type]


EMAILISH = st.one_of(
    st.text(),
    st.builds(lambda a, b: f"{a}@{b}", st.text(), st.text()),
    st.sampled_from(["@", "a@", "@b", "a@@b", "\"a b\"@example.com", "a@[127.0.0.1]", "ä@ö.de", "x@xn--"]),
)


@settings(deadline=None)
@given(field=st.sampled_from(ACCOUNT_FIELDS), value=st.one_of(st.none(), st.text(), EMAILISH))
def test_normalization_never_raises_and_is_idempotent(field, value):
    once = normalize_field(field, value, region="US")
    assert once is None or (once != "" and once == once.strip())
    if field not in ("website",):  # stripping a scheme can reveal another one ("http://http://x")
        assert normalize_field(field, once, region="US") == once


def test_content_hash_ignores_formatting_and_field_order():
    a = CanonicalContact(first_name=" Ann ", phone_business="+1 (555) 010-2000", email="ANN@x.org")
    b = CanonicalContact(first_name="Ann", phone_business="+15550102000", email="ann@x.org")
    assert content_hash(a, ("first_name", "phone_business", "email"), region="US") == content_hash(
        b, ("email", "phone_business", "first_name"), region="US"
    )


def test_content_hash_changes_when_a_value_changes():
    a = CanonicalContact(first_name="Ann")
    b = CanonicalContact(first_name="Anna")
    assert content_hash(a, ACCOUNT_FIELDS, region="US") != content_hash(b, ACCOUNT_FIELDS, region="US")


def test_content_hash_covers_only_the_fields_asked_for():
    a = CanonicalContact(first_name="Ann", department="Sales")
    b = CanonicalContact(first_name="Ann", department="Ops")
    assert content_hash(a, ("first_name",), region="US") == content_hash(b, ("first_name",), region="US")


def test_content_hash_is_stable_across_processes():
    """A hash stored in the link table must match one computed by another process later."""
    code = (
        "from crmsync.core.normalize import content_hash;"
        "from schemas.canonical import CanonicalContact, ACCOUNT_FIELDS;"
        "print(content_hash(CanonicalContact(first_name='Zoë', notes='a\\nb', phone_mobile='555 010 2000'),"
        " ACCOUNT_FIELDS, region='US'))"
    )
    here = content_hash(
        CanonicalContact(first_name="Zoë", notes="a\nb", phone_mobile="555 010 2000"), ACCOUNT_FIELDS, region="US"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True,
        env={"PYTHONHASHSEED": "12345"},
    )
    assert out.stdout.strip() == here
    assert len(here) == 64 and int(here, 16) >= 0


def test_normalized_accepts_a_partial_mapping():
    assert normalized({"email": "A@B.com"}, ("email", "city"), region="US") == {"email": "a@b.com", "city": None}


def test_normalized_rejects_an_unknown_field_of_a_record():
    with pytest.raises(ValueError, match="nickname"):
        normalized(CanonicalContact(), ("nickname",), region="US")


# The plain-ASCII shortcut in _email must give exactly what email-validator's normalized form gives.
_EMAILISH = st.text(alphabet="abcXYZ019.-_+@\"[]() <>!#$%&'*/=?^`{|}~:;,\\xn", max_size=40)
_ADDRESS = st.builds(
    lambda local, domain, tld: f"{local}@{domain}.{tld}",
    st.text(alphabet="aBz09.-_+'!#$%&*/=?^`{|}~\"", min_size=0, max_size=20),
    st.text(alphabet="aBz09-.", min_size=0, max_size=20),
    st.sampled_from(["com", "ORG", "de", "x", "c0m", "", "xn--bcher-kva"]),
)


@settings(max_examples=2000, deadline=None)
@given(value=st.one_of(_EMAILISH, _ADDRESS))
def test_ascii_email_shortcut_agrees_with_email_validator(value):
    from crmsync.core.normalize import _text, _validated_email

    text = _text(value)
    assert normalize_field("email", value) == (None if text is None else _validated_email(text))


@pytest.mark.parametrize(
    "value",
    [
        "Bob@Example.COM", "bob@xn--bcher-kva.de", "BOB@XN--BCHER-KVA.DE", '"quoted local"@example.com',
        "bob@[127.0.0.1]", "Bob <bob@example.com>", "bob@example.com.", "bob..smith@example.com",
        ".bob@example.com", "bob@-example.com", "a" * 65 + "@example.com", "bob@" + "d" * 64 + ".com",
        "bob@localhost", "bob@example", "bob+tag@sub.example.co.uk", "b@b.c0m",
    ],
)
def test_ascii_email_edge_cases_agree_with_email_validator(value):
    from crmsync.core.normalize import _validated_email

    assert normalize_field("email", value) == _validated_email(value)
