"""Notifications through exchangelib: pull subscriptions with GetEvents, streaming subscriptions
with GetStreamingEvents (a change made while the stream is open arrives at once), Unsubscribe."""

from __future__ import annotations

import threading
import time
import uuid

import pytest
from exchangelib import Contact
from exchangelib.errors import (
    ErrorInvalidPullSubscriptionId,
    ErrorInvalidWatermark,
    ErrorSubscriptionAccessDenied,
    ErrorSubscriptionNotFound,
)
from exchangelib.folders import Contacts
from exchangelib.properties import (
    CreatedEvent,
    DeletedEvent,
    ModifiedEvent,
    MovedEvent,
    StatusEvent,
)
from exchangelib.services import GetStreamingEvents

from .conftest import make_account


@pytest.fixture
def folder(account):
    f = Contacts(parent=account.contacts, name=f"notify-{uuid.uuid4().hex[:8]}")
    f.save()
    return f


def events_since(folder, subscription_id: str, watermark: str) -> tuple[list, str]:
    """Every event after ``watermark`` (following MoreEvents) and the watermark to continue from."""
    events = []
    for notification in folder.get_events(subscription_id, watermark):
        events.extend(notification.events)
        watermark = notification.events[-1].watermark
    return [e for e in events if not isinstance(e, StatusEvent)], watermark


def test_pull_subscription_sees_create_modify_and_delete_in_order(folder):
    sub_id, watermark = folder.subscribe_to_pull()

    ann = Contact(folder=folder, given_name="Ann", display_name="Ann")
    ann.save()
    ann.surname = "Edited"
    ann.save(update_fields=["surname"])
    ann_id = ann.id
    ann.delete()

    events, watermark = events_since(folder, sub_id, watermark)
    assert [type(e) for e in events] == [CreatedEvent, ModifiedEvent, DeletedEvent]
    assert {e.item_id.id for e in events} == {ann_id}
    assert all(e.parent_folder_id.id == folder.id for e in events)
    assert all(e.timestamp is not None for e in events)

    # Nothing new: Exchange answers with a StatusEvent carrying the current watermark.
    (notification,) = list(folder.get_events(sub_id, watermark))
    assert [type(e) for e in notification.events] == [StatusEvent]
    assert notification.more_events is False


def test_pull_subscription_sees_only_its_folder_and_event_types(account, folder):
    elsewhere = Contacts(parent=account.contacts, name=f"else-{uuid.uuid4().hex[:8]}")
    elsewhere.save()
    sub_id, watermark = folder.subscribe_to_pull(event_types=["CreatedEvent"])

    Contact(folder=elsewhere, given_name="Not mine", display_name="Not mine").save()
    mine = Contact(folder=folder, given_name="Mine", display_name="Mine")
    mine.save()
    mine.surname = "Modified"
    mine.save(update_fields=["surname"])

    events, _ = events_since(folder, sub_id, watermark)
    assert [(type(e), e.item_id.id) for e in events] == [(CreatedEvent, mine.id)]


def test_moving_a_contact_out_is_a_moved_event_with_old_and_new_parent(account, folder):
    other = Contacts(parent=account.contacts, name=f"other-{uuid.uuid4().hex[:8]}")
    other.save()
    ann = Contact(folder=folder, given_name="Ann", display_name="Ann")
    ann.save()
    sub_id, watermark = folder.subscribe_to_pull()

    ann.move(to_folder=other)

    (event,) = events_since(folder, sub_id, watermark)[0]
    assert isinstance(event, MovedEvent)
    assert event.parent_folder_id.id == other.id
    assert event.old_parent_folder_id.id == folder.id
    assert event.item_id.id == ann.id


def test_many_changes_come_back_over_several_get_events_calls_with_more_events(folder):
    sub_id, watermark = folder.subscribe_to_pull()
    created = [Contact(folder=folder, given_name=f"C{i}", display_name=f"C{i}") for i in range(60)]
    folder.account.bulk_create(folder=folder, items=created)

    notifications = list(folder.get_events(sub_id, watermark))

    assert len(notifications) >= 2 and notifications[0].more_events is True
    ids = [e.item_id.id for n in notifications for e in n.events if isinstance(e, CreatedEvent)]
    assert len(ids) == 60 and len(set(ids)) == 60


