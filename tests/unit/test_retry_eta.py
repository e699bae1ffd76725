"""A scheduled retry's ETA becomes the events' due time (the re-drive waits for it)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from celery.exceptions import Retry

from workers.tasks import retry_eta

NOW = datetime(2026, 12, 2, 9, 0, tzinfo=UTC)


def test_a_countdown_is_counted_from_now():
    assert retry_eta(Retry(when=42.5), NOW) == NOW + timedelta(seconds=42.5)


def test_an_eta_is_taken_as_it_is():
    eta = NOW + timedelta(minutes=3)
    assert retry_eta(Retry(when=eta), NOW) == eta


def test_no_retry_information_means_due_now():
    assert retry_eta(None, NOW) == NOW
    assert retry_eta(Retry(when=None), NOW) == NOW
