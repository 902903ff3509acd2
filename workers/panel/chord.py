"""The quorum chord: dispatch members, run one member, and act on the vote's outcome.

Celery's chord waits for every header task; this one decides as soon as a quorum agrees. Every
follow-up of a decision is guarded by `PanelStore.once`, so a redelivered member (worker crash)
re-attempts exactly the steps that did not happen, and never a second arbiter or finalise.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any, Protocol

from producer import keys
from producer.contract import Job
from workers import metrics
from workers.panel import watchdog
from workers.panel.agreement import Exact, make_rule
from workers.panel.calls import EXPECTED_OUTPUT_TOKENS, CallOutcome, call_model, estimate_tokens
from workers.panel.outage import through_redis_outage
from workers.panel.state import Member, PanelSpec, VoteOutcome
from workers.runtime import Cancelled, Runtime

log = logging.getLogger("panel.chord")


class Dispatcher(Protocol):
    """How the chord sends work; Celery in production (workers/tasks.py), plain calls in tests."""

    def member(self, spec: PanelSpec, member: Member) -> str: ...

    def realtime_member(self, spec: PanelSpec, member: Member) -> str: ...

    def arbiter(self, panel_id: str) -> None: ...

    def conclude(self, panel_id: str) -> None: ...

    def revoke(self, task_ids: list[str]) -> None: ...


def dispatch(rt: Runtime, d: Dispatcher, spec: PanelSpec, members: list[Member]) -> None:
    for m in members:
        rt.store.set_task_id(spec.panel_id, m.member, d.member(spec, m))
    if not spec.batch:
        watchdog.expect(rt.redis, spec.panel_id, [m.member for m in members])


def call_record(spec: PanelSpec, m: Member, rt: Runtime, status: str, **extra: Any) -> dict[str, Any]:
    model = extra.pop("model", m.model)
    mspec = rt.registry.model(model)
    return {"member": m.member, "role": "member", "model": model, "provider": mspec.provider,
            "tier": mspec.tier, "status": status, "batch": spec.batch, **extra}  # fmt: skip


def run_member(rt: Runtime, d: Dispatcher, panel_id: str, member_id: str, batch: bool | None = None) -> str:
    """One member's whole turn. Returns its call status (for logs and tests). `batch` prices the
    call (default: the panel's lane); a batch panel's member made in real time passes False."""
    watchdog.started(rt.redis, panel_id, member_id, 2 * rt.settings.call_timeout_s)
    spec = rt.store.spec(panel_id)
    if spec is None:
        return "gone"
    batch = spec.batch if batch is None else batch
    m = spec.member(member_id)
    prior = rt.store.call(panel_id, member_id)
    if prior and prior["status"] in ("answered", "failed", "late"):
        # Redelivered after the call was paid for (worker lost after the answer): re-use it.
        fault_point(rt, "after_answer", panel_id, member_id)
        cast_vote(rt, d, spec, prior)
        return "reused"
    if rt.store.decided(panel_id):
        rt.store.put_call(panel_id, member_id, call_record(spec, m, rt, "cancelled", batch=batch), only_if_absent=True)
        return "cancelled"
    from workers.jobs import load_job, spend_of

    job = load_job(rt, spec.job_id)
    fault_point(rt, "before_call", panel_id, member_id)
    started = time.time()
    try:
        res = call_model(rt, panel_id, m.model, job.chat(), spec.deadline, json_mode=json_mode(spec, job),
                         spend=spend_of(rt, job, batch), member=member_id,
                         in_panel=frozenset(x.model for x in spec.members if x.member != member_id))  # fmt: skip
    except Cancelled as c:
        # In flight: the provider may bill the prompt, so charge the input tokens (conservative).
        tokens_in = estimate_tokens(job.chat()) - EXPECTED_OUTPUT_TOKENS if c.sent else 0
        rt.store.put_call(panel_id, member_id, call_record(spec, m, rt, "cancelled", tokens_in=tokens_in, batch=batch,
                          cost_usd=rt.registry.cost(m.model, tokens_in, 0, batch),
                          latency_ms=(time.time() - started) * 1000), only_if_absent=True)  # fmt: skip
        if rt.redis.hexists(keys.job(spec.job_id), "finalised"):
            d.conclude(panel_id)  # the charge landed after the receipt: re-render result and ledger
        return "cancelled"
    return land(rt, d, spec, m, job, res, elapsed_ms=(time.time() - started) * 1000, batch=batch)


def abandon_member(rt: Runtime, d: Dispatcher, panel_id: str, member_id: str, reason: str) -> None:
    """A member task that was dead-lettered: count it as a failed call (or its recorded answer),
    so the panel goes on with the members it has instead of waiting for the deadline."""
    spec = rt.store.spec(panel_id)
    if spec is None:
        return
    m = spec.member(member_id)
    rt.store.put_call(panel_id, member_id, call_record(spec, m, rt, "failed", error=reason), only_if_absent=True)
    cast_vote(rt, d, spec, rt.store.call(panel_id, member_id) or {"member": member_id, "status": "failed"})


def json_mode(spec: PanelSpec, job: Job) -> bool:
    return job.response_schema is not None or spec.agreement.get("rule") == "json"


def land(rt: Runtime, d: Dispatcher, spec: PanelSpec, m: Member, job: Job, res: CallOutcome, elapsed_ms: float,
         batch: bool | None = None) -> str:  # fmt: skip
    """Record a member's call (answered or failed), then vote. Shared by the real-time and batch
    lanes. The record is written before the vote, so a redelivery re-uses a paid answer.
    `batch` prices the call (default: the panel's lane); a batch panel's line finished in real
    time near its deadline passes False and pays, and says, the real-time price."""
    panel_id = spec.panel_id
    batch = spec.batch if batch is None else batch
    if res.completion is None:
        rec = call_record(spec, m, rt, "failed", model=res.model, error=res.error, batch=batch,
                          failed_over_from=res.failed_over_from, latency_ms=elapsed_ms)  # fmt: skip
        key = None
    else:
        c = res.completion
        existing = [e for e in through_redis_outage(lambda: rt.store.votes(panel_id)).values() if e]  # a paid answer
        key = make_rule(spec.agreement_spec(), job.response_schema).key(c.text, existing)
        if key is None:  # the rule found nothing to extract: identical raw answers still agree
            raw = Exact().key(c.text, existing)
            key = f"raw:{raw}" if raw else None
        rec = call_record(spec, m, rt, "answered", model=res.model, failed_over_from=res.failed_over_from,
                          tokens_in=c.tokens_in, tokens_out=c.tokens_out, latency_ms=c.latency_ms, batch=batch,
                          cost_usd=rt.registry.cost(res.model, c.tokens_in, c.tokens_out, batch),
                          realtime_cost_usd=rt.registry.cost(res.model, c.tokens_in, c.tokens_out) if batch else None,
                          answer_key=key, text=c.text)  # fmt: skip
    through_redis_outage(lambda: rt.store.put_call(panel_id, m.member, rec))
    observe_call(rec)
    fault_point(rt, "after_answer", panel_id, m.member)
    return cast_vote(rt, d, spec, rec)


def cast_vote(rt: Runtime, d: Dispatcher, spec: PanelSpec, rec: dict[str, Any]) -> str:
    """Vote a recorded call (fresh, or re-used by a redelivered task) and act on the outcome.
    The first vote of a call that arrives after the decision marks it `late`."""
    outcome = rt.store.vote(spec.panel_id, rec["member"], rec.get("answer_key"), stage_step(spec))
    if outcome.status == "decided" and not outcome.duplicate and rec["status"] == "answered":
        rec["status"] = "late"  # paid for, but the panel was decided without it
        rt.store.put_call(spec.panel_id, rec["member"], rec)
        d.conclude(spec.panel_id)  # re-renders the receipt with the late call's cost
    follow_up(rt, d, spec, outcome)
    return str(rec["status"])


def observe_call(rec: dict[str, Any]) -> None:
    metrics.CALLS.labels(rec["model"], rec["provider"], rec["status"], rec.get("role", "member")).inc()
    metrics.TOKENS.labels(rec["model"], "in").inc(rec.get("tokens_in", 0))
    metrics.TOKENS.labels(rec["model"], "out").inc(rec.get("tokens_out", 0))
    metrics.COST.labels(rec["model"], str(bool(rec.get("batch")))).inc(rec.get("cost_usd", 0.0))


def follow_up(rt: Runtime, d: Dispatcher, spec: PanelSpec, outcome: VoteOutcome) -> None:
    """Act on a vote. Safe to repeat: each action happens once per panel."""
    pid = spec.panel_id
    status = outcome.outcome if outcome.status == "decided" else outcome.status
    if status in ("quorum", "sweep", "arbiter", "failed"):
        # The caller's answer first, then the stragglers: the revoke broadcast is a round trip
        # through the broker that the decision need not wait for (a straggler that starts in the
        # meantime sees `decided` and makes no call; one in flight is cancelled by conclude's publish).
        if outcome.status != "decided" or outcome.duplicate:
            d.conclude(pid)
        if status == "quorum" and rt.store.once(pid, "cancel"):
            cancel_stragglers(rt, d, spec)
    elif status == "exhausted":
        if rt.store.once(pid, "arbiter"):
            answers = {v for v in rt.store.votes(pid).values() if v}
            if len(answers) <= 1 or len(spec.members) == 1:
                # nothing to arbitrate: one answer (others failed) or none at all
                rt.store.decide(pid, "quorum" if answers else "failed", "", replace_exhausted=True)
                d.conclude(pid)
            else:
                d.arbiter(pid)
    elif status == "next" and rt.store.once(pid, f"stage:{outcome.send_to}"):
        dispatch(rt, d, spec, spec.members[outcome.send_from : outcome.send_to])


def cancel_stragglers(rt: Runtime, d: Dispatcher, spec: PanelSpec) -> None:
    """Decided: stop in-flight calls (pub/sub) and revoke queued members (best effort; a member
    that still starts checks `decided` first and makes no provider call)."""
    rt.publish_decided(spec.panel_id)
    done = set(rt.store.calls(spec.panel_id))
    pending = [tid for member, tid in rt.store.task_ids(spec.panel_id).items() if member not in done]
    if pending:
        d.revoke(pending)


def stage_step(spec: PanelSpec) -> int:
    """How many more members a vote may send: one at a time when staged, else all at once."""
    return 1 if spec.dispatch == "staged" else len(spec.members)


# --- Test-only fault points. Inert unless the worker runs with PANEL_TEST_HOOKS=1, which only the
# reliability suite sets: it arms `pf:test:park:{point}:{panel}:{member}`, the first member task to
# reach that point parks there (once: a redelivered task passes; with `every` set, every copy
# parks), and the test kill -9s its worker at exactly that step, or lets it go on with a `release`
# field (a member late to its own vote).
TEST_HOOKS = os.environ.get("PANEL_TEST_HOOKS") == "1"
PARK_LIMIT_S = 600.0


def fault_point(rt: Runtime, point: str, panel_id: str, member_id: str) -> None:
    if not TEST_HOOKS:
        return
    key = f"pf:test:park:{point}:{panel_id}:{member_id}"
    if not rt.redis.exists(key):
        return
    if not rt.redis.hsetnx(key, "parked_by", os.getpid()) and not rt.redis.hexists(key, "every"):
        return
    log.warning("test hook: member %s of %s parked at %s", member_id, panel_id, point)
    end = time.monotonic() + PARK_LIMIT_S
    while not rt.redis.hexists(key, "release") and time.monotonic() < end:
        time.sleep(0.05)