def test_a_pull_subscription_and_its_watermark_survive_a_restart(emulator, account):
    folder = Contacts(parent=account.contacts, name="pull-restart")
    folder.save()
    sub_id, watermark = folder.subscribe_to_pull(timeout=10)

    emulator.restart()
    account = make_account(emulator)
    folder = account.contacts // "pull-restart"
    ann = Contact(folder=folder, given_name="After restart", display_name="After restart")
    ann.save()

    events, _ = events_since(folder, sub_id, watermark)
    assert [(type(e), e.item_id.id) for e in events] == [(CreatedEvent, ann.id)]


def test_unsubscribe_ends_a_pull_subscription(folder):
    sub_id, watermark = folder.subscribe_to_pull()

    assert folder.unsubscribe(sub_id) is True

    with pytest.raises(ErrorSubscriptionNotFound):
        list(folder.get_events(sub_id, watermark))
    with pytest.raises(ErrorSubscriptionNotFound):
        folder.unsubscribe(sub_id)


def test_only_the_account_that_subscribed_may_read_the_events(emulator, folder):
    sub_id, watermark = folder.subscribe_to_pull()
    bob = make_account(emulator, user="bob@example.com")

    with pytest.raises(ErrorSubscriptionAccessDenied):
        list(bob.contacts.get_events(sub_id, watermark))


def test_get_events_rejects_a_forged_watermark_and_a_streaming_subscription(folder):
    sub_id, _ = folder.subscribe_to_pull()
    with pytest.raises(ErrorInvalidWatermark):
        list(folder.get_events(sub_id, "bm90IGEgd2F0ZXJtYXJr"))

    streaming_id = folder.subscribe_to_streaming()
    with pytest.raises(ErrorInvalidPullSubscriptionId):
        list(folder.get_events(streaming_id, "bm90IGEgd2F0ZXJtYXJr"))


def test_a_change_made_while_the_stream_is_open_arrives_at_once(emulator, folder):
    sub_id = folder.subscribe_to_streaming()
    made: dict[str, object] = {}

    def change_from_another_thread() -> None:
        time.sleep(1.0)
        # bob is alice's delegate: another client with its own connection (exchangelib shares
        # one connection per endpoint and credentials, and the stream holds alice's).
        other = make_account(emulator, user="bob@example.com", mailbox="alice@example.com")
        c = Contact(folder=other.contacts // folder.name, given_name="Streamed", display_name="Streamed")
        c.save()
        made["id"], made["at"] = c.id, time.monotonic()

    writer = threading.Thread(target=change_from_another_thread)
    writer.start()
    started = time.monotonic()
    notifications = list(folder.get_streaming_events(sub_id, connection_timeout=1, max_notifications_returned=1))
    received = time.monotonic()
    writer.join()

    (notification,) = notifications
    assert notification.subscription_id == sub_id
    assert [(type(e), e.item_id.id) for e in notification.events] == [(CreatedEvent, made["id"])]
    assert received - made["at"] < 2.0, "the event waited for a poll instead of being pushed"
    assert received - started < 10


def test_streaming_delivers_changes_made_before_connecting_and_unsubscribe_closes_it(folder):
    sub_id = folder.subscribe_to_streaming()
    early = Contact(folder=folder, given_name="Before the stream opened", display_name="Before the stream opened")
    early.save()

    (notification,) = list(folder.get_streaming_events(sub_id, connection_timeout=1,
                                                       max_notifications_returned=1))
    assert [(type(e), e.item_id.id) for e in notification.events] == [(CreatedEvent, early.id)]

    assert folder.unsubscribe(sub_id) is True
    with pytest.raises(ErrorSubscriptionNotFound):
        list(folder.get_streaming_events(sub_id, connection_timeout=1))


@pytest.mark.slow
def test_a_stream_ends_with_connection_status_closed_after_its_connection_timeout(account, folder):
    sub_id = folder.subscribe_to_streaming()
    svc = GetStreamingEvents(account=account)
    started = time.monotonic()

    notifications = list(svc.call(subscription_ids=[sub_id], connection_timeout=1))

    elapsed = time.monotonic() - started
    assert svc.connection_status == "Closed"
    assert notifications == []
    assert 55 <= elapsed <= 90
