"""The ExchangeSide port's contract (and its change feed's), run against every adapter: EWS
(tests/contract/test_exchange_adapter.py) and Microsoft Graph (tests/contract/test_graph_adapter.py),
both against the emulator over the wire.

``ExchangeSideContract`` has no ``Test`` prefix and is never collected on its own. A subclass
provides the fixtures:

* ``side``   a fresh adapter on its own sync folder
* ``user``   a :class:`MailboxUser`: the mailbox's owner working in Outlook on the same folder
* ``feed``   the adapter's change feed on that folder
* ``faults`` a :class:`Faults`: the emulator's fault injection in the adapter's protocol terms
"""

from __future__ import annotations

import re
import time
from typing import Protocol

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from crmsync.errors import BadRecord, Stale, Transient
from crmsync.ports import ExchangeRecord
from schemas.canonical import ACCOUNT_FIELDS, CanonicalContact

FULL = CanonicalContact(
    first_name="Zoë", last_name="O'Brien & <Sons>", company_name="Müller \"GmbH\" & Co. <KG>",
    job_title="Head of R&D", department="Ünits ]]> & more", email="zoe@example.com", email2="z.obrien@example.org",
    phone_business="+41 44 123 45 67", phone_mobile="+41 79 765 43 21", phone_home="+41 44 000 00 00",
    fax="+41 44 123 45 68", street="Bahnhofstrasse 1\nPostfach 12", city="Zürich", state="ZH",
    postal_code="8001", country="Switzerland", website="https://example.com/a?b=1&c=2",
    notes="Line 1 <b>not html</b> & 'quotes'\r\nLine 2 — 名前 🙂\n\n\tindented &amp; &#13; ",
)


_xml_chars = st.characters(
    blacklist_categories=("Cs",),
    blacklist_characters=[chr(c) for c in (*range(0x20), *range(0x7F, 0xA0), *range(0xFDD0, 0xFDE0), 0xFFFE, 0xFFFF)
                          if c not in (0x09, 0x0A, 0x0D, 0x85)],
)
_text = st.text(_xml_chars, min_size=1, max_size=40) | st.sampled_from(["<&>", "]]>", "a\r\nb", " padded ", "名前🙂"])


class MailboxUser(Protocol):
    """What the mailbox owner does in Outlook, through the adapter's own protocol."""

    def add(self, given_name: str, *, private: bool = False, business_phones: tuple[str, ...] = (),
            home_city: str | None = None, business_city: str | None = None) -> str:
        """Create a contact (no crmsync stamp) in the sync folder; its id as the adapter names it."""

    def set_job_title(self, item_id: str, value: str) -> None: ...

    def entries(self, item_id: str) -> dict:
        """{"business_phones": [...], "home_city": str | None, "business_city": str | None}."""

    def folder_ids(self) -> set[str]: ...


class Faults(Protocol):
    def busy_on_create(self, seconds: float) -> None:
        """The server answers the next create request 'busy, come back in ``seconds``'."""

    def unavailable_on_read(self) -> None:
        """The server answers the next read request HTTP 503."""

    def clear(self) -> None: ...


