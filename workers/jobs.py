"""A job's path through lanes: plan, start its first panel, conclude each decided panel
(output triggers may retry or escalate to a panel), and finalise the result and receipt.

A `single` lane is a panel of one member with a quorum of one, so every lane shares the chord.
"""

from __future__ import annotations

import logging
import re
import time
from importlib.resources import files
from typing import Any

import orjson
import redis

from producer import connect, keys
from producer.contract import Job, Receipt, Result
from workers import answer_cache, cascade, cascade_lane, ledger, metrics, tracing
from workers.concluding import LeaseRelease, job_view, read_concluding, take_and_read
from workers.deadline import at_start
from workers.errors import failure_reason
from workers.jobstore import DEAD_LETTER
from workers.ledger import render_receipt
from workers.panel import attempts, watchdog
from workers.panel.act import dispatch
from workers.panel.admission import asks_for
from workers.panel.agreement import parse_json_object
from workers.panel.jobview import JobView
from workers.panel.ports import Dispatcher
from workers.panel.route import route
from workers.panel.run import Member, PanelRun, PanelSnapshot, Read, Stage, final_text
from workers.policy import TaskPolicy
from workers.runtime import Runtime

__all__ = ["DEAD_LETTER", "conclude_panel", "failure_reason", "finalise_job", "start_job"]
log = logging.getLogger("panel.jobs")
_CITATION = re.compile(r"(?im)\[\d+\]|https?://|^\s*sources?\s*:")


def start_job(rt: Runtime, d: Dispatcher, job_id: str) -> str:
    """`panel.run`: plan the job and send its first panel. Safe to repeat: a run cut short (Redis
    went away, the worker died) is finished by the next delivery, which sends what the first
    panel still lacks, or plans again if no panel was made."""
    jkey = keys.job(job_id)
    pipe = rt.redis.pipeline(transaction=False)  # one key: the started mark, and the spec it plans from
    pipe.hsetnx(jkey, "started", time.time())
    pipe.hget(jkey, "spec")
    pipe.hget(jkey, "submitted_at")
    fresh, raw, submitted = pipe.execute()
    if not fresh:
        panels = rt.jobs.panels(job_id)
        if panels or rt.redis.hget(jkey, "status") in (b"decided", b"failed"):
            if len(panels) == 1:
                send_unsent_members(rt, d, panels[0]["panel_id"])
            return "already started"
    try:
        job = rt.jobs.load(job_id, raw)
        policy = rt.policies.get(job.task_class)
        plan = rt.policies.plan(job)
    except redis.RedisError:
        raise  # not the job's fault: the task is retried
    except Exception as e:  # unknown task class etc.: fail the job with the reason, lose nothing
        rt.jobs.fail(job_id, str(e), d.run)
        return "failed"
    deadline, late = at_start(job, policy, rt.policies.file.defaults.deadline_s, submitted)
    if late:  # no call can answer in time (seen under overload): fail it, saying why
        rt.jobs.fail(job_id, late, d.run)
        return "failed"
    plan_json = orjson.dumps(plan.__dict__)
    # a fresh run (its started mark was set just now) is the job's first: no panel was numbered yet
    if plan.lane == "cascade":
        open_stage(rt, d, job_id, job, policy, 1, plan.triggers, plan.reason, deadline, plan=plan_json, first=bool(fresh))
    else:
        new_panel(rt, d, job_id, job, policy, plan.lane, attempt=1, triggers=plan.triggers, reason=plan.reason,
                  deadline=deadline, plan=plan_json, first=bool(fresh))  # fmt: skip
    return plan.lane


def send_unsent_members(rt: Runtime, d: Dispatcher, panel_id: str) -> None:
    """The first stage's members that a cut-short run did not send (no task id recorded)."""
    spec = rt.store.spec(panel_id)
    if spec is None or rt.store.decided(panel_id):
        return
    sent = rt.store.task_ids(panel_id)
    missing = [m for m in spec.members[: spec.first_stage_size] if m.member not in sent]
    if missing:
        log.warning("job %s: sending %d member(s) a cut-short run did not send", spec.job_id, len(missing))
        dispatch(rt.store, d, spec, missing)


