"""The deadline sweep's turns (workers/sweeper.py) on a real redis-server: control workers that
tick together sweep once per interval between them, a sweep that raises does not stop the next,
and only workers that consume `control` sweep."""

from __future__ import annotations

import threading
import time
from itertools import pairwise
from types import SimpleNamespace

import redis

from producer import keys
from tests.waiting import eventually
from workers import sweeper


def test_two_workers_ticking_together_sweep_once_per_interval(redis_client: redis.Redis) -> None:
    redis_client.delete(keys.SWEEP_TURN)
    interval = 0.2
    swept: list[float] = []
    lock = threading.Lock()

    def sweep() -> int:
        with lock:
            swept.append(time.monotonic())
        return 0

    stops = [sweeper.start(redis_client, interval, sweep) for _ in range(2)]
    try:
        eventually(lambda: len(swept) >= 6, "six sweeps")
    finally:
        for s in stops:
            s.set()
    gaps = [b - a for a, b in pairwise(swept)]
    # a turn lasts TURN_SHARE of the interval: two sweeps are never closer than that (timer slack aside)
    assert min(gaps) >= interval * sweeper.TURN_SHARE * 0.9, gaps


def test_a_sweep_that_raises_does_not_stop_the_next(redis_client: redis.Redis) -> None:
    redis_client.delete(keys.SWEEP_TURN)
    calls: list[int] = []

    def sweep() -> int:
        calls.append(1)
        if len(calls) == 1:
            raise ConnectionError("redis went away")
        return 0

    stop = sweeper.start(redis_client, 0.05, sweep)
    try:
        eventually(lambda: len(calls) >= 3, "sweeps after the one that raised")
    finally:
        stop.set()


def test_only_workers_taking_control_sweep() -> None:
    def app(consume_from: dict[str, object] | None) -> SimpleNamespace:
        return SimpleNamespace(amqp=SimpleNamespace(queues=SimpleNamespace(consume_from=consume_from)))

    assert sweeper.consumes_control(app({"control": object()}))
    assert sweeper.consumes_control(app(None)), "no -Q: every queue, control too"
    assert not sweeper.consumes_control(app({"llm.economy": object(), "llm.frontier": object()}))
