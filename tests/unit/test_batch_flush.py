"""The batch lane's flush against lines queued at the same moment (workers/batch/lane.py), on
fakeredis: a flush that finds a model's pending list empty forgets the model's age, and a line
queued in between must not be left without one (nothing would flush it)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import fakeredis

from producer import keys
from workers.batch import lane


def test_a_line_queued_while_a_flush_finds_its_model_empty_is_still_flushed_later() -> None:
    r = fakeredis.FakeRedis()
    rt: Any = SimpleNamespace(redis=r)
    r.zadd(keys.BATCH_AGES, {"gpt-4o-mini": 1.0})  # the age a flush that took every line left behind
    llen, seen = r.llen, []

    def enqueue_after_the_first_llen(key: str) -> int:  # the member's line lands between LLEN and ZREM
        n = int(llen(key))
        seen.append(n)
        if len(seen) == 1:
            lane._push(rt, "gpt-4o-mini", ["pf-line-1"])
        return n

    r.llen = enqueue_after_the_first_llen  # type: ignore[method-assign]
    assert lane.flush(rt, lane.FlushPolicy(max_age_s=3600)) == [] and seen[0] == 0
    assert r.zscore(keys.BATCH_AGES, "gpt-4o-mini") is not None, "the queued line lost its model's age"
    assert r.lrange(keys.batch_pending("gpt-4o-mini"), 0, -1) == [b"pf-line-1"]


def test_a_model_with_no_line_left_is_forgotten() -> None:
    r = fakeredis.FakeRedis()
    r.zadd(keys.BATCH_AGES, {"gpt-4o-mini": 1.0})
    assert lane.flush(SimpleNamespace(redis=r), lane.FlushPolicy()) == []  # type: ignore[arg-type]
    assert r.zcard(keys.BATCH_AGES) == 0
