"""Extended properties over Graph, and one mailbox behind both protocols: a contact written over
EWS (exchangelib) is read and found by its stamp over Graph, and the other way round."""

from __future__ import annotations

from urllib.parse import quote

import pytest
from exchangelib import Contact, ExtendedProperty
from exchangelib.folders import Contacts
from exchangelib.indexed_properties import EmailAddress, PhoneNumber, PhysicalAddress
from exchangelib.protocol import BaseProtocol, NoVerifyHTTPAdapter

from .conftest import make_account
from .graph_helpers import ALICE, CRM_KEY_ID, SENSITIVITY_ID, assert_graph_error

STAMP_ATTR = "graph_test_crm_key"


class CrmKey(ExtendedProperty):
    """The stamp crmsync writes over EWS: PublicStrings, name crmsync-crm-key, String."""

    distinguished_property_set_id = "PublicStrings"
    property_name = "crmsync-crm-key"
    property_type = "String"


@pytest.fixture
def ews_account(graph_env):
    """alice over EWS on the same (HTTPS) emulator; exchangelib does not know the test CA, so its
    adapter skips verification for the length of the test."""
    saved = BaseProtocol.HTTP_ADAPTER_CLS
    BaseProtocol.HTTP_ADAPTER_CLS = NoVerifyHTTPAdapter
    try:
        yield make_account(graph_env[0])
    finally:
        BaseProtocol.HTTP_ADAPTER_CLS = saved


@pytest.fixture
def stamp_field():
    Contact.register(STAMP_ATTR, CrmKey)
    yield STAMP_ATTR
    Contact.deregister(STAMP_ATTR)


def _by_stamp(value: str) -> str:
    return f"singleValueExtendedProperties/Any(ep: ep/id eq '{CRM_KEY_ID}' and ep/value eq '{value}')"


EXPAND = f"singleValueExtendedProperties($filter=id eq '{CRM_KEY_ID}' or id eq '{SENSITIVITY_ID}')"


def _props(contact: dict) -> dict[str, str]:
    return {p["id"].lower(): p["value"] for p in contact.get("singleValueExtendedProperties", [])}


def test_stamp_on_create_read_with_expand_and_find_with_filter(graph_env):
    _, _, g = graph_env
    folder = g.new_folder("CRM")
    stamped = g.new_contact(folder, {"givenName": "Stamped", "singleValueExtendedProperties": [
        {"id": CRM_KEY_ID, "value": "ACC-1001"}, {"id": SENSITIVITY_ID, "value": "2"}]})
    g.new_contact(folder, {"givenName": "Other", "singleValueExtendedProperties": [
        {"id": CRM_KEY_ID, "value": "ACC-1002"}]})
    g.new_contact(folder, {"givenName": "Plain"})
    base = f"/users/{ALICE}/contactFolders/{folder}/contacts"
    found = g.get(base, params={"$filter": _by_stamp("ACC-1001")}).json()["value"]
    assert [c["id"] for c in found] == [stamped["id"]]
    assert "singleValueExtendedProperties" not in found[0]       # a filter does not expand
    # The id compares by identity (GUID case-insensitive); the value case-insensitively.
    lower = CRM_KEY_ID.replace("C000", "c000")
    q = f"singleValueExtendedProperties/any(ep: ep/id eq '{lower}' and ep/value eq 'acc-1001')"
    assert [c["id"] for c in g.get(base, params={"$filter": q}).json()["value"]] == [stamped["id"]]
    got = g.get(f"/users/{ALICE}/contacts/{stamped['id']}", params={"$expand": EXPAND}).json()
    assert _props(got) == {CRM_KEY_ID.lower(): "ACC-1001", SENSITIVITY_ID.lower(): "2"}
    plain = g.get(base, params={"$filter": "givenName eq 'Plain'", "$expand": EXPAND}).json()["value"][0]
    assert _props(plain) == {SENSITIVITY_ID.lower(): "0"}     # no stamp: left out; sensitivity normal
    # Sensitivity as a number: cast(ep/value, Edm.Int32).
    private = g.get(base, params={"$filter": f"singleValueExtendedProperties/Any(ep: ep/id eq '{SENSITIVITY_ID}'"
                                             f" and cast(ep/value, Edm.Int32) ge 2)"}).json()["value"]
    assert [c["id"] for c in private] == [stamped["id"]]
    # PATCH changes the stamp; the old value no longer finds it.
    r = g.patch(f"/users/{ALICE}/contacts/{stamped['id']}",
                json={"singleValueExtendedProperties": [{"id": CRM_KEY_ID, "value": "ACC-2001"}]})
    assert r.status_code == 200
    assert g.get(base, params={"$filter": _by_stamp("ACC-1001")}).json()["value"] == []
    assert len(g.get(base, params={"$filter": _by_stamp("ACC-2001")}).json()["value"]) == 1
    assert_graph_error(g.patch(f"/users/{ALICE}/contacts/{stamped['id']}", json={
        "singleValueExtendedProperties": [{"id": "String crmsync", "value": "x"}]}), 400, "ErrorInvalidProperty")
    assert_graph_error(g.patch(f"/users/{ALICE}/contacts/{stamped['id']}", json={
        "singleValueExtendedProperties": [{"id": SENSITIVITY_ID, "value": "7"}]}), 400, "ErrorInvalidPropertyValue")


