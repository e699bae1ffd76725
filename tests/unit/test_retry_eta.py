"""A scheduled retry's ETA becomes the events' due time (the re-drive waits for it)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from celery.exceptions import Retry

from workers.tasks import retry_countdown, retry_eta

NOW = datetime(2026, 12, 2, 9, 0, tzinfo=UTC)


def test_a_countdown_is_counted_from_now():
    assert retry_eta(Retry(when=42.5), NOW) == NOW + timedelta(seconds=42.5)


def test_an_eta_is_taken_as_it_is():
    eta = NOW + timedelta(minutes=3)
    assert retry_eta(Retry(when=eta), NOW) == eta


def test_no_retry_information_means_due_now():
    assert retry_eta(None, NOW) == NOW
    assert retry_eta(Retry(when=None), NOW) == NOW


def test_a_servers_back_off_is_waited_but_never_past_the_longest_countdown():
    """The re-drive age is validated against sync.retry_backoff_max_s: a server asking for an
    hour (EWS BackOffMilliseconds, a Retry-After) must not push a retry past it."""
    assert retry_countdown(asked=3600.0, countdown=5.0, longest=120.0) == 120.0
    assert retry_countdown(asked=30.0, countdown=5.0, longest=120.0) == 30.0     # longer than the back-off
    assert retry_countdown(asked=2.0, countdown=5.0, longest=120.0) == 5.0      # shorter: the back-off
    assert retry_countdown(asked=None, countdown=7.0, longest=120.0) == 7.0
    assert retry_countdown(asked=None, countdown=None, longest=120.0) is None   # Celery's own default
    assert retry_countdown(asked=None, countdown=500.0, longest=120.0) == 120.0
