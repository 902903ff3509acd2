"""Batch jobs for both batch APIs: a clock-driven lifecycle and per-line results that come from the
same replay/rule path as live calls. The wire modules (`batch_openai`, `batch_anthropic`) render.

A job's phase is a pure function of time since creation and the model's `batch_delay_s`:
validating for the first 10%, in_progress to 80% (lines complete evenly), finalizing to 100%,
then ended. Cancelling lasts 10% of the delay; lines done before the cancel keep their results.
Results are fixed the first time a job is seen ended, so every later read returns the same lines.
"""

from __future__ import annotations

import hashlib
import random
import secrets
import time
from dataclasses import dataclass, field
from typing import Literal

from sim.answers import Reply
from sim.calls import CallSpec, Simulator

Phase = Literal["validating", "in_progress", "finalizing", "ended", "cancelling", "cancelled"]
LineKind = Literal["succeeded", "errored", "expired", "canceled"]
_VALIDATING, _WORKING = 0.1, 0.8  # fractions of the delay at which each phase ends


@dataclass(frozen=True)
class BatchLine:
    custom_id: str
    wire_model: str
    spec: CallSpec


@dataclass(frozen=True)
class LineResult:
    custom_id: str
    wire_model: str
    kind: LineKind
    reply: Reply | None = None


@dataclass
class BatchJob:
    id: str
    lines: list[BatchLine]
    delay_s: float
    expire: bool
    created_wall: float = field(default_factory=time.time)
    created: float = field(default_factory=time.monotonic)
    cancel_at: float | None = None  # monotonic
    cancel_wall: float | None = None
    validation_errors: list[dict[str, object]] = field(default_factory=list)
    results: list[LineResult] | None = None
    extra: dict[str, object] = field(default_factory=dict)  # the wire module's own fields
    seq: int = 0  # creation order in this process: seeds the job's line-error draws

    def _progress(self, at: float) -> float:
        return 1.0 if self.delay_s <= 0 else min(1.0, max(0.0, (at - self.created) / self.delay_s))

    def phase(self, now: float | None = None) -> Phase:
        now = time.monotonic() if now is None else now
        if self.cancel_at is not None:
            return "cancelled" if now >= self.cancel_at + _VALIDATING * self.delay_s else "cancelling"
        p = self._progress(now)
        return "validating" if p < _VALIDATING else "in_progress" if p < _WORKING else "finalizing" if p < 1.0 else "ended"

    def lines_done(self, now: float | None = None) -> int:
        """Lines finished by `now` (or by the cancel, once one was asked for)."""
        at = time.monotonic() if now is None else now
        if self.cancel_at is not None:
            at = min(at, self.cancel_at)
        work = (self._progress(at) - _VALIDATING) / (_WORKING - _VALIDATING)
        return int(len(self.lines) * min(1.0, max(0.0, work)))

    def phase_wall(self, fraction: float) -> int:
        """Unix time at which the job reached `fraction` of its delay (for the *_at fields)."""
        return int(self.created_wall + fraction * self.delay_s)

    def cancel(self) -> None:
        if self.cancel_at is None:
            self.cancel_at, self.cancel_wall = time.monotonic(), time.time()


class BatchStore:
    """Every batch job and uploaded file of one simulator process; cleared by `/_sim/reset`."""

    def __init__(self, sim: Simulator) -> None:
        self.sim = sim
        self.jobs: dict[str, BatchJob] = {}
        self.files: dict[str, dict[str, object]] = {}
        self.contents: dict[str, bytes] = {}
        sim.reset_hooks.append(self.clear)

    def clear(self) -> None:
        self.jobs.clear()
        self.files.clear()
        self.contents.clear()

    def create(self, prefix: str, lines: list[BatchLine]) -> BatchJob:
        # The first line's model sets the job's timing knobs (OpenAI files hold one model anyway).
        knobs = self.sim.knobs.for_model(lines[0].spec.model) if lines else self.sim.knobs.for_model("*")
        job = BatchJob(f"{prefix}{secrets.token_hex(12)}", lines, knobs.batch_delay_s, knobs.batch_expire, seq=len(self.jobs))
        self.jobs[job.id] = job
        self.sim.stats.batch["batch_creates"] += 1
        return job

    def results(self, job: BatchJob) -> list[LineResult]:
        """Fix the job's line results once it has ended or been cancelled."""
        if job.results is not None:
            return job.results
        done = job.lines_done() if job.cancel_at is not None else len(job.lines)
        # Seeded per job so a given --seed and submission order give the same line errors.
        rng = random.Random(int.from_bytes(hashlib.sha256(f"{self.sim.dice.seed}\x1fbatch\x1f{job.seq}".encode()).digest()[:8], "big"))
        results: list[LineResult] = []
        for i, line in enumerate(job.lines):
            knobs, reply = self.sim.reply(line.spec)
            if i >= done:
                results.append(LineResult(line.custom_id, line.wire_model, "canceled"))
            elif job.expire and i >= len(job.lines) // 2:
                results.append(LineResult(line.custom_id, line.wire_model, "expired"))
            elif rng.random() < knobs.batch_line_error_rate:
                results.append(LineResult(line.custom_id, line.wire_model, "errored"))
            else:
                self.sim.stats.batch_line(line.spec.model, reply.tokens_in, reply.tokens_out)
                results.append(LineResult(line.custom_id, line.wire_model, "succeeded", reply))
        if job.lines and self.sim.knobs.for_model(job.lines[0].spec.model).batch_shuffle:
            rng.shuffle(results)  # clients must match lines by custom_id, never by position
        job.results = results
        return results