class ExchangeSideContract:
    """The ExchangeSide port as the apply service uses it, and the feed as the producer does."""

    def representable(self, record: CanonicalContact) -> bool:
        """Whether the protocol can hold ``record`` at all (else the adapter says BadRecord)."""
        return True

    # ------------------------------------------------------------------ create / find / read

    def test_a_created_contact_is_stamped_and_found_by_its_crm_key(self, side) -> None:
        created = side.create("account:A-100", {"first_name": "Ada", "last_name": "Lovelace"})
        found = side.find_by_crm_key("account:A-100")
        assert found is not None
        assert (found.item_id, found.change_key, found.crm_key) == (created.item_id, created.change_key,
                                                                    "account:A-100")
        assert found.record == CanonicalContact(first_name="Ada", last_name="Lovelace")
        assert side.find_by_crm_key("account:nope") is None

    def test_every_mapped_field_survives_the_trip_through_exchange(self, side) -> None:
        created = side.create("account:FULL", FULL.model_dump())
        assert created.record == FULL
        read = side.read(created.item_id)
        assert read is not None and read.record == FULL
        assert read.change_key == created.change_key
        assert read.private is False and read.modified_at is not None

    def test_a_deleted_contact_reads_as_none(self, side) -> None:
        created = side.create("account:X", {"first_name": "X"})
        side.delete(created.item_id, created.change_key)
        assert side.read(created.item_id) is None
        assert side.find_by_crm_key("account:X") is None

    def test_read_many_keeps_the_order_and_marks_missing_items(self, side) -> None:
        a = side.create("account:RA", {"first_name": "A"})
        b = side.create("account:RB", {"first_name": "B"})
        side.delete(a.item_id, a.change_key)
        out = side.read_many([b.item_id, a.item_id])
        assert out[0].record.first_name == "B" and out[1] is None

    def test_find_many_by_crm_key_finds_the_stamped_and_leaves_out_the_unknown(self, side) -> None:
        made = side.create_many([(f"account:M{i}", {"first_name": f"M{i}"}) for i in range(25)])
        found = side.find_many_by_crm_key([f"account:M{i}" for i in range(25)] + ["account:none"])
        assert set(found) == {f"account:M{i}" for i in range(25)}
        assert found["account:M7"].item_id == made[7].item_id and found["account:M7"].record.first_name == "M7"

    def test_find_similar_finds_contacts_by_email_in_any_case_or_surname(self, side) -> None:
        """The candidates of a new CRM record (issue 8): one look-up for a whole batch's terms,
        more terms than one request holds."""
        ada = side.create("account:S1", {"first_name": "Ada", "last_name": "Lovelace", "email": "Ada@Acme.example"})
        grace = side.create("account:S2", {"first_name": "Grace", "last_name": "Hopper", "email": "g@old.example",
                                           "email2": "grace@navy.example"})
        side.create("account:S3", {"first_name": "Alan", "last_name": "Turing", "email": "alan@b.example"})
        found = side.find_similar(["ada@acme.example", "GRACE@navy.example"], [])
        assert sorted(r.item_id for r in found) == sorted([ada.item_id, grace.item_id])
        assert [r.record.first_name for r in side.find_similar([], ["Hopper"])] == ["Grace"]
        many = [f"nobody{i}@x.example" for i in range(70)] + ["alan@b.example"]
        assert [r.record.first_name for r in side.find_similar(many, [f"Nobody{i}" for i in range(30)])] == ["Alan"]
        assert side.find_similar([], []) == [] and side.find_similar(["none@x.example"], ["None"]) == []

    def test_search_finds_contacts_by_name_company_email_or_phone_within_a_limit(self, side, user) -> None:
        """The Link page's folder search (issue 12): found by the server, bounded by ``limit``;
        a private contact that matches comes back private and empty."""
        from crmsync.core.matching import search_terms

        ada = side.create("account:Q1", {"first_name": "Ada", "last_name": "Lovelace", "company_name": "Acme Works",
                                         "email": "Ada.L@Acme.example", "phone_mobile": "+1 415 555 0101"})
        grace = side.create("account:Q2", {"first_name": "Grace", "last_name": "Hopper", "company_name": "Navy",
                                           "email": "grace@navy.example"})
        side.create("account:Q3", {"first_name": "Alan", "last_name": "Turing", "email": "alan@b.example"})
        secret = user.add("Ada", private=True)

        def found(text: str, limit: int = 200) -> set[str]:
            return {r.item_id for r in side.search(search_terms(text), limit) if not r.private}

        assert found("ada") == {ada.item_id}
        assert found("LOVELACE ada") == {ada.item_id}
        assert found("acme") == {ada.item_id}
        assert found("GRACE@navy.example") == {grace.item_id}
        assert found("+1 415 555 0101") == {ada.item_id}
        assert found("nobody") == set()
        private = [r for r in side.search(search_terms("ada")) if r.item_id == secret]
        assert all(r.private and r.record == CanonicalContact() for r in private)
        many = [side.create(f"account:QL{i}", {"first_name": f"Linus{i}", "last_name": "Limit"}) for i in range(5)]
        assert len(many) == 5 and len(found("limit", limit=3)) == 3

    def test_search_finds_a_contact_by_part_of_its_email_address_or_by_any_of_its_phones(self, side) -> None:
        """The folder search by a part of an e-mail address (any case) and by a business or home
        phone as typed. (Over Graph neither is possible server-side: its subclass says so.)"""
        from crmsync.core.matching import search_terms

        grace = side.create("account:QE1", {"first_name": "Grace", "last_name": "Hopper", "email": "grace@navy.example",
                                            "phone_business": "+1 202 555 0147", "phone_home": "+1 202 555 0148",
                                            "phone_mobile": "+1 202 555 0149"})
        side.create("account:QE2", {"first_name": "Alan", "last_name": "Turing", "email": "alan@b.example"})

        def found(text: str) -> set[str]:
            return {r.item_id for r in side.search(search_terms(text)) if not r.private}

        assert found("grace@NAVY") == {grace.item_id}
        assert found("+1 202 555 0147") == {grace.item_id}
        assert found("+1 202 555 0148") == {grace.item_id}
        assert found("+1 202 555 0149") == {grace.item_id}

    # ------------------------------------------------------------------ update

    def test_update_with_the_current_change_key_writes_only_the_changes(self, side) -> None:
        created = side.create("account:U", {"first_name": "Ada", "city": "London", "phone_business": "+44 1"})
        updated = side.update(created.item_id, {"job_title": "Analyst", "city": None, "postal_code": "N1"},
                              created.change_key)
        assert updated.change_key != created.change_key
        expected = CanonicalContact(first_name="Ada", job_title="Analyst", postal_code="N1", phone_business="+44 1")
        assert updated.record == expected
        assert side.read(created.item_id).record == expected

    def test_update_keeps_the_users_own_entries(self, side, user) -> None:
        item_id = user.add("Ada", business_phones=("+44 1", "+44 9"), home_city="Bath", business_city="London")
        before = side.read(item_id)
        side.update(item_id, {"phone_business": "+44 2", "city": "Leeds"}, before.change_key)
        assert user.entries(item_id) == {"business_phones": ["+44 2", "+44 9"], "home_city": "Bath",
                                         "business_city": "Leeds"}

    def test_update_with_a_stale_change_key_is_stale_and_writes_nothing(self, side) -> None:
        created = side.create("account:S", {"first_name": "Ada"})
        newer = side.update(created.item_id, {"job_title": "One"}, created.change_key)
        with pytest.raises(Stale, match=re.escape(created.item_id)):
            side.update(created.item_id, {"job_title": "Two"}, created.change_key)
        assert side.read(created.item_id).record.job_title == "One"
        assert side.read(created.item_id).change_key == newer.change_key

    def test_a_concurrent_edit_in_outlook_makes_our_update_stale(self, side, user) -> None:
        created = side.create("account:C", {"first_name": "Ada"})
        side.read(created.item_id)
        user.set_job_title(created.item_id, "Edited in Outlook")
        with pytest.raises(Stale):
            side.update(created.item_id, {"job_title": "From the CRM"}, created.change_key)
        assert side.read(created.item_id).record.job_title == "Edited in Outlook"

    def test_update_of_a_deleted_contact_is_stale(self, side) -> None:
        created = side.create("account:G", {"first_name": "Gone"})
        side.delete(created.item_id, created.change_key)
        with pytest.raises(Stale, match="deleted or moved"):
            side.update(created.item_id, {"job_title": "x"}, created.change_key)

    def test_update_can_restamp_the_crm_key(self, side, user) -> None:
        item_id = user.add("Made in Outlook")
        before = side.read(item_id)
        assert before.crm_key is None
        after = side.update(item_id, {}, before.change_key, crm_key="account:NEW-1")
        assert after.crm_key == "account:NEW-1"
        assert side.find_by_crm_key("account:NEW-1").item_id == item_id

    def test_a_rename_moves_the_derived_display_name_along(self, side) -> None:
        created = side.create("account:REN", {"first_name": "Ada", "last_name": "Byron"})
        renamed = side.update(created.item_id, {"last_name": "Lovelace"}, created.change_key)
        assert renamed.record.last_name == "Lovelace"
        assert side.read(created.item_id).record.last_name == "Lovelace"

    # ------------------------------------------------------------------ delete

    def test_delete_moves_the_contact_out_of_the_folder(self, side, user) -> None:
        created = side.create("account:DEL", {"first_name": "Temporary"})
        side.delete(created.item_id, created.change_key)
        assert created.item_id not in user.folder_ids()
        assert side.find_by_crm_key("account:DEL") is None

    def test_deleting_a_contact_that_is_already_gone_is_not_an_error(self, side) -> None:
        created = side.create("account:TWICE", {"first_name": "Twice"})
        side.delete(created.item_id, created.change_key)
        side.delete(created.item_id, created.change_key)
        assert side.read(created.item_id) is None

    def test_delete_with_an_outdated_change_key_is_stale_and_keeps_the_contact(self, side) -> None:
        created = side.create("account:KEEP", {"first_name": "Keep"})
        side.update(created.item_id, {"job_title": "edited"}, created.change_key)
        with pytest.raises(Stale):
            side.delete(created.item_id, created.change_key)
        assert side.read(created.item_id) is not None

    def test_the_folder_reads_empty_until_it_holds_a_contact(self, side) -> None:
        assert side.folder_state() == "empty"
        created = side.create("account:FS", {"first_name": "Here"})
        assert side.folder_state() == "ok"
        side.delete(created.item_id, created.change_key)
        assert side.folder_state() == "empty"

    # ------------------------------------------------------------------ privacy

    def test_a_private_contact_reads_as_private_with_an_empty_record(self, side, user) -> None:
        item_id = user.add("Secret", private=True)
        rec = side.read(item_id)
        assert rec.private is True and rec.record == CanonicalContact()
        assert "Secret" not in repr(rec)
        (many,) = side.read_many([item_id])
        assert many.private is True and many.record == CanonicalContact()

    # ------------------------------------------------------------------ bulk and bad input

    def test_bulk_create_reports_a_bad_entry_alone(self, side) -> None:
        results = side.create_many([("account:OK1", {"first_name": "Fine"}),
                                    ("account:BAD", {"first_name": "x" * 300}),
                                    ("account:OK2", {"first_name": "Also fine"})])
        assert isinstance(results[0], ExchangeRecord) and isinstance(results[2], ExchangeRecord)
        assert isinstance(results[1], BadRecord)
        assert "account:BAD" in str(results[1]) and "first_name" in str(results[1])

    def test_bulk_create_of_45_contacts(self, side) -> None:
        entries = [(f"account:B{i:03d}", {"first_name": f"Bulk{i}", "email": f"bulk{i}@example.com"})
                   for i in range(45)]
        results = side.create_many(entries)
        assert [r.crm_key for r in results] == [k for k, _ in entries]
        read = side.read_many([r.item_id for r in results])
        assert [r.record.email for r in read] == [f"bulk{i}@example.com" for i in range(45)]

    # ------------------------------------------------------------------ faults

    def test_server_busy_beyond_max_wait_is_transient_with_the_servers_back_off(self, side, faults) -> None:
        faults.busy_on_create(2.0)
        t0 = time.monotonic()
        with pytest.raises(Transient) as info:
            side.create("account:BUSY", {"first_name": "Busy"})
        assert time.monotonic() - t0 < 2.0     # the adapter did not sit out the back-off itself
        assert info.value.retry_after == pytest.approx(2.0, abs=0.01)
        assert side.mailbox in str(info.value)
        assert side.find_by_crm_key("account:BUSY") is None
        assert side.create("account:BUSY", {"first_name": "Busy"}).crm_key == "account:BUSY"

    def test_server_unavailable_is_transient(self, side, faults) -> None:
        created = side.create("account:503", {"first_name": "Down"})
        faults.unavailable_on_read()
        with pytest.raises(Transient):
            side.read(created.item_id)

    # ------------------------------------------------------------------ feed

    def test_the_feed_reports_creates_updates_and_deletes_incrementally(self, side, feed) -> None:
        first, state, more = feed.changes(None)
        assert (list(first), more) == ([], False)
        a = side.create("account:FA", {"first_name": "A"})
        b = side.create("account:FB", {"first_name": "B"})
        changes, state, more = _drain(feed, state)
        assert {(c.item_id, c.change_key, c.op) for c in changes} == {
            (a.item_id, a.change_key, "upsert"), (b.item_id, b.change_key, "upsert")}
        a2 = side.update(a.item_id, {"job_title": "x"}, a.change_key)
        side.delete(b.item_id, b.change_key)
        changes, state, more = _drain(feed, state)
        assert {(c.item_id, c.change_key, c.op) for c in changes} == {
            (a.item_id, a2.change_key, "upsert"), (b.item_id, None, "delete")}
        again, _, _ = _drain(feed, state)
        assert list(again) == []

    def test_the_feed_pages_with_more(self, side, feed) -> None:
        _, state, _ = feed.changes(None)
        side.create_many([(f"account:P{i}", {"first_name": f"P{i}"}) for i in range(7)])
        seen: list[str] = []
        pages = 0
        more = True
        while more:
            changes, state, more = feed.changes(state, max_changes=3)
            assert len(changes) <= 3
            seen += [c.item_id for c in changes]
            pages += 1
        assert len(set(seen)) == 7 and pages >= 3

    # ------------------------------------------------------------------ round trip

    # One base-class method runs for every adapter (differing executors): the examples it stores
    # for one adapter are replayed for the others, which is what a shared contract wants. Each
    # example is a few requests to a server process: slow by design on a loaded machine.
    @settings(max_examples=25, deadline=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.differing_executors,
                                     HealthCheck.too_slow])
    @given(record=st.builds(CanonicalContact, **{f: st.none() | _text for f in ACCOUNT_FIELDS}))
    def test_generated_records_survive_create_read_and_clear(self, side, record) -> None:
        assume(self.representable(record))
        created = side.create("account:GEN", record.model_dump())
        assert side.read(created.item_id).record == record
        cleared = side.update(created.item_id, {f: None for f in ACCOUNT_FIELDS}, created.change_key)
        assert cleared.record == CanonicalContact() == side.read(created.item_id).record
        side.delete(created.item_id, cleared.change_key)


def _drain(feed, state):
    out = []
    more = True
    while more:
        changes, state, more = feed.changes(state)
        out += list(changes)
    return out, state, more