def test_contact_made_over_ews_is_read_and_found_over_graph(graph_env, ews_account, stamp_field):
    _, _, g = graph_env
    acc = ews_account
    folder = Contacts(parent=acc.contacts, name="CRM")
    folder.save()
    c = Contact(folder=folder, given_name="Grace", surname="Hopper", display_name="Grace Hopper",
                company_name="Navy", job_title="Rear Admiral", department="Computing",
                email_addresses=[EmailAddress(email="grace@navy.example", label="EmailAddress1")],
                phone_numbers=[PhoneNumber(label="BusinessPhone", phone_number="+1 202 555 0100"),
                               PhoneNumber(label="MobilePhone", phone_number="+1 202 555 0101")],
                physical_addresses=[PhysicalAddress(label="Business", street="1 Navy Yard", city="Washington",
                                                    state="DC", zipcode="20374", country="USA")],
                body="Invented the compiler.", categories=["CRM"], sensitivity="Private")
    setattr(c, stamp_field, "ACC-3001")
    c.save()
    base = f"/users/{ALICE}/contactFolders/{_graph_id(folder.id)}/contacts"
    found = g.get(base, params={"$filter": _by_stamp("ACC-3001"), "$expand": EXPAND}).json()["value"]
    assert len(found) == 1
    got = found[0]
    assert got["id"] == _graph_id(c.id) and got["changeKey"] == c.changekey          # same ids underneath
    assert got["@odata.etag"] == f'W/"{c.changekey}"'
    assert (got["givenName"], got["surname"], got["displayName"]) == ("Grace", "Hopper", "Grace Hopper")
    assert (got["companyName"], got["jobTitle"], got["department"]) == ("Navy", "Rear Admiral", "Computing")
    assert [e["address"] for e in got["emailAddresses"]] == ["grace@navy.example"]
    assert got["businessPhones"] == ["+1 202 555 0100"] and got["mobilePhone"] == "+1 202 555 0101"
    assert got["businessAddress"] == {"street": "1 Navy Yard", "city": "Washington", "state": "DC",
                                      "postalCode": "20374", "countryOrRegion": "USA"}
    assert got["personalNotes"] == "Invented the compiler." and got["categories"] == ["CRM"]
    assert _props(got) == {CRM_KEY_ID.lower(): "ACC-3001", SENSITIVITY_ID.lower(): "2"}
    # A Graph PATCH is seen by EWS with a new ChangeKey, and the EWS ChangeKey is the Graph ETag.
    r = g.patch(f"/users/{ALICE}/contacts/{got['id']}", json={"jobTitle": "Admiral"},
                headers={"If-Match": got["@odata.etag"]})
    assert r.status_code == 200
    again = folder.get(id=c.id)
    assert again.job_title == "Admiral" and again.changekey == r.json()["changeKey"] != c.changekey


