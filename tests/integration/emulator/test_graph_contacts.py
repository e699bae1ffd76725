"""Graph contact folders and contacts: CRUD, field round trips, query options, ETags (HTTP only)."""

from __future__ import annotations

from .graph_helpers import ALICE, CRM_KEY_ID, assert_graph_error

FULL = {
    "givenName": "Ada", "middleName": "King", "surname": "Lovelace", "displayName": "Ada Lovelace",
    "fileAs": "Lovelace, Ada", "companyName": "Analytical Engines Ltd", "jobTitle": "Programmer",
    "department": "R&D", "emailAddresses": [{"name": "Ada L", "address": "ada@example.org"},
                                           {"name": "Work", "address": "ada@engines.example"}],
    "businessPhones": ["+44 20 7946 0001", "+44 20 7946 0002"], "mobilePhone": "+44 7700 900123",
    "homePhones": ["+44 20 7946 0003"],
    "businessAddress": {"street": "12 St James's Square", "city": "London", "state": "Greater London",
                        "postalCode": "SW1Y 4JH", "countryOrRegion": "United Kingdom"},
    "businessHomePage": "https://engines.example", "personalNotes": "Met at the Royal Society.\nLikes Bernoulli.",
    "categories": ["CRM", "VIP"],
}


def _subset(obj: dict, expected: dict) -> dict:
    return {k: obj.get(k) for k in expected}


def test_contact_folders_list_create_nest_get(graph_env):
    _, _, g = graph_env
    crm = g.new_folder("CRM Accounts")
    assert_graph_error(g.post(f"/users/{ALICE}/contactFolders", json={"displayName": "crm accounts"}), 409,
                       "ErrorFolderExists")
    r = g.post(f"/users/{ALICE}/contactFolders/{crm}/childFolders", json={"displayName": "Secondary"})
    assert r.status_code == 201
    child = r.json()
    assert child["parentFolderId"] == crm and child["displayName"] == "Secondary"
    listing = g.get(f"/users/{ALICE}/contactFolders").json()["value"]
    assert [f["displayName"] for f in listing] == ["CRM Accounts"]
    kids = g.get(f"/users/{ALICE}/contactFolders/{crm}/childFolders").json()["value"]
    assert [f["id"] for f in kids] == [child["id"]]
    r = g.get(f"/users/{ALICE}/contactFolders/{crm}/childFolders/{child['id']}")
    assert r.status_code == 200 and r.json()["displayName"] == "Secondary"
    default = g.get(f"/users/{ALICE}/contactFolders/contacts").json()
    assert default["displayName"] == "Contacts" and listing[0]["parentFolderId"] == default["id"]
    sel = g.get(f"/users/{ALICE}/contactFolders/{crm}", params={"$select": "displayName"}).json()
    assert set(sel) == {"id", "displayName"}
    filt = g.get(f"/users/{ALICE}/contactFolders", params={"$filter": "displayName eq 'crm accounts'"})
    assert [f["id"] for f in filt.json()["value"]] == [crm]
    # A well-formed id that names nothing, and a folder that is not a contact folder.
    missing = crm[:-4] + ("AAAA" if not crm.endswith("AAAA") else "BBBB")
    assert_graph_error(g.get(f"/users/{ALICE}/contactFolders/{missing}"), 404, "ErrorItemNotFound")


def test_contact_round_trips_every_mapped_field(graph_env):
    _, _, g = graph_env
    folder = g.new_folder("CRM")
    created = g.new_contact(folder, FULL)
    assert _subset(created, FULL) == FULL
    assert created["parentFolderId"] == folder
    assert created["@odata.etag"] == f'W/"{created["changeKey"]}"'
    assert created["createdDateTime"].endswith("Z") and created["lastModifiedDateTime"].endswith("Z")
    for path in (f"/users/{ALICE}/contactFolders/{folder}/contacts/{created['id']}",
                 f"/users/{ALICE}/contacts/{created['id']}"):
        got = g.get(path).json()
        assert _subset(got, FULL) == FULL
        assert got["id"] == created["id"] and got["changeKey"] == created["changeKey"]
    # Every v1.0 contact property is present (null or empty when unset), as Graph returns them.
    for prop in ("nickName", "title", "initials", "imAddresses", "homeAddress", "otherAddress", "children"):
        assert prop in created


