"""The batch lane's poll lock (workers/batch/poll_lock.py) on a real Redis: a poll that outlives its
lock must not free the lock the next poller took, or a third poller follows the batch too; a poll
of many lines keeps its lock, and one that lost it anyway stops; a batch counts its group down once
however many pollers come to it."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import orjson
import pytest
import redis

from producer import keys
from tests.waiting import eventually
from workers.batch import backends, lane
from workers.batch.poll_lock import PollLock

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


class FirstFinishedThenHeld:
    """The first status call finds the batch finished with two lines; later ones wait until the
    test lets them answer (a slow provider) and find it still running."""

    def __init__(self) -> None:
        self.calls: list[threading.Event] = []

    async def status(self, batch_id: str) -> Any:
        answer = threading.Event()
        self.calls.append(answer)
        if len(self.calls) == 1:
            return SimpleNamespace(finished=True, raw_status="completed", message=None)
        answer.wait(60)
        return SimpleNamespace(finished=False)

    async def results(self, status: Any) -> list[tuple[str, object]]:
        return [("pf-line-0", object()), ("pf-line-1", object())]


def test_a_poll_that_outlived_its_lock_leaves_the_next_pollers_lock_alone(
    redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first poller stalls between two lines longer than its lock (a stopped process: nothing
    re-arms the lock meanwhile); a second takes the lock and is still asking its slow provider
    when the first wakes. The first stops, and frees neither the lock nor the batch to a third."""
    provider = FirstFinishedThenHeld()
    monkeypatch.setitem(backends._clients, "held", provider)  # type: ignore[arg-type]
    redis_client.hset(keys.BATCH_OPEN, BID, orjson.dumps({"provider": "held", "group": "g1"}))
    stalled = threading.Event()
    landed: list[str] = []

    def land(rt: Any, d: Any, bid: str, cid: str, outcome: object, policy: Any) -> None:
        landed.append(cid)
        stalled.wait(60)

    monkeypatch.setattr(lane, "_land_line", land)
    policy = lane.FlushPolicy(lock_s=1.0)
    lock = keys.batch_poll_lock(BID)
    first = poller(redis_client, policy)
    eventually(lambda: landed == ["pf-line-0"], "the first poller landing its first line")
    eventually(lambda: not redis_client.exists(lock), "the first poller's lock expiring while it stalls")
    second = poller(redis_client, policy)
    eventually(lambda: len(provider.calls) == 2, "a second poller taking the expired lock")
    taken = redis_client.get(lock)
    stalled.set()  # the first poll goes on now, long after its lock
    first.join(30)
    assert not first.is_alive()
    assert landed == ["pf-line-0"], "the first poller landed lines after it lost its lock"
    assert redis_client.get(lock) == taken, "the first poller freed the lock the second one holds"
    assert redis_client.hexists(keys.BATCH_OPEN, BID), "the first poller closed the batch it lost"
    third = poller(redis_client, policy)
    third.join(30)
    assert not third.is_alive() and len(provider.calls) == 2, "a third poller followed the batch alongside the second"
    provider.calls[1].set()
    second.join(30)
    assert not second.is_alive()
    assert not redis_client.exists(lock), "the second poller did not free its own lock"


class FinishedProvider:
    """A batch provider whose batch is done, with a result line for each custom id."""

    def __init__(self, cids: list[str]) -> None:
        self.lines = [(cid, object()) for cid in cids]

    async def status(self, batch_id: str) -> Any:
        return SimpleNamespace(finished=True, raw_status="completed", message=None)

    async def results(self, status: Any) -> list[tuple[str, object]]:
        return self.lines


@pytest.fixture
def slow_landing(monkeypatch: pytest.MonkeyPatch, redis_client: redis.Redis) -> list[tuple[str, bytes | None]]:
    """A finished batch of four lines whose landings take 0.6 s each, recording who held the lock
    at each (the test's own `lane._land_line`; landing itself is specified elsewhere)."""
    monkeypatch.setitem(backends._clients, "done", FinishedProvider([f"pf-line-{i}" for i in range(4)]))  # type: ignore[arg-type]
    redis_client.hset(keys.BATCH_OPEN, BID, orjson.dumps({"provider": "done", "group": "g1"}))
    redis_client.set(keys.batch_group_left("g1"), 1)
    landed: list[tuple[str, bytes | None]] = []

    def land(rt: Any, d: Any, bid: str, cid: str, outcome: object, policy: Any) -> None:
        landed.append((cid, redis_client.get(keys.batch_poll_lock(bid))))
        time.sleep(0.6)

    monkeypatch.setattr(lane, "_land_line", land)
    return landed


