"""Waiting on conditions, not on the clock: a loaded 2-core machine may take ten times longer
than an idle one, so tests poll for what they expect under a generous deadline and fail with
what they last saw. No test asserts `elapsed < x` or sleeps before a "nothing else happened"
check; it waits for the condition that proves the system has settled instead.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

GENEROUS_S = 60.0


def eventually(check: Callable[[], T], what: str, timeout: float = GENEROUS_S, every: float = 0.05) -> T:
    """The first truthy value of `check()`; AssertionError naming `what` (and the last value
    seen) if none comes within `timeout` seconds."""
    end = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > end:
            raise AssertionError(f"not within {timeout:.0f} s: {what} (last seen: {value!r})")
        time.sleep(every)


def settled(read: Callable[[], T], what: str, timeout: float = GENEROUS_S, quiet_polls: int = 3,
            every: float = 0.1) -> T:  # fmt: skip
    """`read()` once it returns the same value `quiet_polls` times in a row: the state a
    "nothing else happened" check compares against, reached by observation rather than a sleep."""
    end = time.monotonic() + timeout
    last, same = read(), 1
    while same < quiet_polls:
        if time.monotonic() > end:
            raise AssertionError(f"not settled within {timeout:.0f} s: {what} (last seen: {last!r})")
        time.sleep(every)
        value = read()
        same = same + 1 if value == last else 1
        last = value
    return last