def new_panel(rt: Runtime, d: Dispatcher, job_id: str, job: Job, policy: TaskPolicy, stage: Stage,
              attempt: int, triggers: list[str], reason: str, deadline: float,
              plan: bytes | None = None, first: bool = False) -> PanelRun:  # fmt: skip
    """Plan and send a panel of the job; stored with the job's record of it (and, for its first
    panel, the job's `plan` and running status) in one transaction. `first`: the job has no
    panel yet (a fresh run): it is number 1, counted in that transaction, not a round trip before."""
    n = 1 if first else int(rt.redis.hincrby(keys.job(job_id), "panels_n", 1))
    models = [policy.single.model] if stage == "single" else policy.panel.members
    members = [Member(f"m{i}", mdl, rt.registry.model(mdl).tier) for i, mdl in enumerate(models)]
    batch = job.mode == "batch" or policy.mode == "batch"
    spec = PanelRun(
        panel_id=f"{job_id}.{n}", job_id=job_id, stage=stage, attempt=attempt, members=members,
        quorum=1 if stage == "single" else policy.panel.quorum,
        dispatch="staged" if batch and stage == "panel" else ("parallel" if stage == "single" else policy.panel.dispatch),
        agreement=policy.panel.agreement.model_dump(), arbiter=policy.panel.arbiter,
        rubric=policy.rubric, deadline=deadline, batch=batch, triggers=triggers,
    )  # fmt: skip
    return open_panel(rt, d, spec, reason, plan, first=first, job=job)


def open_panel(rt: Runtime, d: Dispatcher, spec: PanelRun, reason: str, plan: bytes | None = None,
               first: bool = False, job: Job | None = None, **entry: Any) -> PanelRun:  # fmt: skip
    """Store a new panel with the job's record of it (`entry`, e.g. its cascade stage; a first panel's `plan`
    and running status) in one transaction; send its first members (given the `job`, with their admission's
    asks). `first`: the panel was numbered 1 without counting it (`new_panel`): counted here."""
    # one MULTI on a single Redis; on a cluster the deadlines zset is another slot (producer/keys.py)
    pipe = rt.redis.pipeline(transaction=not connect.is_cluster(rt.redis))
    if first:
        pipe.hincrby(keys.job(spec.job_id), "panels_n", 1)
    rt.store.create(spec, rt.settings.result_ttl_s, pipe=pipe)
    if plan is not None:
        pipe.hset(keys.job(spec.job_id), mapping={"status": "running", "plan": plan})
    pipe.rpush(keys.job_panels(spec.job_id), orjson.dumps({"panel_id": spec.panel_id, "reason": reason, **entry}))
    pipe.expire(keys.job_panels(spec.job_id), rt.settings.result_ttl_s)
    sending = spec.members[: spec.first_stage_size]
    expect = route(spec) != "batch"  # the watchdog's entries with the panel, before the members are sent
    if expect:
        watchdog.expect(pipe, spec.panel_id, [m.member for m in sending])
    pipe.execute()
    dispatch(rt.store, d, spec, sending, expected=expect, asks=asks_for(rt.chord, spec, sending, job) if job else None)
    return spec


def open_stage(rt: Runtime, d: Dispatcher, job_id: str, job: Job, policy: TaskPolicy, n: int,
               triggers: list[str], reason: str, deadline: float, plan: bytes | None = None,
               first: bool = False) -> PanelRun:  # fmt: skip
    """Open stage `n` of the job's cascade (workers/cascade_lane.py builds its run). `first`: as
    `new_panel`'s."""
    assert policy.cascade is not None
    spec = cascade_lane.stage_run(rt, job_id, job, policy, n, triggers, deadline, first=first)
    return open_panel(rt, d, spec, reason, plan, first=first, cascade={"stage": n, "of": len(policy.cascade.stages)})


def output_triggers(job: Job, policy: TaskPolicy, text: str | None, invalid_so_far: int) -> tuple[list[str], bool]:
    """(triggers hit, schema_invalid) for the single lane's answer."""
    out = policy.triggers.output
    if text is None:
        return ["output:call_failed"], False
    hits: list[str] = []
    invalid = job.response_schema is not None and not cascade.schema_valid(text, job.response_schema)
    if invalid and invalid_so_far + 1 >= (out.schema_invalid or 2):
        hits.append(f"output:schema_invalid_x{invalid_so_far + 1}")
    conf = cascade.self_reported(text) if out.low_confidence is not None else None
    if out.low_confidence is not None and conf is not None and conf < out.low_confidence:
        hits.append(f"output:low_confidence<{out.low_confidence}")
    if out.missing_citations and not _CITATION.search(text):
        hits.append("output:missing_citations")
    return hits, invalid


