"""Single flight against a leader that settles in the middle of an admission, on a real
redis-server: the leader's decision lands after each of the admitting job's Redis commands in
turn, so every interleaving of the two is tried, deterministically. Whatever the interleaving,
the input is computed once: the late job is served the leader's answer (from the entry or as
its follower), never made a second leader."""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import partial
from typing import Any

import redis

from producer import answer_cache as pac
from producer import keys
from producer.contract import Job, Receipt, Result
from workers import answer_cache


class Interleaved(redis.Redis):
    """A client that lets another actor act right after its `at`-th command."""

    def __init__(self, url: str, at: int, then: Callable[[], None]) -> None:
        super().__init__(connection_pool=redis.ConnectionPool.from_url(url))
        self.sent, self.at, self.then = 0, at, then

    def execute_command(self, *args: Any, **options: Any) -> Any:
        out = super().execute_command(*args, **options)  # type: ignore[no-untyped-call]
        self.sent += 1
        if self.sent == self.at:
            self.then()
        return out


def store(r: redis.Redis, job_id: str, job: Job) -> None:
    r.hset(keys.job(job_id), mapping={"spec": job.model_copy(update={"id": job_id}).model_dump_json(),
                                      "status": "queued", "submitted_at": time.time()})  # fmt: skip


def leader_decides(r: redis.Redis, decided: Result, settled: list[bool]) -> None:
    promoted: list[str] = []
    answer_cache.settle(r, "L", decided, 3600, 600, send=promoted.append)
    assert promoted == []  # a decided leader hands nothing over
    settled.append(True)


def test_a_leader_settling_during_an_admission_never_makes_a_second_leader(redis_client: redis.Redis) -> None:
    r = redis_client
    url = "redis://{host}:{port}/{db}".format(**r.connection_pool.connection_kwargs)
    job = Job.parse({"task_class": "x", "prompt": "the same question, asked twice"})
    receipt = Receipt(job_id="L", task_class="x", decision="single", total_cost_usd=0.002)
    decided = Result(job_id="L", status="decided", answer="42", receipt=receipt)
    tried = 0
    for at in range(1, 40):
        r.flushdb()
        r.hset(pac.POLICY_CACHE, "x", pac.ClassCache(version="v" * 16, ttl_s=60, lead_ttl_s=60).model_dump_json())
        store(r, "L", job)
        assert pac.admit(r, job, "L", time.time(), 3600).role == "leader"
        store(r, "B", job)
        settled: list[bool] = []
        late = Interleaved(url, at, partial(leader_decides, r, decided, settled))
        ticket = pac.admit(late, job, "B", time.time(), 3600)
        late.close()
        if not settled:  # the admission had fewer commands than `at`: every interleaving is done
            break
        tried += 1
        assert ticket.role in ("hit", "follower"), f"leader settled after command {at}: B became {ticket.role}"
        res = Result.model_validate_json(r.hget(keys.job("B"), "result") or b"")
        assert res.answer == "42" and res.receipt and res.receipt.served_from_cache, at
        assert res.receipt.cached_from_job == "L", at
        assert r.lrange(keys.done_channel("B"), 0, -1) == [b"decided"], at  # decided once
        assert r.get(pac.lead_key(pac.cache_key(job, "v" * 16))) is None, at  # nobody holds the lead
    assert tried >= 2
