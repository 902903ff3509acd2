"""The census a redelivered task reads to tell a lost worker from a live one that gave its
message back (workers/census.py): pure logic on fakeredis, the fleet proof is
tests/reliability/test_poison.py."""

from __future__ import annotations

import threading
import time

import fakeredis
import pytest
import redis

from producer import keys
from workers import census
from workers.census import Census, verdict


@pytest.fixture
def r() -> fakeredis.FakeRedis:
    return fakeredis.FakeRedis()


def test_a_running_task_held_by_a_flushing_process_was_given_back(r: fakeredis.FakeRedis) -> None:
    c = Census()
    c.started("t1")
    c.flush(r, held_ttl_s=60)
    assert r.get(keys.task_holder("t1")) == census.PROCESS.encode()
    got = verdict(r, "t1", confirm_s=0)
    assert got.kind == "given_back" and got.holder == census.PROCESS


def test_a_finished_task_was_given_back_even_if_its_holder_died(r: fakeredis.FakeRedis) -> None:
    c = Census()
    c.started("t1")
    c.finished("t1")
    c.flush(r, held_ttl_s=60)
    r.delete(keys.census(census.PROCESS))  # the holder is gone
    assert verdict(r, "t1", confirm_s=0).kind == "given_back"


def test_a_task_whose_holder_stopped_flushing_was_lost(r: fakeredis.FakeRedis) -> None:
    r.set(keys.task_holder("t1"), "host:1:0")
    r.set(keys.census("host:1:0"), repr(time.time() - 10 * census.STALE_S))
    assert verdict(r, "t1", confirm_s=0) == census.Verdict("host:1:0", "lost")
    assert verdict(r, "never-flushed", confirm_s=0) == census.Verdict(None, "lost")


def test_a_stale_holder_that_flushes_while_we_wait_was_given_back(r: fakeredis.FakeRedis) -> None:
    """Just after a Redis outage every holder is stale; a live one flushes within the wait."""
    r.set(keys.task_holder("t1"), "host:1:0")
    r.set(keys.census("host:1:0"), repr(time.time() - 10 * census.STALE_S))
    threading.Timer(0.3, lambda: r.set(keys.census("host:1:0"), repr(time.time()))).start()
    assert verdict(r, "t1", confirm_s=5).kind == "given_back"


class Down:
    """A Redis whose pipeline fails at execute, as in an outage."""

    def pipeline(self, transaction: bool = True) -> Down:
        return self

    def set(self, *args: object, **kwargs: object) -> None:
        pass

    def execute(self) -> None:
        raise redis.ConnectionError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")


def test_a_failed_flush_keeps_its_ids_for_the_next(r: fakeredis.FakeRedis) -> None:
    c = Census()
    c.started("t1")
    with pytest.raises(redis.ConnectionError):
        c.flush(Down(), held_ttl_s=60)
    assert c.up_for() == 0.0
    assert c.flush(r, held_ttl_s=60) == 1 and r.get(keys.task_holder("t1")) is not None
    assert c.up_for() > 0.0 and c.running_here("t1") is not None
    c.finished("t1")
    assert c.running_here("t1") is None