def conclude_panel(rt: Runtime, d: Dispatcher, panel_id: str, cancel: bool = False, lease: str = "",
                   read: Read | None = None) -> list[str] | None:  # fmt: skip
    """A panel is decided: escalate, retry, or finalise the job. One caller at a time acts (a
    lease), and the panel is marked concluded only after the action, so a conclusion that raised
    or lost its worker is taken up again by a retry or the sweep. A caller that finds the lease
    taken (a late member) leaves a re-render request that the holder serves before it lets go.
    The release goes in the finalise MULTI when there is one (`LeaseRelease`).

    With `cancel` (a quorum), the panel's cancel is taken with the lease's reads: returns the task
    ids to revoke ([]: none, or cancelled by another caller first); None: not cancelled here.
    `lease` "taken" or "concluded": the caller took the lease already (a cut-off member, with its
    record: `PanelStore.put_cut_off`), on a panel not concluded or concluded before, and `read`
    is what it read after taking it (None: read here)."""
    spec = rt.store.spec(panel_id)
    if spec is None:  # gone: nothing to conclude (a lease the caller took goes with it)
        if lease:
            rt.redis.delete(keys.concluding(panel_id))
        return None
    pkey = keys.panel(panel_id)
    take, release = _lease_scripts(rt)
    if lease in ("taken", "concluded"):
        (taken, concluded), pending = (True, lease == "concluded"), None
    else:
        (taken, concluded), read, pending = take_and_read(rt, spec, take, cancel=cancel)
    if not taken:
        return pending
    rel = LeaseRelease(release, panel_id, concluded=True)
    try:
        if not concluded:
            act_on_decision(rt, d, spec, read, release=rel)
            again = rel.again if rel.again is not None else release(keys=[keys.concluding(panel_id), pkey], args=[time.time()])
            if not again:
                return pending
        fresh = read if concluded else None  # concluded before: what the lease's MULTI read is current
        while True:  # concluded before, or a late member asked meanwhile: re-render its call
            view, snap = fresh or read_concluding(rt, panel_id, spec.job_id, prior=True)
            fresh = None
            rel = LeaseRelease(release, panel_id, concluded=False)
            if view.status == "decided":
                finalise_job(rt, d, spec.job_id, rerender=True, view=view, snaps={panel_id: snap}, release=rel)
            again = rel.again if rel.again is not None else release(keys=[keys.concluding(panel_id), pkey], args=[""])
            if not again:
                return pending
    except BaseException:  # raised mid-conclusion: free the lease for the retry or the sweep (unless
        if rel.again is not False:  # the finalise MULTI let it go: another caller may hold it now)
            rt.redis.delete(keys.concluding(panel_id))
        raise


_LEASES: dict[int, tuple[Any, Any]] = {}


def _lease_scripts(rt: Runtime) -> tuple[Any, Any]:
    """take_lease.lua and release_lease.lua, registered once per Redis client."""
    got = _LEASES.get(id(rt.redis))
    if got is None:
        here = files("workers")
        got = _LEASES[id(rt.redis)] = (rt.redis.register_script(here.joinpath("take_lease.lua").read_text()),
                                       rt.redis.register_script(here.joinpath("release_lease.lua").read_text()))  # fmt: skip
    return got


