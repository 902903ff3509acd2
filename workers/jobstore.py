"""The stored job as the panel path reads it: the job's spec (parsed once per process), whose
budget its calls draw on, its panels in order, and the two ways a job ends without a decision
(failed, dead-lettered). Below `workers/panel/` and `workers/jobs.py`, so both can use it.

    jobs = JobStore(redis, policies, result_ttl_s=86400)
    job = jobs.load(job_id)                     # cached: a job's spec never changes once stored
    spend = jobs.spend(job, batch=False)
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from datetime import datetime
from typing import Any

import orjson
import redis

from producer import keys
from producer.contract import Job, Result
from workers import answer_cache
from workers.budget import Spend
from workers.policy import PolicyTable

log = logging.getLogger("panel.jobs")
DEAD_LETTER = keys.DEAD_LETTER  # list, newest first: what operators inspect and replay
DEAD_LETTER_MAXLEN = 10_000
JOB_CACHE = 4096  # parsed job specs kept per process: a panel's members and its conclusion re-read them


class JobStore:
    """Reads and ends jobs. `load` is cached per process: a stored job's spec is immutable."""

    def __init__(self, r: redis.Redis, policies: PolicyTable, result_ttl_s: int) -> None:
        self.r = r
        self.policies = policies
        self.result_ttl_s = result_ttl_s
        self._jobs: OrderedDict[str, Job] = OrderedDict()

    def has(self, job_id: str) -> bool:
        """This process has the job (a read of its spec can be skipped)."""
        return job_id in self._jobs

    def load(self, job_id: str, raw: bytes | str | None = None) -> Job:
        """The stored job; `raw`: its spec, read by the caller in a round trip it made anyway.
        Its deadline was checked at submit; re-checking it here ("deadline is in the past")
        would make every step after the deadline (the sweep's decision, a late member) raise,
        so it is set back after validation instead."""
        job = self._jobs.get(job_id)
        if job is not None:
            self._jobs.move_to_end(job_id)
            return job
        if raw is None:
            raw = self.r.hget(keys.job(job_id), "spec")
        if raw is None:
            raise KeyError(f"job {job_id} not found")
        data = orjson.loads(raw)
        deadline = data.pop("deadline", None)
        job = Job.model_validate(data)
        if deadline is not None:
            job = job.model_copy(update={"deadline": datetime.fromisoformat(deadline)})
        self._jobs[job_id] = job
        if len(self._jobs) > JOB_CACHE:
            self._jobs.popitem(last=False)
        return job

    def spend(self, job: Job, batch: bool) -> Spend:
        """The budget a job's calls draw on: the job's cap, else its task class's."""
        cap = job.budget_usd if job.budget_usd is not None else self.policies.get(job.task_class).budget_usd
        return Spend(job_id=str(job.id), tenant=job.tenant, cap_usd=cap, batch=batch)

    def panels(self, job_id: str) -> list[dict[str, Any]]:
        return [orjson.loads(x) for x in self.r.lrange(keys.job_panels(job_id), 0, -1)]

    def fail(self, job_id: str, reason: str, send: Callable[[str], None]) -> None:
        """Fail the job with `reason`; `send` sends a job's panel.run (an answer-cache follower
        that takes over a failed leader's lead)."""
        result = Result(job_id=job_id, status="failed", error=reason)
        jkey = keys.job(job_id)
        pipe = self.r.pipeline(transaction=True)  # the job's slot
        pipe.hset(jkey, mapping={"status": "failed", "result": result.model_dump_json(), "error": reason})
        pipe.rpush(keys.done_channel(job_id), "failed")
        pipe.expire(keys.done_channel(job_id), self.result_ttl_s)
        pipe.execute()
        # a failed answer-cache leader hands the lead to a job waiting on it
        answer_cache.settle(self.r, job_id, result, self.result_ttl_s, answer_cache.lead_ttl(self.policies), send)
        log.info("job %s failed: %s", job_id, reason)

    def dead_letter(self, job_id: str, task: str, task_id: str, reason: str, attempts: int,
                    send: Callable[[str], None]) -> bool:  # fmt: skip
        """Park a task that failed `attempts` times (raised, or lost its worker each time) and fail
        its job with the reason, so it stops taking workers and its caller stops waiting. True if
        this call failed the job (a job already decided or dead-lettered is left as it is)."""
        entry = {"job_id": job_id, "task": task, "task_id": task_id, "reason": reason, "attempts": attempts,
                 "at": time.time()}  # fmt: skip
        pipe = self.r.pipeline(transaction=True)  # one key
        pipe.lpush(DEAD_LETTER, orjson.dumps(entry))
        pipe.ltrim(DEAD_LETTER, 0, DEAD_LETTER_MAXLEN - 1)
        pipe.execute()
        jkey = keys.job(job_id)
        if self.r.hget(jkey, "status") in (b"decided", b"failed") or not self.r.hsetnx(
            jkey, "dead_letter", orjson.dumps(entry)
        ):
            return False
        self.fail(job_id, f"dead-letter: {task} gave up after {attempts} attempts: {reason}", send)
        panels = [p["panel_id"] for p in self.panels(job_id)]
        if panels:  # nothing is left for the deadline sweep to decide
            self.r.zrem(keys.PANEL_DEADLINES, *panels)
        log.warning("job %s dead-lettered: %s after %d attempts: %s", job_id, task, attempts, reason)
        return True
