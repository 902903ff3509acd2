"""The producer client: submit jobs and read their results, by Celery task *name* only.

    client = PanelClient()                       # PANEL_REDIS_URL or redis://127.0.0.1:6379/0
    job_id = client.submit({"task_class": "extraction", "prompt": "Invoice 42 ..."})
    result = client.wait(job_id, timeout=60)     # Result with its Receipt

Jobs are stored in Redis before the task is sent, and the task carries only the id.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from functools import partial
from typing import Any, cast

import orjson
import redis
from celery import Celery
from kombu.exceptions import KombuError
from redis.typing import EncodableT

from producer import answer_cache, connect, job_json, keys
from producer.contract import RUN_TASK, Job, Result, run_task_id
from producer.errors import ContractError, JobTimeout, UnknownJob
from producer.settings import Settings
from producer.tracing import submit_span
from producer.wire import NAME as CODEC
from producer.wire import text

CLASSES_TTL_S = 5.0  # how long a submit trusts the task classes it read (`_check_task_class`)
IDEMPOTENCY_WAIT_S = 5.0  # how long an idempotency key may name a job not yet stored (`_claim_idempotency`)
# KEYS job hash [, the watchdog's jobs zset]; ARGV spec, TTL s, job id, time, then field, value
# pairs: the job's spec unless its id is taken (a resubmitted job id: the first one stands, its
# status and watch entry untouched), then its fields and TTL, and (given the zset) its watch entry
STORE_JOB = """
if redis.call('HSETNX', KEYS[1], 'spec', ARGV[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV, 5))
redis.call('EXPIRE', KEYS[1], ARGV[2])
if KEYS[2] then redis.call('ZADD', KEYS[2], ARGV[4], ARGV[3]) end
return 1
"""


@dataclass
class LineError:
    line: int
    field: str
    message: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.field}: {self.message}"


@dataclass
class SubmitReport:
    submitted: list[tuple[int, str]] = field(default_factory=list)  # (line, job id)
    errors: list[LineError] = field(default_factory=list)

    @property
    def total(self) -> int:
        return len(self.submitted) + len(self.errors)


def policy_file_classes() -> tuple[set[str], str]:
    """Task classes in tasks.yaml of PANEL_POLICIES or the shipped policies/ (empty if unreadable)."""
    import os
    from pathlib import Path

    import yaml

    folder = Path(os.environ.get("PANEL_POLICIES") or Path(__file__).resolve().parent.parent / "policies")
    path = folder / "tasks.yaml"
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return set(), str(path)
    classes = data.get("task_classes") if isinstance(data, dict) else None
    return (set(classes) if isinstance(classes, dict) else set()), f"{path}; no worker has published its classes yet"


class PanelClient:
    def __init__(self, redis_url: str | None = None, settings: Settings | None = None):
        """`redis_url`: one Redis for broker and state; else the settings' broker and state URLs."""
        self.settings = settings or Settings.from_env()
        if redis_url:
            self.settings = self.settings.model_copy(
                update={"redis_url": redis_url, "broker_url": None, "state_url": None}
            )
        # A producer may share one client across many threads: wait for a free connection, never fail
        self.redis = self.settings.state_client("pf-producer")
        broker_url, broker_options = self.settings.broker_options()
        self.celery = Celery("panel_producer", broker=broker_url, set_as_current=False)
        self.celery.conf.update(
            task_serializer=CODEC, accept_content=[CODEC], broker_transport_options=broker_options, task_publish_retry_policy=self.settings.publish_retry_policy(),
            broker_connection_retry_on_startup=True, task_send_sent_event=True,
        )  # fmt: skip
        self._store_job = self.redis.register_script(STORE_JOB)
        self._classes: set[str] = set()  # the published task classes, read at most every CLASSES_TTL_S
        self._classes_until = 0.0

    # --- submit
    def submit(self, job: Job | dict[str, Any] | bytes | str) -> str:
        """Validate, store and enqueue one job; returns its id. A resubmitted idempotency key
        (or job id) returns the first job's id and enqueues nothing."""
        if not isinstance(job, Job):
            job = Job.parse(job)
        self._check_task_class(job)
        job_id = job.id or uuid.uuid4().hex
        if job.idempotency_key:
            first = self._claim_idempotency(keys.idempotency(job.tenant, job.idempotency_key), job_id)
            if first is not None:
                return first
        spec = job.model_copy(update={"id": job_id}).model_dump_json()
        with submit_span(job.task_class, job_id, job.lane, job.mode) as trace_headers:
            submitted_at = time.time()
            fields: dict[str, EncodableT] = {"status": "queued", "submitted_at": submitted_at, "tenant": job.tenant}
            # the worker that decides the job (any of them) parents its spans on the submit span
            fields.update(trace_headers)
            stored, watched, meta = self._store(job_id, spec, fields, job.task_class)
            if not stored:
                return job_id  # same job id resubmitted: the first one stands
            # a cached answer is served here; an identical job in flight is waited on (single flight)
            if meta is not None and answer_cache.admit_with(
                self.redis, meta, job, job_id, submitted_at, self.settings.result_ttl_s
            ).role in ("hit", "follower"):
                if watched:  # nothing is sent for it: the watchdog must not send its run
                    self.redis.zrem(keys.JOB_WATCH, job_id)
                return job_id
            self._enqueue(job_id, trace_headers, watched=watched)
        return job_id

    def _claim_idempotency(self, key: str, job_id: str) -> str | None:
        """None when (tenant, key) is now this job's; else the id of the job that holds it.

        SET NX then GET (SET NX GET needs Redis 7; the embedded default may be 6.2). The key may
        name a job that is not stored: this very SET, whose reply was lost and which redis-py sent
        again (then the key holds `job_id`: the job is stored below as usual), or a submit that
        stopped between its SET and its store (its caller got an error, never the id). Returning
        such an id would lose the job: a wait on it finds nothing. So an id is returned only once
        its job exists; one still missing IDEMPOTENCY_WAIT_S after this submit first saw it in the
        key (its submitter is gone, not slow) is replaced by this job's, if the key still names it
        (WATCH: one winner; a submit that saw the ghost too then waits on the winner's job)."""
        ttl = self.settings.result_ttl_s
        holder, until = "", 0.0
        while True:
            if self.redis.set(key, job_id, nx=True, ex=ttl):
                return None
            raw = self.redis.get(key)
            if raw is None:  # expired since the SET: try again
                continue
            first = text(raw)
            if first == job_id or self.redis.exists(keys.job(first)):
                return None if first == job_id else first
            if first != holder:  # each holder gets the whole wait: one that just took the key over is storing its job
                holder, until = first, time.monotonic() + IDEMPOTENCY_WAIT_S
            if time.monotonic() < until:
                time.sleep(0.05)
                continue
            with self.redis.pipeline(transaction=True) as pipe:  # a cluster's WATCH needs it said
                try:
                    cast(Any, pipe).watch(key)  # redis-py leaves watch untyped
                    if pipe.get(key) == raw:
                        pipe.multi()
                        pipe.set(key, job_id, ex=ttl)
                        pipe.execute()
                        return None
                except redis.WatchError:  # another submit took it meanwhile: look again
                    pass

    def _store(self, job_id: str, spec: str, fields: dict[str, EncodableT],
               task_class: str) -> tuple[bool, bool, answer_cache.ClassCache | None]:  # fmt: skip
        """Store the job unless its id is taken (its spec first, then its status fields and TTL,
        and its watchdog entry: one script), and read its class's answer-cache settings: one round
        trip on a single Redis (two on a cluster, whose pipeline refuses EVALSHA and whose script
        keeps to one slot: the entry is then written at enqueue). Returns (stored, watched, cache settings)."""
        jkey, ttl = keys.job(job_id), self.settings.result_ttl_s
        args = [spec, ttl, job_id, time.time(), *(x for kv in fields.items() for x in kv)]
        if connect.is_cluster(self.redis):
            stored = self._store_job(keys=[jkey], args=args)
            return bool(stored), False, answer_cache.published(self.redis, task_class)
        pipe = self.redis.pipeline(transaction=False)
        pipe.evalsha(self._store_job.sha, 2, jkey, keys.JOB_WATCH, *args)
        pipe.hget(answer_cache.POLICY_CACHE, task_class)
        stored, raw_meta = pipe.execute(raise_on_error=False)
        if isinstance(stored, redis.exceptions.NoScriptError):  # not run (Redis restarted): load it and run it
            stored = self._store_job(keys=[jkey, keys.JOB_WATCH], args=args)
        for res in (stored, raw_meta):
            if isinstance(res, Exception):
                raise res
        return bool(stored), True, answer_cache.parse_published(task_class, raw_meta)

    def _enqueue(self, job_id: str, trace_headers: dict[str, str] | None = None, watched: bool = False) -> None:
        """Send the job's `panel.run` and its task-sent event (Flower lists the run while it
        is queued) in one pipeline: kombu's publish batch, which Celery's event goes through
        too (it publishes on the task's producer). A batch whose delivery is uncertain (kombu
        does not retry it) is sent again the usual way, with Celery's publish retries: a second
        `run-<job>` only finds the job started. `watched`: its watchdog entry (the watchdog
        re-sends a run that never starts) was written with the job, else it is written here first."""
        if not watched:
            self.redis.zadd(keys.JOB_WATCH, {job_id: time.time()})
        send = partial(self.celery.send_task, RUN_TASK, args=[job_id], queue="control", task_id=run_task_id(job_id),
                       headers=trace_headers or None)  # fmt: skip
        try:
            with self.celery.producer_or_acquire() as producer, producer.batch():
                send(producer=producer)
        except (KombuError, redis.RedisError, OSError):
            send()

    def _check_task_class(self, job: Job) -> None:
        """Against the classes the workers published; before any worker has, against the policy
        files a worker started here would load (PANEL_POLICIES, else the shipped policies/). The
        published set is kept CLASSES_TTL_S: a class not in it is looked up again before it is
        refused (one added since is found); a class removed since is still sent for that long, and
        the worker fails its job saying why (workers/jobs.py `start_job`)."""
        now = time.monotonic()
        if job.task_class in self._classes and now < self._classes_until:
            return
        published = {text(k) for k in self.redis.smembers(keys.task_classes())}
        self._classes, self._classes_until = published, now + CLASSES_TTL_S
        known, where = (published, "published by the workers") if published else policy_file_classes()
        if known and job.task_class not in known:
            names = ", ".join(sorted(known))
            raise ContractError([("task_class", f"unknown task class {job.task_class!r}; known ({where}): {names}")])

    def submit_many(self, lines: Iterable[bytes], progress: Callable[[int, int], None] | None = None) -> SubmitReport:
        """Submit every good line of a JSONL stream; report every bad one. Nothing is dropped:
        each line ends in `submitted` or `errors`."""
        report = SubmitReport()
        for n, line in job_json.jsonl(lines):
            try:
                if isinstance(line, ContractError):
                    raise line
                if not isinstance(line, dict):  # a JSON string line must not be read as JSON again
                    raise ContractError([("(line)", f"expected a JSON object, got {type(line).__name__}")])
                report.submitted.append((n, self.submit(line)))
            except ContractError as e:
                report.errors.append(LineError(n, e.field, str(e).split(": ", 1)[-1]))
            if progress:
                progress(len(report.submitted), len(report.errors))
        return report

    # --- read
    def status(self, job_id: str) -> str:
        st = self.redis.hget(keys.job(job_id), "status")
        if st is None:
            raise UnknownJob(job_id)
        return text(st)

    def result(self, job_id: str) -> Result | None:
        raw = self.redis.hmget(keys.job(job_id), ["status", "result"])
        if raw[0] is None:
            raise UnknownJob(job_id)
        return Result.model_validate_json(raw[1]) if raw[1] else None

    def wait(self, job_id: str, timeout: float = 300.0) -> Result:
        """One round trip per look: the job's result with what a rescue needs, after a wait on its
        done signal (BLMOVE) in the same pipeline once the first look found it running (Redis runs
        a client's commands in order, so the reads see what woke the wait)."""
        end = time.monotonic() + timeout
        block = 0.0
        while True:
            res, follower = self._look(job_id, block)
            if res is not None and res.status in ("decided", "failed"):
                return res
            if res is None and follower and (ticket := answer_cache.rescue(self.redis, job_id)) is not None:
                if ticket.role in ("leader", "bypass", "off"):  # its leader vanished: it runs itself
                    self._enqueue(job_id)
                block = 0.0
                continue
            left = end - time.monotonic()
            if left <= 0:
                raise JobTimeout(f"job {job_id} not done after {timeout}s (status {self.status(job_id)})")
            block = min(1.0, max(left, 0.01))

    def _look(self, job_id: str, block: float) -> tuple[Result | None, bool]:
        """(result, whether the job follows another's answer) after waiting up to `block` s for its
        done signal. The wait does not consume the signal: BLMOVE of the list onto itself rotates
        it, so other waiters still see it and it keeps the TTL finalise gave it (BLPOP + RPUSH
        emptied it for an instant and re-created it with no TTL: one key per job kept forever)."""
        jkey = keys.job(job_id)
        pipe = self.redis.pipeline(transaction=False)
        if block:
            pipe.blmove(keys.done_channel(job_id), keys.done_channel(job_id), block)  # type: ignore[arg-type]  # Redis takes a float timeout
        pipe.hmget(jkey, ["status", "result", "coalesced_with", "acache_key"])
        status, raw, leader, key = pipe.execute()[-1]
        if status is None:
            raise UnknownJob(job_id)
        return (Result.model_validate_json(raw) if raw else None), leader is not None and key is not None

    def wait_many(self, job_ids: list[str], timeout: float = 600.0) -> Iterator[Result]:
        end = time.monotonic() + timeout
        for jid in job_ids:
            yield self.wait(jid, max(0.01, end - time.monotonic()))

    def ledger(self, count: int = 100_000) -> list[dict[str, Any]]:
        """Receipts from the ledger stream, oldest first. At least once per job: a worker that dies
        between a job's ledger entry and its result (another cluster slot) appends it again on the
        re-run, so summaries count a job id once (`producer/ledger_view.py`)."""
        entries: list[tuple[bytes, dict[bytes, bytes]]] = self.redis.xrange(keys.LEDGER_STREAM, count=count)  # type: ignore[assignment]
        return [orjson.loads(fields[b"receipt"]) for _, fields in entries]

    def ledger_entries(self, count: int = 100_000) -> list[tuple[float, dict[str, Any]]]:
        """(appended at, unix seconds from the stream id; receipt), oldest first."""
        entries = cast(list[tuple[bytes, dict[bytes, bytes]]], self.redis.xrange(keys.LEDGER_STREAM, count=count))
        return [(int(eid.split(b"-")[0]) / 1000, orjson.loads(fields[b"receipt"])) for eid, fields in entries]

    def close(self) -> None:
        self.redis.close()