def test_contact_made_over_graph_is_read_and_found_over_ews(graph_env, ews_account, stamp_field):
    _, _, g = graph_env
    acc = ews_account
    folder_id = g.new_folder("CRM")
    made = g.new_contact(folder_id, {
        "givenName": "Alan", "surname": "Turing", "displayName": "Alan Turing", "companyName": "NPL",
        "emailAddresses": [{"name": "Alan", "address": "alan@npl.example"}],
        "businessPhones": ["+44 20 7946 0100"], "homePhones": ["+44 20 7946 0101"],
        "businessAddress": {"street": "Teddington", "city": "London", "postalCode": "TW11", "countryOrRegion": "UK"},
        "personalNotes": "Bletchley.", "categories": ["CRM", "Pioneer"],
        "singleValueExtendedProperties": [{"id": CRM_KEY_ID, "value": "ACC-4001"},
                                          {"id": SENSITIVITY_ID, "value": "1"}]})
    crm = next(f for f in acc.contacts.children if f.name == "CRM")
    assert crm.id == _ews_id(folder_id)
    hits = list(crm.filter(**{stamp_field: "ACC-4001"}))
    assert len(hits) == 1
    c = hits[0]
    assert c.id == _ews_id(made["id"]) and c.changekey == made["changeKey"]
    assert (c.given_name, c.surname, c.display_name, c.company_name) == ("Alan", "Turing", "Alan Turing", "NPL")
    assert [e.email for e in c.email_addresses] == ["alan@npl.example"]
    phones = {p.label: p.phone_number for p in c.phone_numbers}
    assert phones == {"BusinessPhone": "+44 20 7946 0100", "HomePhone": "+44 20 7946 0101"}
    addr = next(a for a in c.physical_addresses if a.label == "Business")
    assert (addr.street, addr.city, addr.zipcode, addr.country) == ("Teddington", "London", "TW11", "UK")
    assert str(c.body) == "Bletchley." and c.categories == ["CRM", "Pioneer"]
    assert c.sensitivity == "Personal" and getattr(c, stamp_field) == "ACC-4001"
    # An EWS update changes the ETag Graph reports; the old ETag is now stale for Graph.
    c.job_title = "Mathematician"
    c.save(update_fields=["job_title"])
    r = g.patch(f"/users/{ALICE}/contacts/{made['id']}", json={"jobTitle": "x"},
                headers={"If-Match": made["@odata.etag"]})
    assert_graph_error(r, 412, "ErrorIrresolvableConflict")
    now = g.get(f"/users/{ALICE}/contacts/{made['id']}").json()
    assert now["jobTitle"] == "Mathematician" and now["changeKey"] == c.changekey


def _graph_id(ews_id: str) -> str:
    return ews_id.replace("+", "-").replace("/", "_")


def _ews_id(graph_id: str) -> str:
    return graph_id.replace("-", "+").replace("_", "/")


def test_graph_ids_are_url_safe(graph_env):
    _, _, g = graph_env
    folder = g.new_folder("CRM")
    ids = [g.new_contact(folder, {"givenName": f"n{i}"})["id"] for i in range(20)]
    assert all("/" not in i and "+" not in i for i in ids)
    assert all(g.get(f"/users/{ALICE}/contacts/{quote(i)}").status_code == 200 for i in ids)


FAX_ID = "String 0x3A24"   # PidTagBusinessFaxNumber: Exchange's BusinessFax phone entry