def test_a_poll_longer_than_its_lock_keeps_it_to_the_last_line(
    redis_client: redis.Redis, slow_landing: list[tuple[str, bytes | None]]
) -> None:
    rt: Any = SimpleNamespace(redis=redis_client, run=asyncio.run)
    assert lane.poll(rt, None, lane.FlushPolicy(lock_s=1.5)) == 4  # type: ignore[arg-type]  # 2.4 s of landing
    holders = [holder for _, holder in slow_landing]
    assert len(holders) == 4 and holders[0] is not None and set(holders) == {holders[0]}, holders
    assert not redis_client.hexists(keys.BATCH_OPEN, BID) and not redis_client.exists(keys.batch_poll_lock(BID))


def test_a_poll_that_lost_its_lock_stops_and_leaves_the_batch_to_its_holder(
    redis_client: redis.Redis, slow_landing: list[tuple[str, bytes | None]], monkeypatch: pytest.MonkeyPatch
) -> None:
    lock = keys.batch_poll_lock(BID)
    first_landing = lane._land_line

    def land_then_lose_the_lock(*args: Any) -> None:
        first_landing(*args)
        redis_client.set(lock, "another-poller", px=60_000)  # as if ours expired and another took it

    rt: Any = SimpleNamespace(redis=redis_client, run=asyncio.run)
    monkeypatch.setattr(lane, "_land_line", land_then_lose_the_lock)
    lane.poll(rt, None, lane.FlushPolicy(lock_s=1.5))  # type: ignore[arg-type]
    assert [cid for cid, _ in slow_landing] == ["pf-line-0"], "lines landed after the lock was lost"
    assert redis_client.hexists(keys.BATCH_OPEN, BID), "the batch was closed by a poller that lost its lock"
    assert redis_client.get(keys.batch_group_left("g1")) == b"1"
    assert redis_client.get(lock) == b"another-poller"


def test_a_poller_with_a_stale_list_of_open_batches_does_not_close_a_batch_twice(
    redis_client: redis.Redis, held: HeldProvider, monkeypatch: pytest.MonkeyPatch
) -> None:
    """b1 and b2 are one flush's group; b1 is done, b2 still runs (not polled here). A late poller
    read the open batches, then stalled on another batch while an on-time poller closed b1: it must
    not count b1 down again, which would close the group and fail b2's line before b2 answers."""
    monkeypatch.setitem(backends._clients, "done", FinishedProvider(["pf-b1"]))  # type: ignore[arg-type]
    redis_client.hset(keys.BATCH_OPEN, "b1", orjson.dumps({"provider": "done", "group": "g2"}))  # after BID (held)
    redis_client.sadd(keys.batch_group("g2"), "pf-b1", "pf-b2")
    redis_client.set(keys.batch_group_left("g2"), 2)
    landed: list[str] = []
    monkeypatch.setattr(lane, "_land_line", lambda rt, d, bid, cid, outcome, policy: landed.append(cid))
    rt: Any = SimpleNamespace(redis=redis_client, run=asyncio.run)
    late = poller(redis_client, lane.FlushPolicy())
    eventually(lambda: len(held.calls) == 1, "the late poller stalled on the held batch, b1 still in its list")
    assert lane.poll(rt, None, lane.FlushPolicy()) == 1  # type: ignore[arg-type]  # on time: lands b1, closes it
    held.answer_all()
    late.join(30)
    assert not late.is_alive()
    assert landed == ["pf-b1"], "the late poller followed b1 again, or failed b2's line"
    assert redis_client.get(keys.batch_group_left("g2")) == b"1", "b1 counted its group down twice"