def test_patch_changes_replaces_and_clears(graph_env):
    _, _, g = graph_env
    folder = g.new_folder("CRM")
    c = g.new_contact(folder, FULL)
    patch = {"jobTitle": "Countess", "businessPhones": ["+1 555 0100"], "mobilePhone": None,
             "emailAddresses": [{"name": "New", "address": "new@example.org"}],
             "businessAddress": {"city": "Paris"}, "categories": [], "personalNotes": None}
    r = g.patch(f"/users/{ALICE}/contacts/{c['id']}", json=patch)
    assert r.status_code == 200, r.text
    got = g.get(f"/users/{ALICE}/contacts/{c['id']}").json()
    assert got["jobTitle"] == "Countess" and got["businessPhones"] == ["+1 555 0100"]
    assert got["mobilePhone"] is None and got["homePhones"] == FULL["homePhones"]     # untouched
    assert got["emailAddresses"] == [{"name": "New", "address": "new@example.org"}]
    assert got["businessAddress"] == {"city": "Paris"}
    assert got["categories"] == [] and got["personalNotes"] is None
    assert got["givenName"] == "Ada"
    assert got["changeKey"] != c["changeKey"] and got["@odata.etag"] == f'W/"{got["changeKey"]}"'
    assert_graph_error(g.patch(f"/users/{ALICE}/contacts/{c['id']}", json={"favouriteColour": "red"}), 400,
                       "RequestBodyRead")


def test_delete_moves_out_of_the_folder_and_missing_is_404(graph_env):
    _, _, g = graph_env
    folder = g.new_folder("CRM")
    c = g.new_contact(folder, {"givenName": "Gone"})
    r = g.delete(f"/users/{ALICE}/contactFolders/{folder}/contacts/{c['id']}")
    assert r.status_code == 204 and r.content == b""
    assert_graph_error(g.get(f"/users/{ALICE}/contactFolders/{folder}/contacts/{c['id']}"), 404,
                       "ErrorItemNotFound")
    assert g.get(f"/users/{ALICE}/contactFolders/{folder}/contacts").json()["value"] == []
    # Like Graph, DELETE moves the contact to Deleted Items; /contacts/{id} still finds it there.
    moved = g.get(f"/users/{ALICE}/contacts/{c['id']}").json()
    assert moved["parentFolderId"] != folder
    assert_graph_error(g.get(f"/users/{ALICE}/contacts/AAMkAGVmMDEzMTM4AAA="), 404, "ErrorItemNotFound")
    assert_graph_error(g.get(f"/users/{ALICE}/contacts/not*an*id"), 400, "ErrorInvalidIdMalformed")


def test_select_top_skip_paging_orderby_and_filters(graph_env):
    _, _, g = graph_env
    folder = g.new_folder("CRM")
    names = ["Carol", "alice", "Bob", "Dave", "Erin"]
    for i, n in enumerate(names):
        g.new_contact(folder, {"givenName": n, "surname": f"S{i}",
                               "emailAddresses": [{"address": f"{n.lower()}@example.org"}]})
    base = f"/users/{ALICE}/contactFolders/{folder}/contacts"
    r = g.get(base, params={"$select": "givenName", "$top": "2", "$orderby": "givenName"})
    seen = []
    pages = 0
    while True:
        assert r.status_code == 200, r.text
        body = r.json()
        pages += 1
        for v in body["value"]:
            assert set(v) == {"@odata.etag", "id", "givenName"}
            seen.append(v["givenName"])
        if "@odata.nextLink" not in body:
            break
        r = g.follow(body["@odata.nextLink"])
    assert seen == ["alice", "Bob", "Carol", "Dave", "Erin"] and pages == 3
    desc = g.get(base, params={"$orderby": "givenName desc", "$top": "1", "$skip": "1"}).json()["value"]
    assert [c["givenName"] for c in desc] == ["Dave"]
    eq = g.get(base, params={"$filter": "givenName eq 'BOB'"}).json()["value"]      # case-insensitive
    assert [c["givenName"] for c in eq] == ["Bob"]
    anymail = g.get(base, params={"$filter": "emailAddresses/any(a: a/address eq 'erin@example.org')"}).json()
    assert [c["givenName"] for c in anymail["value"]] == ["Erin"]
    combo = g.get(base, params={"$filter": "startswith(givenName,'c') or surname eq 'S3'"}).json()["value"]
    assert sorted(c["givenName"] for c in combo) == ["Carol", "Dave"]
    # Unsupported shapes answer 400 with a Graph error body.
    assert_graph_error(g.get(base, params={"$filter": "givenName eq"}), 400, "BadRequest")
    assert_graph_error(g.get(base, params={"$filter": "length(givenName) eq 3"}), 400, "ErrorInvalidUrlQueryFilter")
    assert_graph_error(g.get(base, params={"$filter": "shoeSize eq 3"}), 400, "RequestBroker--ParseUri")
    assert_graph_error(g.get(base, params={"$select": "shoeSize"}), 400, "RequestBroker--ParseUri")
    assert_graph_error(g.get(base, params={"$apply": "x"}), 400, "BadRequest")
    assert_graph_error(g.get(base, params={"$top": "-1"}), 400, "BadRequest")


