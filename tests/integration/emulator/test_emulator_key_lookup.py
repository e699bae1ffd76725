"""FindItem looking items up by many keys at once (an Or of IsEqualTo on one extended property,
what ``filter(prop__in=[...])`` sends): the emulator answers it by reading only that property of
each item, and the answer must be the one every term evaluated on its own would give —
case-insensitive text, numbers compared as numbers, sorted and paged like any other query."""

from __future__ import annotations

import pytest
from exchangelib import Contact, ExtendedProperty, Q


class LookupKey(ExtendedProperty):
    distinguished_property_set_id = "PublicStrings"
    property_name = "LookupKey"
    property_type = "String"


class QuotedKey(ExtendedProperty):
    distinguished_property_set_id = "PublicStrings"
    property_name = 'Lookup "Quoted" Key'
    property_type = "String"


@pytest.fixture
def keyed(account):
    Contact.register("lookup_key", LookupKey)
    Contact.register("quoted_key", QuotedKey)
    try:
        items = [Contact(folder=account.contacts, display_name=f"Person {i:02d}", lookup_key=f"acc-{i}",
                         quoted_key=f"q-{i}") for i in range(30)]
        items += [Contact(folder=account.contacts, display_name="Unkeyed"),
                  Contact(folder=account.contacts, display_name="Numeric", lookup_key="7"),
                  Contact(folder=account.contacts, display_name="Upper", lookup_key="ACC-UPPER")]
        account.bulk_create(folder=account.contacts, items=items)
        yield account.contacts
    finally:
        Contact.deregister("lookup_key")
        Contact.deregister("quoted_key")


def names(qs) -> list[str]:
    return sorted(qs.values_list("display_name", flat=True))


def test_many_keys_match_case_insensitively_and_skip_the_absent(keyed):
    wanted = ["ACC-3", "acc-12", "Acc-Upper", "acc-999", "acc-29"]
    assert names(keyed.filter(lookup_key__in=wanted)) == ["Person 03", "Person 12", "Person 29", "Upper"]
    assert names(keyed.filter(lookup_key="acc-5")) == ["Person 05"]
    assert list(keyed.filter(lookup_key__in=["nobody", "none"]).values_list("id", flat=True)) == []


def test_a_numeric_constant_still_compares_as_a_number(keyed):
    # "007" parses as a number, so it equals the stored "7": that term is evaluated on its own.
    assert names(keyed.filter(lookup_key__in=["007", "acc-1"])) == ["Numeric", "Person 01"]


def test_terms_on_other_properties_and_quoted_names_are_evaluated_too(keyed):
    either = keyed.filter(Q(lookup_key__in=["acc-1", "acc-2"]) | Q(display_name="Unkeyed"))
    assert names(either) == ["Person 01", "Person 02", "Unkeyed"]
    assert names(keyed.filter(quoted_key__in=["Q-4", "q-6"])) == ["Person 04", "Person 06"]


def test_key_lookup_sorts_and_pages_like_any_query(keyed):
    wanted = [f"acc-{i}" for i in range(0, 30, 2)]            # 15 matches
    qs = keyed.filter(lookup_key__in=wanted).order_by("-display_name")
    qs.page_size = 4
    got = list(qs.values_list("display_name", flat=True))
    assert got == [f"Person {i:02d}" for i in range(28, -1, -2)]
    plain = keyed.filter(lookup_key__in=wanted)
    plain.page_size = 4
    assert sorted(plain.values_list("lookup_key", flat=True)) == sorted(wanted)
    assert keyed.filter(lookup_key__in=wanted).count() == 15


def test_a_second_lookup_sees_items_changed_created_moved_and_deleted_since_the_first(keyed, account):
    wanted = ["acc-1", "acc-2", "acc-3", "acc-new", "acc-renamed"]
    assert names(keyed.filter(lookup_key__in=wanted)) == ["Person 01", "Person 02", "Person 03"]
    one = keyed.get(lookup_key="acc-1")
    one.lookup_key = "acc-renamed"
    one.save(update_fields=["lookup_key"])
    keyed.get(lookup_key="acc-2").delete()
    keyed.get(lookup_key="acc-3").move(account.trash)
    account.bulk_create(folder=keyed, items=[Contact(folder=keyed, display_name="New", lookup_key="ACC-NEW")])
    assert names(keyed.filter(lookup_key__in=wanted)) == ["New", "Person 01"]
    assert names(keyed.filter(lookup_key__in=["acc-1", "acc-2", "acc-3"])) == []
    assert names(account.trash.filter(lookup_key__in=wanted)) == ["Person 03"]
