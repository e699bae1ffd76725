"""Graph contact delta: initial round with nextLink paging, incremental rounds with @removed
tombstones, 410 for a bad token, deltaLinks that survive a restart (HTTP only)."""

from __future__ import annotations

from exchangelib import Contact
from exchangelib.protocol import BaseProtocol, NoVerifyHTTPAdapter

from .conftest import make_account
from .graph_helpers import ALICE, Graph, assert_graph_error, collect_delta, msal_token


def _delta(g, folder: str, page: int | None = None, **params):
    headers = {"Prefer": f"odata.maxpagesize={page}"} if page else {}
    return g.get(f"/users/{ALICE}/contactFolders/{folder}/contacts/delta", params=params, headers=headers)


def test_initial_round_pages_with_maxpagesize_then_incremental_changes(graph_env):
    _, _, g = graph_env
    folder = g.new_folder("CRM")
    ids = [g.new_contact(folder, {"givenName": f"C{i}"})["id"] for i in range(5)]
    first = _delta(g, folder, page=2)
    assert first.headers["Preference-Applied"] == "odata.maxpagesize=2"
    assert len(first.json()["value"]) == 2 and "@odata.nextLink" in first.json()
    values, delta_link, pages = collect_delta(g, first)
    assert pages == 3 and sorted(v["id"] for v in values) == sorted(ids)
    assert all(v["givenName"].startswith("C") for v in values)
    # Nothing changed: an empty page with a new deltaLink.
    r = g.follow(delta_link)
    assert r.status_code == 200 and r.json()["value"] == [] and "@odata.deltaLink" in r.json()
    # One create, one update, one delete, one create-then-delete (which nets to nothing).
    new = g.new_contact(folder, {"givenName": "New"})
    assert g.patch(f"/users/{ALICE}/contacts/{ids[1]}", json={"surname": "Updated"}).status_code == 200
    assert g.delete(f"/users/{ALICE}/contacts/{ids[2]}").status_code == 204
    brief = g.new_contact(folder, {"givenName": "Brief"})
    g.delete(f"/users/{ALICE}/contacts/{brief['id']}")
    values, delta_link2, _ = collect_delta(g, g.follow(delta_link))
    by_id = {v["id"]: v for v in values}
    assert set(by_id) == {new["id"], ids[1], ids[2]}
    assert by_id[ids[1]]["surname"] == "Updated" and by_id[new["id"]]["givenName"] == "New"
    assert by_id[ids[2]]["@removed"] == {"reason": "deleted"}
    assert set(by_id[ids[2]]) <= {"@odata.type", "id", "@removed"}
    # The old deltaLink still answers (from its own point), the new one is quiet.
    assert g.follow(delta_link2).json()["value"] == []


def test_incremental_round_pages_too_and_select_is_kept(graph_env):
    _, _, g = graph_env
    folder = g.new_folder("CRM")
    _, delta_link, _ = collect_delta(g, _delta(g, folder, page=3, **{"$select": "givenName"}))
    for i in range(7):
        g.new_contact(folder, {"givenName": f"N{i}", "surname": "S"})
    first = g.follow(delta_link, headers={"Prefer": "odata.maxpagesize=3"})
    values, _, pages = collect_delta(g, first)
    assert pages == 3 and sorted(v["givenName"] for v in values) == [f"N{i}" for i in range(7)]
    assert all(set(v) == {"@odata.etag", "id", "givenName"} for v in values)


def test_changes_made_over_ews_show_up_in_graph_delta(graph_env):
    emu, _, g = graph_env
    saved = BaseProtocol.HTTP_ADAPTER_CLS
    BaseProtocol.HTTP_ADAPTER_CLS = NoVerifyHTTPAdapter
    try:
        acc = make_account(emu)
        _, delta_link, _ = collect_delta(g, _delta(g, "contacts"))
        c = Contact(folder=acc.contacts, given_name="FromEws", display_name="From EWS")
        c.save()
        values, delta_link, _ = collect_delta(g, g.follow(delta_link))
        assert [v["givenName"] for v in values] == ["FromEws"]
        c.delete()
        values, _, _ = collect_delta(g, g.follow(delta_link))
        assert [v.get("@removed") for v in values] == [{"reason": "deleted"}]
    finally:
        BaseProtocol.HTTP_ADAPTER_CLS = saved


def test_bad_tokens_are_410_sync_state_not_found(graph_env):
    _, _, g = graph_env
    folder = g.new_folder("CRM")
    other = g.new_folder("Other")
    for bad in ("garbage", "AAAA", ""):
        r = _delta(g, folder, **{"$deltatoken": bad or "x"})
        assert_graph_error(r, 410, "syncStateNotFound")
    _, link, _ = collect_delta(g, _delta(g, folder))
    token = link.split("$deltatoken=", 1)[1]
    tampered = token[:-2] + ("AA" if not token.endswith("AA") else "BB")
    assert_graph_error(_delta(g, folder, **{"$deltatoken": tampered}), 410, "syncStateNotFound")
    assert_graph_error(_delta(g, other, **{"$deltatoken": token}), 410, "syncStateNotFound")
    assert_graph_error(_delta(g, folder, **{"$filter": "givenName eq 'x'"}), 400, "ErrorInvalidUrlQuery")
    assert_graph_error(g.get(f"/users/{ALICE}/contacts/delta"), 400, "BadRequest")


def test_delta_link_survives_an_emulator_restart(graph_env):
    emu, ca, g = graph_env
    folder = g.new_folder("CRM")
    g.new_contact(folder, {"givenName": "Before"})
    _, delta_link, _ = collect_delta(g, _delta(g, folder))
    emu.restart()
    g.close()
    g2 = Graph(emu, ca, msal_token(emu, ca))
    after = g2.new_contact(folder, {"givenName": "After"})
    values, _, _ = collect_delta(g2, g2.follow(delta_link))
    assert [v["id"] for v in values] == [after["id"]]
    g2.close()
