"""The callback doorbell (the Exchange subscription's thread) rings on a change and after an
error it recovered from, and keeps trying through failures."""

from __future__ import annotations

import threading
import time

import pytest

from producers.doorbells import CallbackDoorbell, CombinedDoorbell, NullDoorbell
from tests.support.pipeline import wait_until


class _Check:
    """Answers from a script, then False (nothing changed) until told otherwise."""

    def __init__(self, *answers) -> None:
        self.answers = list(answers)
        self.calls = 0
        self.drained = threading.Event()
        self._never = threading.Event()

    def __call__(self, timeout_s: float) -> bool:
        self.calls += 1
        if not self.answers:
            self.drained.set()
            self._never.wait(timeout_s)  # idle like a real long wait
            return False
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer


def _run(check: _Check) -> tuple[CallbackDoorbell, bool]:
    bell = CallbackDoorbell(check, name="test", timeout_s=0.05, error_backoff_s=0.01)
    bell.start()
    try:
        assert check.drained.wait(5), "the doorbell stopped calling its check"
        return bell, bell.wait(0)
    finally:
        bell.stop()


def test_a_change_rings():
    _, rung = _run(_Check(False, True))
    assert rung


def test_nothing_changed_does_not_ring():
    _, rung = _run(_Check(False, False))
    assert not rung


def test_the_first_check_that_works_after_errors_rings():
    """A reply lost with the error may have carried the only event of a change."""
    check = _Check(ConnectionError("reset"), TimeoutError("slow"), False)
    _, rung = _run(check)
    assert rung
    assert check.calls >= 3


def test_a_callback_doorbell_is_armed_once_its_check_works_again():
    check = _Check(False, ConnectionError("reset"))
    bell = CallbackDoorbell(check, name="test", timeout_s=0.05, error_backoff_s=0.01)
    assert not bell.armed()                  # not yet subscribed
    bell.start()
    try:
        assert check.drained.wait(5)
        wait_until(bell.armed, 5, interval=0.01, what="the drained check to return")
        assert bell.armed()                  # working again after the error
    finally:
        bell.stop()


def test_stop_wakes_a_check_that_is_waiting_and_returns_at_once():
    """A SIGTERM must not wait out the subscription's long wait (30 s by default: longer than
    `docker stop` waits before SIGKILL): ``stop`` wakes the check through ``wake``."""
    check = _Check()
    bell = CallbackDoorbell(check, name="test", timeout_s=30, wake=check._never.set)
    bell.start()
    assert check.drained.wait(5), "the doorbell never called its check"
    started = time.monotonic()
    bell.stop()
    assert time.monotonic() - started < 2
    assert check.calls == 1                  # stopped: not called again after the wake


def test_the_loop_polls_at_the_fallback_interval_while_a_doorbell_is_not_armed():
    """A 60 s poll only holds behind armed doorbells: one source without (or a lost
    subscription) and the loop looks every few seconds."""
    armed = CallbackDoorbell(lambda t: False, name="ok")
    armed._working.set()
    assert CombinedDoorbell(armed).armed()
    assert not CombinedDoorbell(armed, NullDoorbell()).armed()


@pytest.mark.parametrize("notifications, exchange_bells", [("streaming", 1), ("pull", 1), ("poll", 0)])
def test_notifications_poll_gives_exchange_no_doorbell(tmp_path, notifications, exchange_bells):
    """``[sync] notifications = "poll"``: no subscription is ever asked for; the mailbox has no
    doorbell, so the loop is never armed and polls at its fallback interval."""
    from crmsync.config import load_settings
    from producers.factory import build_loop

    config = tmp_path / "crmsync.toml"
    config.write_text(f'[crm]\nurl = "sqlite:///{tmp_path / "crm.db"}"\n[sync]\nnotifications = "{notifications}"\n'
                      '[[mailbox]]\naddress = "a@example.com"\n')
    class Feed:
        def changes(self, sync_state, max_changes=500):
            return [], "state", False

        def wait_for_change(self, timeout_s: float) -> bool:
            return False

    loop = build_loop(load_settings(config, env={}), changelog=object(), crm=object(), store=object(),
                      feeds={"a@example.com": Feed()}, publisher=object())
    assert isinstance(loop.doorbell, CombinedDoorbell)
    bells = [b for b in loop.doorbell.doorbells if isinstance(b, CallbackDoorbell)]
    assert len(bells) == exchange_bells
    if notifications == "poll":
        assert not loop.doorbell.armed()