def act_on_decision(rt: Runtime, d: Dispatcher, spec: PanelRun, read: tuple[JobView, PanelSnapshot] | None = None,
                    release: LeaseRelease | None = None) -> None:  # fmt: skip
    """Escalate, retry or finalise; safe to repeat after a crash (a panel already followed by
    another is not escalated again, a finalised job is only re-rendered). `read`: the job's view
    and the panel's snapshot, read with the lease (`take_and_read`), else read here. `release`:
    sent with the finalise MULTI when the action is to finalise (else left to the caller)."""
    panel_id = spec.panel_id
    view, snap = read if read is not None else read_concluding(rt, panel_id, spec.job_id, publish=True)
    newest = view.panels[-1]
    if newest["panel_id"] != panel_id:
        return  # this panel's escalation or retry was sent before a crash
    job = rt.jobs.load(spec.job_id)
    policy = rt.policies.get(job.task_class)
    text = final_text(snap)
    if "cascade" in newest:  # a cascade stage: its acceptance check concludes or escalates
        n = int(newest["cascade"]["stage"])
        verdict = cascade_lane.judge_stage(rt, spec, job, policy, n, text, snap)
        if cascade.goes_on(verdict):
            open_stage(rt, d, spec.job_id, job, policy, n + 1, [*spec.triggers, verdict.reason()], verdict.reason(),
                       spec.deadline)
        else:
            finalise_job(rt, d, spec.job_id)  # read afresh: the receipt shows the acceptance just written
        return
    if spec.stage == "single":
        hits, invalid = output_triggers(job, policy, text, view.schema_invalid)
        if invalid:
            rt.redis.hincrby(keys.job(spec.job_id), "schema_invalid", 1)
        if hits:
            new_panel(rt, d, spec.job_id, job, policy, "panel", 1, hits, f"output trigger {hits[0]}", spec.deadline)
            return
        if invalid:  # below the escalation count: one more try on the default lane
            new_panel(rt, d, spec.job_id, job, policy, "single", spec.attempt + 1, [], "schema invalid: retry",
                      spec.deadline)
            return
    finalise_job(rt, d, spec.job_id, view=view, snaps={panel_id: snap}, release=release)


def panel_members(rt: Runtime, snaps: dict[str, PanelSnapshot]) -> dict[str, list[str]]:
    """Every member of each panel (its spec: cached in this process, which just concluded it),
    those still running too: a decided panel's member is never re-sent (workers/panel/watchdog.py)."""
    out: dict[str, list[str]] = {}
    for pid, snap in snaps.items():
        spec = rt.store.spec(pid)
        out[pid] = [m.member for m in spec.members] if spec is not None else list(snap.calls)
    return out


NO_ANSWER = "no member answered before the deadline or all calls failed"


def failure_summary(receipt: Receipt, limit: int = 3) -> str:
    """Why a job failed, in one line: the generic reason plus each failed model's last error, so
    a caller sees "gpt-4o: HTTP 401 ..." without digging through the receipt's calls."""
    causes: dict[str, str] = {}
    for c in receipt.calls:
        if c.status == "failed" and c.error and c.model not in causes:
            causes[c.model] = c.error.splitlines()[0][:160]
    if not causes:
        return NO_ANSWER
    shown = "; ".join(f"{m}: {e}" for m, e in list(causes.items())[:limit])
    more = f"; and {len(causes) - limit} more" if len(causes) > limit else ""
    return f"{NO_ANSWER} ({shown}{more})"


