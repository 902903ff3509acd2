"""Redis key names: the storage contract shared by producers and workers, in one place.

The producer owns it, since producers read jobs and results without importing workers. Every key
carries the `pf:` prefix so one Redis can host other tenants' data, and a `{hash tag}` saying which
Redis Cluster slot it lives in. Keys one Lua script or one MULTI touches share a tag, so the scripts
run unchanged on Redis Cluster (docs/cluster.md; tests/cluster/test_slots.py fails otherwise):

    {j:<job id>}      a job: its hash, done list, panel list, AND its panels' hashes (vote.lua,
                      decide.lua and finalise touch one slot); a panel id is `<job id>.<n>`
    {l:<provider>}    one provider's limits: rate limits of the account and its models (reserve.lua
                      takes from both at once) and breakers (breaker.lua)
    {t:<tenant>}      one tenant: idempotency keys, and budget counters per job and per day
                      (budget.lua charges a job's and its tenant's counters in one slot)
    {batch}           the batch lane's bookkeeping (claim.lua, reclaim.lua, close.lua; a few ops per flush)

Keys no script or MULTI shares (ledger stream, deadlines zset, dead letters, snapshots) are single
keys under their own tag; commands on them never name another key.
"""

from __future__ import annotations

PREFIX = "pf:"


# --- tags ------------------------------------------------------------------------------------------
def job_tag(job_id: str) -> str:
    return f"{PREFIX}{{j:{job_id}}}"


def job_of_panel(panel_id: str) -> str:
    """A panel id is `<job id>.<n>` (workers/jobs.py): its keys live in its job's slot."""
    job_id, dot, n = panel_id.rpartition(".")
    return job_id if dot and n.isdigit() else panel_id


def provider_tag(limit_key: str) -> str:
    """Limit keys are `provider` or `provider:model`: one provider's limits share a slot, so one
    reserve.lua can take from the provider account's limit and the model's limit at once."""
    return f"{PREFIX}{{l:{limit_key.split(':', 1)[0]}}}"


def tenant_tag(tenant: str) -> str:
    return f"{PREFIX}{{t:{tenant}}}"


BATCH_TAG = f"{PREFIX}{{batch}}"


# --- jobs ------------------------------------------------------------------------------------------
def job(job_id: str) -> str:
    """Hash: spec (JSON of the Job), status, submitted_at, result (JSON), error."""
    return f"{job_tag(job_id)}:job"


def done_channel(job_id: str) -> str:
    """List pushed once when a job reaches decided/failed, so `wait` can block on it."""
    return f"{job_tag(job_id)}:done"


def job_panels(job_id: str) -> str:
    """List: JSON {panel_id, reason} per panel the job ran, in order."""
    return f"{job_tag(job_id)}:panels"


def idempotency(tenant: str, key: str) -> str:
    """String: the job id first given to (tenant, idempotency key)."""
    return f"{tenant_tag(tenant)}:idem:{key}"


def attempts(task_id: str) -> str:
    """Hash: n, last_worker, reason: one Celery task id's attempts (workers/tasks.py)."""
    return f"{PREFIX}{{a:{task_id}}}:attempts"


def task_holder(task_id: str) -> str:
    """String: the worker process that last ran this Celery task id, `<process> done` once it
    finished (workers/census.py)."""
    return f"{PREFIX}{{a:{task_id}}}:holder"


def census(process: str) -> str:
    """String: when worker process `process` last wrote its census (workers/census.py)."""
    return f"{PREFIX}{{c:{process}}}:census"


# --- panels (in their job's slot) ------------------------------------------------------------------
def panel(panel_id: str) -> str:
    """Hash: the panel's spec and state (`decided`, `outcome`, member count, quorum, ...)."""
    return f"{job_tag(job_of_panel(panel_id))}:panel:{panel_id}"


def concluding(panel_id: str) -> str:
    """String with a TTL: the panel's conclusion lease (take_lease.lua, release_lease.lua)."""
    return f"{panel(panel_id)}:concluding"


def votes(panel_id: str) -> str:
    """Hash: member id -> normalised answer key (one vote per member)."""
    return f"{panel(panel_id)}:votes"