def test_if_match_and_etags(graph_env):
    _, _, g = graph_env
    folder = g.new_folder("CRM")
    c = g.new_contact(folder, {"givenName": "Versioned"})
    path = f"/users/{ALICE}/contacts/{c['id']}"
    r = g.patch(path, json={"surname": "One"}, headers={"If-Match": c["@odata.etag"]})
    assert r.status_code == 200
    fresh = r.json()
    assert fresh["changeKey"] != c["changeKey"]
    stale = g.patch(path, json={"surname": "Two"}, headers={"If-Match": c["@odata.etag"]})
    assert_graph_error(stale, 412, "ErrorIrresolvableConflict")
    assert g.get(path).json()["surname"] == "One"
    assert_graph_error(g.delete(path, headers={"If-Match": c["@odata.etag"]}), 412, "ErrorIrresolvableConflict")
    assert g.patch(path, json={"surname": "Three"}, headers={"If-Match": "*"}).status_code == 200
    current = g.get(path).json()["@odata.etag"]
    assert g.delete(path, headers={"If-Match": current}).status_code == 204


def test_immutable_id_preference_is_acknowledged_and_ids_do_not_change(graph_env):
    _, _, g = graph_env
    folder = g.new_folder("CRM")
    prefer = {"Prefer": 'IdType="ImmutableId"'}
    r = g.post(f"/users/{ALICE}/contactFolders/{folder}/contacts", json={"givenName": "Stable"}, headers=prefer)
    assert r.status_code == 201 and r.headers["Preference-Applied"] == 'IdType="ImmutableId"'
    cid = r.json()["id"]
    assert g.get(f"/users/{ALICE}/contacts/{cid}").json()["id"] == cid      # the same id with or without
    g.delete(f"/users/{ALICE}/contacts/{cid}")
    assert g.get(f"/users/{ALICE}/contacts/{cid}", headers=prefer).json()["id"] == cid   # moved: same id


def test_contact_filters_graph_refuses_on_collections_answer_as_graph_does(graph_env):
    """Graph filters ``emailAddresses`` only with ``any`` and ``eq`` on ``address`` (user-list-contacts,
    "Optional query parameters"); anything else there, and functions inside a lambda over the phone
    string collections, answer 400 ErrorInvalidUrlQueryFilter, as Graph answers
    (microsoft-graph-docs issue 2933). The shapes Graph allows keep working."""
    _, _, g = graph_env
    folder = g.new_folder("CRM")
    g.new_contact(folder, {"givenName": "Erin", "surname": "Ek", "mobilePhone": "+1 415 555 0101",
                                  "businessPhones": ["+1 212 555 0199"],
                                  "emailAddresses": [{"name": "Erin", "address": "Erin.Ek@Example.org"}]})
    g.new_contact(folder, {"givenName": "Bob", "emailAddresses": [{"address": "bob@example.org"}]})
    base = f"/users/{ALICE}/contactFolders/{folder}/contacts"
    refused = [
        "emailAddresses/any(a: startswith(a/address,'erin'))",
        "emailAddresses/any(a: contains(a/address,'example'))",
        "emailAddresses/any(a: endswith(a/address,'.org'))",
        "emailAddresses/any(a: a/address ne 'bob@example.org')",
        "emailAddresses/any(a: a/name eq 'Erin')",
        "emailAddresses/any(a: a/address eq 'x@example.org' or a/address eq 'bob@example.org')",
        "givenName eq 'Erin' or emailAddresses/any(a: startswith(a/address,'bob'))",
        "businessPhones/any(p: startswith(p,'+1 212'))",
        "homePhones/any(p: contains(p,'555'))",
    ]
    for flt in refused:
        r = g.get(base, params={"$filter": flt})
        assert_graph_error(r, 400, "ErrorInvalidUrlQueryFilter")
        assert "invalid nodes" in r.json()["error"]["message"], flt
    allowed = {
        "emailAddresses/any(a: a/address eq 'erin.ek@example.org')": ["Erin"],      # case-insensitive
        "emailAddresses/any(a:a/address eq 'bob@example.org') or surname eq 'Ek'": ["Bob", "Erin"],
        "startswith(givenName,'er') or startswith(companyName,'x')": ["Erin"],
        "startswith(mobilePhone,'+1 415')": ["Erin"],
        "businessPhones/any(p: p eq '+1 212 555 0199')": ["Erin"],
        f"singleValueExtendedProperties/Any(ep: ep/id eq '{CRM_KEY_ID}' and ep/value ne '')": [],
    }
    for flt, names in allowed.items():
        r = g.get(base, params={"$filter": flt})
        assert r.status_code == 200, (flt, r.text)
        assert sorted(c["givenName"] for c in r.json()["value"]) == names, flt
