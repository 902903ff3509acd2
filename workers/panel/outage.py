"""Riding out a short Redis outage (a restart, a failover) at the steps that follow a paid
provider call: raising there would drop an answer already paid for, and the redelivered member
would pay for it again."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

import redis

T = TypeVar("T")
REDIS_OUTAGE_S = 30.0  # how long a paid answer waits for Redis to come back before it is given up


def through_redis_outage(step: Callable[[], T], hold_s: float = REDIS_OUTAGE_S) -> T:
    """Run `step`, retrying with backoff while Redis is unreachable, for up to `hold_s`.

    through_redis_outage(lambda: store.put_call(panel_id, record))
    """
    end = time.monotonic() + hold_s
    delay = 0.05
    while True:
        try:
            return step()
        except (redis.ConnectionError, redis.TimeoutError):
            if time.monotonic() + delay > end:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 1.0)
