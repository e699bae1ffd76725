"""The Graph field mapping: lossless for every mapped field (as the EWS mapping), and a PATCH keeps
the user's own entries (a second business phone, a home address, a third e-mail address).

Graph answers a contact with the properties it was written with, so the JSON a create or PATCH
body leaves behind is the read model here (``apply_patch``); the emulator tests check the server.
"""

from __future__ import annotations

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from crmsync.adapters.exchange.graph.mapping import (
    CRM_KEY_ID,
    FAX_ID,
    apply_patch,
    create_body,
    crm_key_of,
    patch_body,
    sensitivity_of,
    to_canonical,
)
from crmsync.errors import BadRecord
from schemas.canonical import ACCOUNT_FIELDS, CanonicalContact
from tests.unit.test_exchange_mapping import records, text


def graph_can_hold(record: CanonicalContact) -> bool:
    return not (record.email2 and not record.email)


@settings(max_examples=150, deadline=None)
@given(records)
def test_canonical_to_graph_and_back_is_lossless(record):
    assume(graph_can_hold(record))
    body = create_body(record.model_dump(), "account:A1")
    assert to_canonical(body) == record
    assert crm_key_of(body) == "account:A1"


@settings(max_examples=80, deadline=None)
@given(records, records)
def test_a_patch_turns_one_record_into_another_and_sends_only_changes(before, after):
    assume(graph_can_hold(before) and graph_can_hold(after))
    contact = create_body(before.model_dump(), "account:A1")
    changes = {f: getattr(after, f) for f in ACCOUNT_FIELDS if getattr(after, f) != getattr(before, f)}
    body = patch_body(contact, changes)
    assert to_canonical(apply_patch(contact, body)) == after
    if not changes:
        assert body == {}


@settings(max_examples=80, deadline=None)
@given(records, records, st.lists(text, min_size=7, max_size=7))
def test_a_patch_keeps_the_users_second_phones_and_home_address(before, after, t):
    # crmsync's first phones are set on both sides (clearing one before the user's second is refused)
    before = before.model_copy(update={"phone_business": t[0], "phone_home": t[1]})
    after = after.model_copy(update={"phone_business": t[2], "phone_home": t[3]})
    assume(graph_can_hold(before) and graph_can_hold(after))
    phone2, home2, home_city = t[4:]
    contact = create_body(before.model_dump(), "account:A1")
    contact["businessPhones"] = [*contact["businessPhones"], phone2]
    contact["homePhones"] = [*contact["homePhones"], home2]
    contact["homeAddress"] = {"city": home_city}
    done = apply_patch(contact, patch_body(contact, after.model_dump()))
    assert to_canonical(done) == after
    assert done["businessPhones"][-1] == phone2 and done["homePhones"][-1] == home2
    assert done["homeAddress"] == {"city": home_city}


def test_clearing_the_first_business_phone_before_the_users_second_is_a_bad_record():
    contact = create_body({"phone_business": "+41 1"}, "account:A1")
    contact["businessPhones"].append("+41 2")
    with pytest.raises(BadRecord, match="phone_business"):
        patch_body(contact, {"phone_business": None})
    assert patch_body(contact, {"phone_business": "+41 3"}) == {"businessPhones": ["+41 3", "+41 2"]}


def test_a_third_email_address_of_the_user_is_kept():
    contact = create_body({"email": "a@x.org", "email2": "b@x.org"}, "account:A1")
    contact["emailAddresses"].append({"address": "mine@home.org", "name": "Me"})
    body = patch_body(contact, {"email": "new@x.org"})
    assert [e["address"] for e in body["emailAddresses"]] == ["new@x.org", "b@x.org", "mine@home.org"]


def test_a_second_email_without_a_first_is_a_bad_record_naming_the_field():
    with pytest.raises(BadRecord, match="email2"):
        create_body({"email2": "b@x.org"}, "account:A1")
    contact = create_body({"email": "a@x.org", "email2": "b@x.org"}, "account:A1")
    with pytest.raises(BadRecord, match="email2"):
        patch_body(contact, {"email": None})


def test_the_fax_is_the_business_fax_extended_property_and_the_stamp_is_set_on_create():
    body = create_body({"first_name": "Ada", "fax": "+41 1"}, "account:A1")
    assert {p["id"]: p["value"] for p in body["singleValueExtendedProperties"]} == {CRM_KEY_ID: "account:A1",
                                                                                    FAX_ID: "+41 1"}
    assert patch_body(body, {"fax": None}) == {"singleValueExtendedProperties": [{"id": FAX_ID, "value": None}]}


def test_display_name_and_file_as_are_derived_and_follow_a_rename_unless_typed():
    body = create_body({"first_name": "Grace", "last_name": "Hopper"}, "account:A1")
    assert (body["displayName"], body["fileAs"]) == ("Grace Hopper", "Hopper, Grace")
    assert patch_body(body, {"last_name": "Murray"}) == {"surname": "Murray", "displayName": "Grace Murray",
                                                         "fileAs": "Murray, Grace"}
    typed = {**body, "displayName": "Amazing Grace"}
    assert "displayName" not in patch_body(typed, {"last_name": "Murray"})


def test_sensitivity_comes_from_pid_tag_sensitivity():
    assert sensitivity_of({"singleValueExtendedProperties": [{"id": "Integer 0x0036", "value": "2"}]}) == "Private"
    assert sensitivity_of({}) == "Normal"


def test_a_name_longer_than_exchange_allows_names_the_field():
    with pytest.raises(BadRecord, match="first_name"):
        create_body({"first_name": "x" * 256}, "account:A1")
