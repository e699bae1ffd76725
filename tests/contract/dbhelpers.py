"""Small helpers shared by the database contract tests (not fixtures)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any


def run_sql(connect: Callable[[], Any], *statements: str) -> None:
    """Run plain SQL through a DBAPI connection and commit, as another program would."""
    conn = connect()
    try:
        for sql in statements:
            conn.execute(sql)
        conn.commit()
    finally:
        conn.close()


def race(fns: list[Callable[[], object]]) -> list[object]:
    """Run the callables at once (one thread, so one pooled connection, each); returns each
    one's result or the exception it raised."""
    barrier = threading.Barrier(len(fns))
    out: list[object] = [None] * len(fns)

    def run(i: int) -> None:
        barrier.wait()
        try:
            out[i] = fns[i]()
        except BaseException as exc:  # noqa: BLE001 - returned to the test
            out[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(fns))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out
