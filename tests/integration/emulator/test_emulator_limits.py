"""What Exchange refuses, cuts and hides, through exchangelib over HTTP (issue 7).

exchangelib refuses some values client-side (CharField max_length); to see what the *server*
does with them these tests lift the client's limit for one test, as exchangelib's own live suite
does (tests/test_items/test_basics.py, test_text_field_settings). Likewise FindItem is forced for
a field exchangelib would fetch with GetItem by marking it not complex for one test.
"""

from __future__ import annotations

import base64
import urllib.error
import urllib.request

import pytest
from exchangelib import Contact, HTMLBody
from exchangelib.errors import ErrorItemSavePropertyError, ErrorPropertyUpdate

from .conftest import USERS


def lift_client_limit(monkeypatch, name: str, length: int = 4000) -> None:
    monkeypatch.setattr(Contact.get_field_by_fieldname(name), "max_length", length)


def force_find_item(monkeypatch, name: str) -> None:
    monkeypatch.setattr(Contact.get_field_by_fieldname(name), "is_complex", False)


@pytest.mark.parametrize("field", ["given_name", "middle_name", "surname"])
def test_name_over_255_is_refused_on_update_and_the_item_is_unchanged(account, monkeypatch, field):
    c = Contact(folder=account.contacts, display_name="Long", **{field: "Short"})
    c.save()
    ck = c.changekey
    lift_client_limit(monkeypatch, field)
    setattr(c, field, "x" * 256)
    with pytest.raises(ErrorPropertyUpdate):
        c.save(update_fields=[field])
    got = account.contacts.get(id=c.id)
    assert getattr(got, field) == "Short"
    assert got.changekey == ck


@pytest.mark.parametrize("field", ["given_name", "middle_name", "surname"])
def test_name_over_255_is_refused_on_create(account, monkeypatch, field):
    lift_client_limit(monkeypatch, field)
    with pytest.raises(ErrorItemSavePropertyError):
        Contact(folder=account.contacts, display_name="Long", **{field: "y" * 300}).save()
    assert account.contacts.all().count() == 0


def test_exactly_255_is_accepted(account):
    c = Contact(folder=account.contacts, display_name="Max", given_name="g" * 255, middle_name="m" * 255,
                surname="s" * 255)
    c.save()
    got = account.contacts.get(id=c.id)
    assert (got.given_name, got.middle_name, got.surname) == ("g" * 255, "m" * 255, "s" * 255)


def test_length_counts_utf16_units_as_exchange_does(account):
    # 128 emoji are 128 characters for Python and exchangelib, but 256 UTF-16 units for Exchange.
    emoji = "\U0001F600" * 128
    c = Contact(folder=account.contacts, display_name="Emoji", given_name="ok")
    c.save()
    c.given_name = emoji
    with pytest.raises(ErrorPropertyUpdate):
        c.save(update_fields=["given_name"])
    c.given_name = "\U0001F600" * 127 + "a"      # 255 units
    c.save(update_fields=["given_name"])
    assert account.contacts.get(id=c.id).given_name == "\U0001F600" * 127 + "a"


def test_bulk_create_refuses_only_the_item_over_the_limit(account, monkeypatch):
    # Each item of a CreateItem request succeeds or fails on its own; exchangelib raises the first
    # per-item error it reads.
    lift_client_limit(monkeypatch, "surname")
    with pytest.raises(ErrorItemSavePropertyError):
        account.bulk_create(folder=account.contacts, items=[
            Contact(folder=account.contacts, display_name="Good", surname="Fine"),
            Contact(folder=account.contacts, display_name="Bad", surname="z" * 1000),
        ])
    assert [c.display_name for c in account.contacts.all()] == ["Good"]


def test_subject_is_cut_to_255_on_create_and_update(account, monkeypatch):
    lift_client_limit(monkeypatch, "subject")
    c = Contact(folder=account.contacts, display_name="Subj", subject="a" * 300)
    c.save()
    assert account.contacts.get(id=c.id).subject == "a" * 255
    c.subject = "b" * 4000
    c.save(update_fields=["subject"])
    assert account.contacts.get(id=c.id).subject == "b" * 255


def test_text_fields_without_a_documented_limit_are_stored_whole(account):
    long = "C" * 4000
    c = Contact(folder=account.contacts, display_name=long, company_name=long, job_title=long, department=long,
                file_as=long, business_homepage="https://example.com/" + "p" * 3000)
    c.save()
    got = account.contacts.get(id=c.id)
    assert (got.display_name, got.company_name, got.job_title, got.department, got.file_as) == (long,) * 5
    assert got.business_homepage == "https://example.com/" + "p" * 3000


