"""Redis key names: the storage contract shared by producers and workers.

The producer owns it, since producers read jobs and results without importing workers.
Every key carries the `pf:` prefix so one Redis can host other tenants' data.
"""

PREFIX = "pf:"


def job(job_id: str) -> str:
    """Hash: spec (JSON of the Job), status, submitted_at, result (JSON), error."""
    return f"{PREFIX}job:{job_id}"


def idempotency(tenant: str, key: str) -> str:
    """String: the job id first given to (tenant, idempotency key)."""
    return f"{PREFIX}idem:{tenant}:{key}"


def done_channel(job_id: str) -> str:
    """List pushed once when a job reaches decided/failed, so `wait` can block on it."""
    return f"{PREFIX}done:{job_id}"


def panel(panel_id: str) -> str:
    """Hash: the panel's spec and state (`decided`, `outcome`, member count, quorum, ...)."""
    return f"{PREFIX}panel:{panel_id}"


def votes(panel_id: str) -> str:
    """Hash: member id -> normalised answer key (one vote per member)."""
    return f"{PREFIX}panel:{panel_id}:votes"


def tally(panel_id: str) -> str:
    """Hash: normalised answer key -> count of votes."""
    return f"{PREFIX}panel:{panel_id}:tally"


def calls(panel_id: str) -> str:
    """Hash: member id -> JSON CallRecord + completion, written before the vote (no double pay)."""
    return f"{PREFIX}panel:{panel_id}:calls"


def task_classes() -> str:
    """Set: the task classes of the policy table the workers loaded (producers validate against it)."""
    return f"{PREFIX}policy:task_classes"


LEDGER_STREAM = f"{PREFIX}ledger"
PANEL_DEADLINES = f"{PREFIX}panel:deadlines"  # zset: panel id -> deadline (unix s)
JOB_WATCH = f"{PREFIX}watchdog:jobs"  # zset: job id -> submitted (unix s), until its `panel.run` starts
DECIDED_CHANNEL = f"{PREFIX}panel:decided"  # pub/sub: panel id, for in-flight cancellation