def test_two_pollers_landing_one_batch_at_once_count_its_group_down_once(
    redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both got past their open check before either closed b1 (a lock lost mid-poll lets a second
    poller in): b1 still counts its group down once, and b2's line waits for b2."""
    monkeypatch.setitem(backends._clients, "done", FinishedProvider(["pf-b1"]))  # type: ignore[arg-type]
    info: dict[str, object] = {"provider": "done", "group": "g2"}
    redis_client.hset(keys.BATCH_OPEN, "b1", orjson.dumps(info))
    redis_client.sadd(keys.batch_group("g2"), "pf-b1", "pf-b2")
    redis_client.set(keys.batch_group_left("g2"), 2)
    landed: list[str] = []
    monkeypatch.setattr(lane, "_land_line", lambda rt, d, bid, cid, outcome, policy: landed.append(cid))
    rt: Any = SimpleNamespace(redis=redis_client, run=asyncio.run)
    for _ in ("first poller", "second poller"):
        lock = PollLock.take(redis_client, "b1", 60.0)
        assert lock is not None
        lane._poll_one(rt, None, "b1", info, lane.FlushPolicy(), lock)  # type: ignore[arg-type]
        lock.release()
    assert landed == ["pf-b1", "pf-b1"], "each lands b1's line (idempotent: Line.first_landing)"
    assert redis_client.get(keys.batch_group_left("g2")) == b"1", "b1 counted its group down twice"


class SlowResults(FinishedProvider):
    """A finished batch whose results file takes `download_s` to come down (a large batch: the
    batch clients give a download up to 300 s, five times the default 60 s lock), noting who
    holds the poll lock once it is down."""

    def __init__(self, r: redis.Redis, cids: list[str], download_s: float) -> None:
        super().__init__(cids)
        self.r, self.download_s = r, download_s
        self.held_after: list[bytes | None] = []

    async def results(self, status: Any) -> list[tuple[str, object]]:
        await asyncio.sleep(self.download_s)
        self.held_after.append(self.r.get(keys.batch_poll_lock(BID)))
        return self.lines


def test_a_results_download_longer_than_the_lock_keeps_the_lock_and_lands_the_batch(
    redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The poller is alive and working, so it keeps its batch: its lock is re-armed while the
    download runs, and it lands the lines. A poll that found its lock gone after the download
    stopped before the first line, and so did every later one (each downloading the file again):
    the batch was never landed, even with no other poller about."""
    provider = SlowResults(redis_client, ["pf-line-0", "pf-line-1"], download_s=2.5)
    monkeypatch.setitem(backends._clients, "slow", provider)  # type: ignore[arg-type]
    redis_client.hset(keys.BATCH_OPEN, BID, orjson.dumps({"provider": "slow", "group": "g1"}))
    redis_client.set(keys.batch_group_left("g1"), 1)
    landed: list[str] = []
    monkeypatch.setattr(lane, "_land_line", lambda rt, d, bid, cid, outcome, policy: landed.append(cid))
    rt: Any = SimpleNamespace(redis=redis_client, run=asyncio.run)
    policy = lane.FlushPolicy(lock_s=1.0)
    for _ in range(3):  # a poll that stops is followed by the next tick's, as the duty thread does
        if lane.poll(rt, None, policy):  # type: ignore[arg-type]
            break
    assert landed == ["pf-line-0", "pf-line-1"], f"downloads: {len(provider.held_after)}, landed: {landed}"
    assert provider.held_after[0] is not None, "the lock lapsed during the download"
    assert not redis_client.hexists(keys.BATCH_OPEN, BID), "the batch was not closed"
    assert not redis_client.exists(keys.batch_poll_lock(BID))


def test_a_step_that_never_ends_lets_the_lock_lapse_after_its_bound(redis_client: redis.Redis) -> None:
    """`kept` re-arms through a slow step, not through a wedged one: past its bound the lock lapses,
    as a killed poller's does, and another poller may follow the batch."""
    lock = PollLock.take(redis_client, BID, 0.6)
    assert lock is not None
    with lock.kept(up_to_s=1.5):
        eventually(lambda: not redis_client.exists(keys.batch_poll_lock(BID)), "the lock lapsing past the bound")
        assert PollLock.take(redis_client, BID, 0.6) is not None, "another poller could not take the lapsed lock"