def test_find_item_returns_the_first_255_characters_and_get_item_the_whole(account, monkeypatch):
    long = "0123456789" * 40
    c = Contact(folder=account.contacts, display_name="Find", company_name=long, children=[long, "short"])
    c.save()
    force_find_item(monkeypatch, "company_name")
    force_find_item(monkeypatch, "children")
    [found] = list(account.contacts.all().only("company_name", "children"))  # FindItem, not GetItem
    assert found.company_name == long[:255]
    assert found.children == [long[:255], "short"]
    got = account.contacts.get(id=c.id)
    assert got.company_name == long
    assert got.children == [long, "short"]


def test_find_item_cuts_by_utf16_units(account, monkeypatch):
    c = Contact(folder=account.contacts, display_name="Emoji", company_name="\U0001F600" * 200)
    c.save()
    force_find_item(monkeypatch, "company_name")
    [found] = list(account.contacts.all().only("company_name"))
    assert found.company_name == "\U0001F600" * 127   # 254 units; the 128th would split at 255


def test_find_item_returns_no_body(account, monkeypatch):
    c = Contact(folder=account.contacts, display_name="Body", body=HTMLBody("<p>hello</p>"))
    c.save()
    force_find_item(monkeypatch, "body")
    [found] = list(account.contacts.all().only("body"))   # FindItem asking for item:Body
    assert found.id == c.id
    assert found.body is None
    assert account.contacts.get(id=c.id).body == "<p>hello</p>"


# -- characters XML 1.0 cannot carry ----------------------------------------------------------

def test_exchangelib_replaces_characters_xml_cannot_carry_and_the_emulator_keeps_the_rest(account):
    # exchangelib (util._ILLEGAL_XML_CHARS_RE) sends '?' for C0/C1 controls other than tab, LF, CR
    # and U+0085, for U+FDD0-U+FDDF, U+FFFE and U+FFFF; U+0085 and the other characters XML 1.0
    # allows pass through and are stored as sent, as Exchange stores them.
    sent = "a\x01b\x7fc\x80d\x85e\x9ff\ufdd0g\ufffeh\u00e9i\tj"
    c = Contact(folder=account.contacts, display_name="Chars", given_name=sent, company_name=sent)
    c.save()
    got = account.contacts.get(id=c.id)
    expected = "a?b?c?d\x85e?f?g?h\u00e9i\tj"
    assert got.given_name == expected
    assert got.company_name == expected


def _raw_soap(emulator, body: str) -> tuple[int, bytes]:
    envelope = (
        '<?xml version="1.0" encoding="utf-8"?>'
        '<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"'
        ' xmlns:m="http://schemas.microsoft.com/exchange/services/2006/messages"'
        ' xmlns:t="http://schemas.microsoft.com/exchange/services/2006/types">'
        '<s:Header><t:RequestServerVersion Version="Exchange2016"/></s:Header>'
        f'<s:Body>{body}</s:Body></s:Envelope>'
    ).encode()
    auth = base64.b64encode(f"alice@example.com:{USERS['alice@example.com']}".encode()).decode()
    req = urllib.request.Request(emulator.url, data=envelope, method="POST",
                                 headers={"Content-Type": "text/xml; charset=utf-8", "Authorization": f"Basic {auth}"})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def _create_contact_xml(given_name_xml: str) -> str:
    return ('<m:CreateItem><m:SavedItemFolderId><t:DistinguishedFolderId Id="contacts"/></m:SavedItemFolderId>'
            f'<m:Items><t:Contact><t:DisplayName>Raw</t:DisplayName><t:GivenName>{given_name_xml}</t:GivenName>'
            '</t:Contact></m:Items></m:CreateItem>')


@pytest.mark.parametrize("illegal", ["&#x1;", "&#xFFFE;", "\x01"])
def test_a_client_sending_characters_xml_forbids_gets_a_schema_validation_fault(account, emulator, illegal):
    # A client that does not sanitize (not exchangelib) and sends a character XML 1.0 forbids, raw
    # or as a character reference: Exchange's XML reader rejects the request as a whole.
    status, body = _raw_soap(emulator, _create_contact_xml(f"a{illegal}b"))
    assert status == 500
    assert b"ErrorSchemaValidation" in body
    assert account.contacts.all().count() == 0


def test_a_client_sending_c1_controls_raw_has_them_stored(account, emulator):
    # U+0080-U+009F and U+FDD0-U+FDDF are legal XML 1.0 characters: Exchange accepts them from a
    # client that sends them (exchangelib never does), and so does the emulator.
    status, body = _raw_soap(emulator, _create_contact_xml("a\x80b\ufdd0c"))
    assert status == 200, body
    assert b"NoError" in body
    [c] = list(account.contacts.all())
    assert c.given_name == "a\x80b\ufdd0c"


def test_a_raw_client_over_the_name_limit_gets_the_create_error(account, emulator):
    status, body = _raw_soap(emulator, _create_contact_xml("n" * 256))
    assert status == 200
    assert b"ErrorItemSavePropertyError" in body
    assert account.contacts.all().count() == 0
