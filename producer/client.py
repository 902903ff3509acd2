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
from typing import Any, cast

import orjson
from celery import Celery
from redis.typing import EncodableT

from producer import answer_cache, job_json, keys
from producer.contract import Job, Result
from producer.errors import ContractError, JobTimeout, UnknownJob
from producer.settings import Settings
from producer.tracing import submit_span
from producer.wire import NAME as CODEC
from producer.wire import text

RUN_TASK = "panel.run"


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

    # --- submit
    def submit(self, job: Job | dict[str, Any] | bytes | str) -> str:
        """Validate, store and enqueue one job; returns its id. A resubmitted idempotency key
        (or job id) returns the first job's id and enqueues nothing."""
        if not isinstance(job, Job):
            job = Job.parse(job)
        self._check_task_class(job)
        job_id = job.id or uuid.uuid4().hex
        if job.idempotency_key:
            key = keys.idempotency(job.tenant, job.idempotency_key)
            # SET NX then GET (SET NX GET needs Redis 7; the embedded default may be 6.2)
            if not self.redis.set(key, job_id, nx=True, ex=self.settings.result_ttl_s):
                first = self.redis.get(key)
                if first is not None:
                    return text(first)
        spec = job.model_copy(update={"id": job_id}).model_dump_json()
        jkey = keys.job(job_id)
        if not self.redis.hsetnx(jkey, "spec", spec):
            return job_id  # same job id resubmitted: the first one stands
        with submit_span(job.task_class, job_id, job.lane, job.mode) as trace_headers:
            submitted_at = time.time()
            fields: dict[EncodableT, EncodableT] = {"status": "queued", "submitted_at": submitted_at,
                                                    "tenant": job.tenant}  # fmt: skip
            # the worker that decides the job (any of them) parents its spans on the submit span
            fields.update(trace_headers)
            self.redis.hset(jkey, mapping=fields)
            self.redis.expire(jkey, self.settings.result_ttl_s)
            # a cached answer is served here; an identical job in flight is waited on (single flight)
            if answer_cache.admit(self.redis, job, job_id, submitted_at, self.settings.result_ttl_s).role in (
                "hit",
                "follower",
            ):
                return job_id
            self._enqueue(job_id, trace_headers)
        return job_id

    def _enqueue(self, job_id: str, trace_headers: dict[str, str] | None = None) -> None:
        self.redis.zadd(keys.JOB_WATCH, {job_id: time.time()})  # the watchdog re-sends a `panel.run` that never starts
        self.celery.send_task(RUN_TASK, args=[job_id], queue="control", task_id=f"run-{job_id}",
                              headers=trace_headers or None)  # fmt: skip

    def _check_task_class(self, job: Job) -> None:
        """Against the classes the workers published; before any worker has, against the policy
        files a worker started here would load (PANEL_POLICIES, else the shipped policies/)."""
        published = {text(k) for k in self.redis.smembers(keys.task_classes())}
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
        end = time.monotonic() + timeout
        while True:
            res = self.result(job_id)
            if res is not None and res.status in ("decided", "failed"):
                return res
            if res is None and (ticket := answer_cache.rescue(self.redis, job_id)) is not None:
                if ticket.role in ("leader", "bypass", "off"):  # its leader vanished: it runs itself
                    self._enqueue(job_id)
                continue
            left = end - time.monotonic()
            if left <= 0:
                raise JobTimeout(f"job {job_id} not done after {timeout}s (status {self.status(job_id)})")
            # Wake on the done signal without consuming it: BLMOVE of the list onto itself rotates it,
            # so other waiters still see it and it keeps the TTL finalise gave it (BLPOP + RPUSH
            # emptied it for an instant and re-created it with no TTL: one key per job kept forever).
            self.redis.blmove(keys.done_channel(job_id), keys.done_channel(job_id), min(1.0, max(left, 0.01)))  # type: ignore[arg-type]  # Redis takes a float timeout

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
