"""A job's deadline, set once when the job starts (workers/jobs.py start_job): its own `deadline`,
else its class's `deadline_s` (or the defaults') counted from submission; its escalations and
cascade stages inherit it from the panel before them."""

from __future__ import annotations

import time

from producer.contract import Job
from workers.policy import TaskPolicy


def job_deadline(job: Job, policy: TaskPolicy, default_s: float, submitted_at: float) -> float:
    """When the job must be decided: its own `deadline`, else its class's `deadline_s` (or the
    defaults') counted from its submission. Set once, when the job starts: its escalations and
    cascade stages inherit it from the panel before them, so a job that waited in a queue or
    escalated twice has that much less time left, not a fresh deadline each time."""
    if job.deadline is not None:
        return job.deadline.timestamp()
    return submitted_at + (policy.deadline_s or default_s)


def expired_in_queue(job: Job, policy: TaskPolicy, default_s: float, submitted_at: float) -> str:
    """Why a job whose deadline passed before it started fails without a call."""
    waited = time.time() - submitted_at
    if job.deadline is not None:
        return (f"deadline {job.deadline.isoformat()} passed while the job was queued ({waited:.0f} s after "
                "submission): give the job a later `deadline`, or add workers for its queue")  # fmt: skip
    limit = policy.deadline_s or default_s
    return (f"deadline passed while the job was queued: it waited {waited:.0f} s against its deadline_s of "
            f"{limit:g} s (task class {job.task_class!r}); raise `deadline_s` for the class in tasks.yaml, "
            "or add workers for its queue")  # fmt: skip


def at_start(job: Job, policy: TaskPolicy, default_s: float, submitted: bytes | str | None,
             now: float | None = None) -> tuple[float, str | None]:  # fmt: skip
    """The job's deadline, and why it fails at once when that has passed already (else None).
    `submitted`: the job's `submitted_at` field (absent: now)."""
    now = time.time() if now is None else now
    since = float(submitted) if submitted else now
    deadline = job_deadline(job, policy, default_s, since)
    return deadline, (expired_in_queue(job, policy, default_s, since) if deadline <= now else None)