def finalise_job(rt: Runtime, d: Dispatcher, job_id: str, rerender: bool = False, view: JobView | None = None,
                 snaps: dict[str, PanelSnapshot] | None = None, release: LeaseRelease | None = None) -> Result:  # fmt: skip
    """Write the result and receipt. The first call (not `rerender`) also signals done and appends
    to the ledger, in one MULTI with the result, so a crash never leaves one without the other;
    a repeat after a crash finds `finalised` and only re-renders. `view` and `snaps` are what the
    caller has just read (panels it lacks are read here, one round trip each). `release`: the
    conclusion lease's release, at the end of the MULTI on a single Redis (its `again` says)."""
    jkey = keys.job(job_id)
    view = view or job_view(rt, job_id)
    rerender = rerender or view.finalised
    job = rt.jobs.load(job_id)
    panels = view.panels
    snaps = dict(snaps or {})
    for p in panels:
        if p["panel_id"] not in snaps:
            snaps[p["panel_id"]] = rt.store.snapshot(p["panel_id"])
    kept = cascade_lane.kept_stage(panels, snaps)
    text = final_text(snaps[kept["panel_id"] if kept else panels[-1]["panel_id"]])
    receipt = render_receipt(rt, job_id, job, panels, snaps, view.submitted_at, kept=kept).model_copy(update={"final_answer": text})
    prior: bytes | str | None
    ledger_id: bytes | str | None
    if not rerender:
        prior, ledger_id = None, None
    elif view.has_prior:
        prior, ledger_id = view.prior, view.ledger_id
    else:
        prior, ledger_id = rt.redis.hmget(jkey, ["result", "ledger_id"])
    if prior and (first := ledger.prior_latency_ms(prior)) is not None:
        receipt = receipt.model_copy(update={"latency_ms": first})  # decided then, not now
    decided = receipt.decision != "failed" and text is not None
    parsed = parse_json_object(text) if (text and job.response_schema) else None
    result = Result(job_id=job_id, status="decided" if decided else "failed", answer=text, parsed=parsed,
                    disagreement=receipt.disagreement, receipt=receipt,
                    error=None if decided else failure_summary(receipt))  # fmt: skip
    written = result.model_dump_json()  # serialised once: compared with the prior, and stored
    unchanged = prior is not None and ledger.text_of(prior) == written  # a re-render writes nothing then
    # One MULTI on a single Redis. On a cluster it keeps to the job's slot (its panels share it):
    # the ledger entry goes first (a crash before the MULTI appends it again on the re-run: at
    # least once, summaries count a job once; `wait` still implies it is there), the deadlines after.
    cluster = connect.is_cluster(rt.redis)
    pipe = rt.redis.pipeline(transaction=True)
    pipe.hset(jkey, mapping={"status": result.status, "result": written})
    if not rerender:
        pipe.hset(jkey, "finalised", time.time())
        pipe.rpush(keys.done_channel(job_id), result.status)
        if not cluster:
            pipe.zrem(keys.PANEL_DEADLINES, *[p["panel_id"] for p in panels])
        for p in panels:  # created after their panel, so without a TTL until now (attempts: 7 days)
            for k in (keys.votes(p["panel_id"]), keys.tally(p["panel_id"]), keys.calls(p["panel_id"]),
                      attempts.key(p["panel_id"])):  # fmt: skip
                pipe.expire(k, rt.settings.result_ttl_s)
        if not cluster:  # the job's budget counter (8 days, budget.TTL_S) lives as long as the job
            pipe.expire(keys.budget_job(job.tenant, job_id), rt.settings.result_ttl_s)
            watchdog.queue_forget_members(pipe, panel_members(rt, snaps))
    if (not rerender or ledger_id) and not cluster:  # a re-render replaces the ledger entry: one per job
        ledger.queue_entry_with_id(pipe, receipt, jkey, replaces=ledger_id)  # and its id in the job hash
    elif (not rerender or ledger_id) and not unchanged:  # a cluster: the ledger is another slot
        lp = rt.redis.pipeline(transaction=False)
        at = ledger.queue_entry(lp, receipt, replaces=ledger_id)
        pipe.hset(jkey, "ledger_id", lp.execute()[at])
    for k in (jkey, keys.done_channel(job_id)):
        pipe.expire(k, rt.settings.result_ttl_s)
    if not unchanged:
        freed = release.queue(pipe) if release is not None and not cluster else None
        got = pipe.execute(raise_on_error=freed is None)
        if release is not None and freed is not None:
            for res in got[:freed]:
                if isinstance(res, Exception):
                    raise res
            release.ran(got[freed])
    if cluster and not rerender:
        rt.redis.zrem(keys.PANEL_DEADLINES, *[p["panel_id"] for p in panels])
        rt.redis.expire(keys.budget_job(job.tenant, job_id), rt.settings.result_ttl_s)  # the tenant's slot
        wpipe = rt.redis.pipeline(transaction=False)  # the watchdog's slot
        watchdog.queue_forget_members(wpipe, panel_members(rt, snaps))
        wpipe.execute()
    if not rerender:
        metrics.DECISIONS.labels(job.task_class, receipt.decision).inc()
        metrics.CALLS_SAVED.labels(job.task_class).inc(receipt.calls_saved)
        if receipt.early_exit:
            metrics.EARLY_EXITS.labels(job.task_class).inc()
        if any(c.role == "arbiter" for c in receipt.calls):
            metrics.ARBITER.labels(job.task_class).inc()
        metrics.announce_decision(receipt)
        tracing.job_decided(rt, job_id, receipt, panels)
    if rt.policies.get(job.task_class).cache is not None:  # idempotent, so a re-render after a crash finishes it
        answer_cache.settle(rt.redis, job_id, result, rt.settings.result_ttl_s, answer_cache.lead_ttl(rt.policies),
                            d.run, store=kept is None)  # fmt: skip
    log.log(logging.DEBUG if rerender else logging.INFO, "job %s %s via %s (%s calls, $%.6f)", job_id, result.status,
            receipt.decision, len(receipt.calls), receipt.total_cost_usd)  # a re-render (a straggler's charge): DEBUG
    return result