def tally(panel_id: str) -> str:
    """Hash: normalised answer key -> count of votes."""
    return f"{panel(panel_id)}:tally"


def calls(panel_id: str) -> str:
    """Hash: member id -> JSON CallRecord + completion, written before the vote (no double pay)."""
    return f"{panel(panel_id)}:calls"


def member_lease(panel_id: str, member: str) -> str:
    """String: the token of the one copy of a member calling its model now (workers/panel/lease.py)."""
    return f"{panel(panel_id)}:lease:{member}"


# --- provider limits (one slot per provider) -------------------------------------------------
def rate_limit(limit_key: str) -> str:
    """Hash: GCRA state of one provider:model (workers/limits/reserve.lua)."""
    return f"{provider_tag(limit_key)}:rl:{limit_key}"


def breaker(limit_key: str) -> str:
    """Hash: breaker window and state of one provider:model (workers/limits/breaker.lua)."""
    return f"{provider_tag(limit_key)}:cb:{limit_key}"


def breaker_probes(limit_key: str) -> str:
    """Zset: the breaker's half-open probe leases."""
    return f"{provider_tag(limit_key)}:cb:{limit_key}:probes"


# --- budgets (one slot per tenant) -----------------------------------------------------------------
def budget_job(tenant: str, job_id: str) -> str:
    """String: nano-USD a job spent; in its tenant's slot so one script charges both."""
    return f"{tenant_tag(tenant)}:budget:job:{job_id}"


def budget_tenant_day(tenant: str, day: str) -> str:
    """String: nano-USD a tenant spent on `day` (YYYYMMDD, UTC)."""
    return f"{tenant_tag(tenant)}:budget:day:{day}"


# --- batch lane (one slot: its scripts move ids between the pending lists and the claims) ----------
def batch_pending(model: str) -> str:
    """List per model: custom ids waiting for a batch."""
    return f"{BATCH_TAG}:pending:{model}"


BATCH_AGES = f"{BATCH_TAG}:ages"  # zset: model -> when its oldest pending line arrived
BATCH_OPEN = f"{BATCH_TAG}:open"  # hash: batch id -> JSON {model, provider, created_at, n, group}
BATCH_CLAIMS = f"{BATCH_TAG}:claims"  # hash: claim id -> JSON {model, at, cids}: lines being uploaded


def batch_group(group: str) -> str:
    """Set per flush: its custom ids not yet landed; `batch_group_left` counts its open batches."""
    return f"{BATCH_TAG}:group:{group}"


def batch_group_left(group: str) -> str:
    return f"{batch_group(group)}:left"


def batch_poll_lock(batch_id: str) -> str:
    return f"{BATCH_TAG}:poll:{batch_id}"


# Strings with a TTL: a control worker's turn to flush, to poll (workers/duties.py). `turn:` first:
# `poll:<id>` is a batch's lock, and a provider's batch id is not ours to choose.
BATCH_FLUSH_TURN = f"{BATCH_TAG}:turn:flush"
BATCH_POLL_TURN = f"{BATCH_TAG}:turn:poll"


def batch_line(cid: str) -> str:
    """Hash per line: panel, member, attempts (batches it was sent in); single-key ops only."""
    return f"{PREFIX}{{bl:{cid}}}:line"


# --- answer cache (one slot per cache key: its entry, single-flight lead and followers) ------------
def cache_entry(key: str) -> str:
    """String: the decided answer (CacheEntry JSON), expiring after the class's ttl_s."""
    return f"{PREFIX}{{c:{key}}}:entry"


def cache_lead(key: str) -> str:
    """String: the job id of the job computing this key (single flight)."""
    return f"{PREFIX}{{c:{key}}}:lead"


def cache_followers(key: str, leader: str) -> str:
    """List: the job ids waiting on `leader`'s decision (the leader id last: Lua appends it)."""
    return f"{PREFIX}{{c:{key}}}:f:{leader}"


POLICY_CACHE = f"{PREFIX}{{policy}}:cache"  # hash: task class -> ClassCache JSON (workers publish)
LABELS = f"{PREFIX}{{labels}}"  # hash: job id -> {"label": ..., "at": unix s}


