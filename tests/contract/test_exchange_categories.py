"""Outlook categories stamped on pushed contacts (issue 9), through exchangelib against the
emulator: ours on every contact crmsync creates, and a user's own kept across our updates."""

from __future__ import annotations

from crmsync.adapters.exchange.ews.side import EwsExchange
from tests.contract.test_exchange_adapter import emulator_proc, ews_account, ews_folder  # noqa: F401 - fixtures


def test_pushed_contacts_carry_our_categories_and_keep_the_users_own(ews_account, ews_folder):  # noqa: F811
    side = EwsExchange(ews_account, ews_folder, categories=["CRM"])
    created = side.create("account:CAT-1", {"first_name": "Cat", "last_name": "Egory"})
    contact = ews_folder.get(id=created.item_id)
    assert contact.categories == ["CRM"]

    contact.categories = ["CRM", "VIP"]                      # the user adds their own in Outlook
    contact.save(update_fields=["categories"])
    fresh = side.read(created.item_id)
    updated = side.update(created.item_id, {"job_title": "Cartographer"}, fresh.change_key)
    contact = ews_folder.get(id=created.item_id)
    assert sorted(contact.categories) == ["CRM", "VIP"]
    assert contact.job_title == "Cartographer" and updated.record.job_title == "Cartographer"


def test_without_categories_nothing_is_stamped(ews_account, ews_folder):  # noqa: F811
    created = EwsExchange(ews_account, ews_folder).create("account:CAT-2", {"first_name": "Plain"})
    assert not ews_folder.get(id=created.item_id).categories
