"""The batch lane's poll lock (workers/batch/poll_lock.py) on a real Redis: a poll that outlives its
lock must not free the lock the next poller took, or a third poller follows the batch too."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import orjson
import pytest
import redis

from producer import keys
from tests.waiting import eventually
from workers.batch import backends, lane

BID = "batch-held"


class HeldProvider:
    """A batch provider whose status call waits until the test lets it answer: a slow provider."""

    def __init__(self) -> None:
        self.calls: list[threading.Event] = []

    async def status(self, batch_id: str) -> Any:
        answer = threading.Event()
        self.calls.append(answer)
        answer.wait(60)
        return SimpleNamespace(finished=False)  # still running: the poll lands nothing

    def answer_all(self) -> None:
        for answer in self.calls:
            answer.set()


@pytest.fixture
def held(monkeypatch: pytest.MonkeyPatch, redis_client: redis.Redis) -> Iterator[HeldProvider]:
    provider = HeldProvider()
    monkeypatch.setitem(backends._clients, "held", provider)  # type: ignore[arg-type]
    redis_client.hset(keys.BATCH_OPEN, BID, orjson.dumps({"provider": "held", "group": "g1"}))
    yield provider
    provider.answer_all()


def poller(r: redis.Redis, policy: lane.FlushPolicy) -> threading.Thread:
    rt: Any = SimpleNamespace(redis=r, run=asyncio.run)  # the poll's provider calls on a loop of its own
    t = threading.Thread(target=lane.poll, args=(rt, None, policy), daemon=True)
    t.start()
    return t


def test_a_poll_that_outlived_its_lock_leaves_the_next_pollers_lock_alone(
    redis_client: redis.Redis, held: HeldProvider
) -> None:
    policy = lane.FlushPolicy(lock_s=1.0)
    lock = keys.batch_poll_lock(BID)
    first = poller(redis_client, policy)
    eventually(lambda: len(held.calls) == 1, "the first poller asking the provider")
    eventually(lambda: not redis_client.exists(lock), "the first poller's lock expiring while the provider stalls")
    second = poller(redis_client, policy)
    eventually(lambda: len(held.calls) == 2, "a second poller taking the expired lock")
    taken = redis_client.get(lock)
    held.calls[0].set()  # the first poll ends now, long after its lock
    first.join(30)
    assert not first.is_alive()
    assert redis_client.get(lock) == taken, "the first poller freed the lock the second one holds"
    third = poller(redis_client, policy)
    third.join(30)
    assert not third.is_alive() and len(held.calls) == 2, "a third poller followed the batch alongside the second"
    held.calls[1].set()
    second.join(30)
    assert not redis_client.exists(lock), "the second poller did not free its own lock"