# --- gateway ----------------------------------------------------------------------------------------
def gw_key_record(sha: str) -> str:
    """Hash: an API key's tenant, id, revoked_at (by sha256 of the key)."""
    return f"{PREFIX}{{k:{sha}}}:gw:key"


GW_KEY_INDEX = f"{PREFIX}{{gw}}:keys"  # hash: key id -> "tenant sha"
GW_CALLBACKS_DUE = f"{PREFIX}{{gw}}:callbacks:due"  # zset of callbacks to deliver


def tenant_tag_open() -> str:
    """`tenant_tag_open() .. tenant .. '}:'` starts a tenant's keys: on one Redis, admission.lua
    names the tenant's keys from the tenant it reads (on a cluster the gateway passes them)."""
    return f"{PREFIX}{{t:"


def gw_tenant(tenant: str) -> str:
    """Hash: rate_per_s, rate_burst, budget_usd (per UTC day), callback_secret, created_at."""
    return f"{tenant_tag(tenant)}:gw:tenant"


def gw_rate(tenant: str) -> str:
    """Hash: the tenant's request token bucket (tokens, at)."""
    return f"{tenant_tag(tenant)}:gw:rate"


def gw_callback(job_id: str) -> str:
    return f"{job_tag(job_id)}:gw:callback"


def gw_file(file_id: str) -> str:
    return f"{PREFIX}{{f:{file_id}}}:gw:file"


def gw_files(tenant: str) -> str:
    return f"{tenant_tag(tenant)}:gw:files"


def gw_batch(batch_id: str) -> str:
    return f"{PREFIX}{{b:{batch_id}}}:gw:batch"


def gw_batches(tenant: str) -> str:
    return f"{tenant_tag(tenant)}:gw:batches"


# --- fleet-wide singletons (single-key commands only) ----------------------------------------------
def task_classes() -> str:
    """Set: the task classes of the policy table the workers loaded (producers validate against it)."""
    return f"{PREFIX}{{policy}}:task_classes"


LEDGER_STREAM = f"{PREFIX}{{ledger}}"  # stream: one receipt per finalised job
PANEL_DEADLINES = f"{PREFIX}{{deadlines}}"  # zset: panel id -> deadline (unix s)
JOB_WATCH = f"{PREFIX}{{watchdog}}:jobs"  # zset: job id -> submitted (unix s), until its `panel.run` starts
WATCH_MEMBERS = f"{PREFIX}{{watchdog}}:members"  # zset: "panel_id|member" -> time sent (unix s)
WATCH_RESENDS = f"{PREFIX}{{watchdog}}:resends"  # hash: "panel_id|member" -> times re-sent
WATCH_SCAN_LOCK = f"{PREFIX}{{watchdog}}:scan"
DEAD_LETTER = f"{PREFIX}{{deadletter}}"  # list, newest first: what operators inspect and replay
SWEEP_FAILURES = f"{PREFIX}{{sweep}}:failures"  # hash: panel id -> ticks it made the sweep raise
SWEEP_TURN = f"{PREFIX}{{sweep}}:turn"  # string with a TTL: a control worker's turn to sweep (workers/duties.py)
PROVIDERS_SNAPSHOT = f"{PREFIX}{{providers}}"  # string: JSON breaker + headroom per provider:model
PROVIDERS_SNAPSHOT_GUARD = f"{PREFIX}{{providers}}:guard"
# Pub/sub: panel id, for in-flight cancellation. Classic PUBLISH reaches every node of a cluster.
DECIDED_CHANNEL = f"{PREFIX}panel:decided"


# --- test hooks (PANEL_TEST_HOOKS=1 only) ----------------------------------------------------------
def test_park(point: str, panel_id: str, member_id: str) -> str:
    return f"{PREFIX}{{test}}:park:{point}:{panel_id}:{member_id}"


def test_poison(job_id: str) -> str:
    return f"{PREFIX}{{test}}:poison:{job_id}"


def test_poison_hits(job_id: str) -> str:
    return f"{PREFIX}{{test}}:poison_hits:{job_id}"
