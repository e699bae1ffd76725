"""Crash points for the reliability tests: a worker or producer process exits hard at a named step.

Armed only when the composition root calls ``arm`` (from CRMSYNC_CRASH_AT and
CRMSYNC_CRASH_ONCE_FILE); otherwise ``crash_point`` is a no-op. The once-file makes the crash
happen a single time, so the restarted worker can finish the job.
"""

from __future__ import annotations

import os
from pathlib import Path

CRASH_POINTS = frozenset({"after_exchange_write", "after_crm_write", "before_link_commit", "after_publish",
                          "during_initial_sync"})

_armed: tuple[str, Path | None] | None = None


def arm(point: str | None, once_file: str | None = None) -> None:
    """Arm (or with ``None`` disarm) one crash point."""
    global _armed
    if not point:
        _armed = None
        return
    if point not in CRASH_POINTS:
        raise ValueError(f"unknown crash point {point!r}; one of {sorted(CRASH_POINTS)}")
    _armed = (point, Path(once_file) if once_file else None)


def arm_from_env(environ: dict[str, str] | None = None) -> None:
    env = os.environ if environ is None else environ
    arm(env.get("CRMSYNC_CRASH_AT"), env.get("CRMSYNC_CRASH_ONCE_FILE"))


def crash_point(name: str) -> None:
    if _armed is None or _armed[0] != name:
        return
    once = _armed[1]
    if once is not None:
        if once.exists():
            return
        once.write_text(name)
    os._exit(137)