def test_the_business_fax_is_one_property_behind_both_doors(graph_env, ews_account):
    """Graph's contact has no fax; PidTagBusinessFaxNumber (String 0x3A24) is the EWS BusinessFax entry."""
    _, _, g = graph_env
    folder = Contacts(parent=ews_account.contacts, name="Fax")
    folder.save()
    c = Contact(folder=folder, given_name="Fax", display_name="Fax",
                phone_numbers=[PhoneNumber(label="BusinessFax", phone_number="+41 44 000 00 01")])
    c.save()
    url = f"/users/{ALICE}/contacts/{_graph_id(c.id)}"
    expand = f"singleValueExtendedProperties($filter=id eq '{FAX_ID}')"
    assert _props(g.get(url, params={"$expand": expand}).json()) == {FAX_ID.lower(): "+41 44 000 00 01"}
    r = g.patch(url, json={"singleValueExtendedProperties": [{"id": FAX_ID, "value": "+41 44 000 00 02"}]})
    assert r.status_code == 200, r.text
    phones = {p.label: p.phone_number for p in folder.get(id=c.id).phone_numbers}
    assert phones == {"BusinessFax": "+41 44 000 00 02"}
    made = g.new_contact(_graph_id(folder.id), {"givenName": "New", "singleValueExtendedProperties": [
        {"id": FAX_ID, "value": "+41 44 000 00 03"}]})
    phones = {p.label: p.phone_number for p in folder.get(id=_ews_id(made["id"])).phone_numbers}
    assert phones == {"BusinessFax": "+41 44 000 00 03"}


def _seed_stamped(g, folder: str, first: int, count: int) -> None:
    """``count`` stamped contacts (``ACC-<n>``) created with ``$batch`` requests of 20."""
    url = f"/users/{ALICE}/contactFolders/{folder}/contacts"
    for start in range(first, first + count, 20):
        parts = [{"id": str(n + 1), "method": "POST", "url": url, "headers": {"Content-Type": "application/json"},
                  "body": {"givenName": f"P{i}", "singleValueExtendedProperties": [
                      {"id": CRM_KEY_ID, "value": f"ACC-{i}"}]}}
                 for n, i in enumerate(range(start, min(start + 20, first + count)))]
        answer = g.post("/$batch", json={"requests": parts})
        assert answer.status_code == 200 and {r["status"] for r in answer.json()["responses"]} == {201}


def _lookup_seconds(g, folder: str, keys: list[str]) -> float:
    import time

    base = f"/users/{ALICE}/contactFolders/{folder}/contacts"
    started = time.perf_counter()
    for key in keys:
        found = g.get(base, params={"$filter": _by_stamp(key.lower()), "$top": "100"}).json()["value"]
        assert [c["givenName"] for c in found] == [f"P{key.removeprefix('ACC-')}"]
    return time.perf_counter() - started


def test_a_stamp_lookup_does_not_slow_down_with_the_folder(graph_env):
    """A crmsync initial sync looks every CRM key up by its stamp before creating the contact: in
    a folder of 2,000 contacts a lookup must cost about what it costs in a folder of 20 (an index,
    not a pass over the folder). Measured in one test against one emulator, best of three, so
    the machine's load affects both sides alike; a scan is ~100 times slower here."""
    _, _, g = graph_env
    small, large = g.new_folder("Small"), g.new_folder("Large")
    _seed_stamped(g, small, 0, 20)
    _seed_stamped(g, large, 0, 2000)
    keys = [f"ACC-{i}" for i in range(0, 20, 2)]
    _lookup_seconds(g, large, keys[:2])          # first use (creates the index): not timed
    in_small = min(_lookup_seconds(g, small, keys) for _ in range(3))
    in_large = min(_lookup_seconds(g, large, keys) for _ in range(3))
    assert in_large < 5 * in_small + 0.05, f"{len(keys)} lookups: {in_large:.3f}s in 2,000 vs {in_small:.3f}s in 20"
