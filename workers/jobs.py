"""A job's path through lanes: plan, start its first panel, conclude each decided panel
(output triggers may retry or escalate to a panel), and finalise the result and receipt.

A `single` lane is a panel of one member with a quorum of one, so every lane shares the chord.
"""

from __future__ import annotations

import logging
import os
import re
import time
from datetime import datetime
from typing import Any

import jsonschema
import orjson
import pydantic
import redis

from producer import keys
from producer.contract import Job, Receipt, Result
from workers import ledger, metrics
from workers.ledger import render_receipt
from workers.panel.agreement import parse_json_object
from workers.panel.calls import Spend
from workers.panel.chord import Dispatcher, dispatch
from workers.panel.state import Member, PanelSpec, Stage
from workers.policy import TaskPolicy
from workers.runtime import Runtime

log = logging.getLogger("panel.jobs")
CONCLUDE_LEASE_S = 30  # a conclusion whose worker died is taken up again after this
_CONFIDENCE = re.compile(r"(?i)confidence\s*[:=]\s*(\d+(?:\.\d+)?)\s*(%?)")
_CITATION = re.compile(r"(?im)\[\d+\]|https?://|^\s*sources?\s*:")


def load_job(rt: Runtime, job_id: str) -> Job:
    """The stored job. Its deadline was checked at submit; re-checking it here ("deadline is in
    the past") would make every step after the deadline (the sweep's decision, a late member)
    raise, so it is set back after validation instead."""
    raw = rt.redis.hget(keys.job(job_id), "spec")
    if raw is None:
        raise KeyError(f"job {job_id} not found")
    data = orjson.loads(raw)
    deadline = data.pop("deadline", None)
    job = Job.model_validate(data)
    return job if deadline is None else job.model_copy(update={"deadline": datetime.fromisoformat(deadline)})


def spend_of(rt: Runtime, job: Job, batch: bool) -> Spend:
    """The budget a job's calls draw on: the job's cap, else its task class's."""
    cap = job.budget_usd if job.budget_usd is not None else rt.policies.get(job.task_class).budget_usd
    return Spend(job_id=str(job.id), tenant=job.tenant, cap_usd=cap, batch=batch)


def _deadline(rt: Runtime, job: Job, policy: TaskPolicy) -> float:
    if job.deadline is not None:
        return job.deadline.timestamp()
    return time.time() + (policy.deadline_s or rt.policies.file.defaults.deadline_s)


def start_job(rt: Runtime, d: Dispatcher, job_id: str) -> str:
    """`panel.run`: plan the job and send its first panel. Safe to repeat: a run cut short (Redis
    went away, the worker died) is finished by the next delivery, which sends what the first
    panel still lacks, or plans again if no panel was made."""
    jkey = keys.job(job_id)
    if not rt.redis.hsetnx(jkey, "started", time.time()):
        panels = panels_of(rt, job_id)
        if panels or rt.redis.hget(jkey, "status") in (b"decided", b"failed"):
            if len(panels) == 1:
                send_unsent_members(rt, d, panels[0]["panel_id"])
            return "already started"
    try:
        job = load_job(rt, job_id)
        policy = rt.policies.get(job.task_class)
        plan = rt.policies.plan(job)
    except redis.RedisError:
        raise  # not the job's fault: the task is retried
    except Exception as e:  # unknown task class etc.: fail the job with the reason, lose nothing
        fail_job(rt, job_id, str(e))
        return "failed"
    rt.redis.hset(jkey, mapping={"status": "running", "plan": orjson.dumps(plan.__dict__)})
    new_panel(rt, d, job_id, job, policy, plan.lane, attempt=1, triggers=plan.triggers, reason=plan.reason)
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
        dispatch(rt, d, spec, missing)


def new_panel(rt: Runtime, d: Dispatcher, job_id: str, job: Job, policy: TaskPolicy, stage: Stage,
              attempt: int, triggers: list[str], reason: str) -> PanelSpec:  # fmt: skip
    n = int(rt.redis.hincrby(keys.job(job_id), "panels_n", 1))
    models = [policy.single.model] if stage == "single" else policy.panel.members
    members = [Member(f"m{i}", mdl, rt.registry.model(mdl).tier) for i, mdl in enumerate(models)]
    batch = job.mode == "batch" or policy.mode == "batch"
    spec = PanelSpec(
        panel_id=f"{job_id}.{n}", job_id=job_id, stage=stage, attempt=attempt, members=members,
        quorum=1 if stage == "single" else policy.panel.quorum,
        dispatch="staged" if batch and stage == "panel" else ("parallel" if stage == "single" else policy.panel.dispatch),
        agreement=policy.panel.agreement.model_dump(), arbiter=policy.panel.arbiter,
        rubric=policy.rubric, deadline=_deadline(rt, job, policy), batch=batch, triggers=triggers,
    )  # fmt: skip
    rt.store.create(spec, rt.settings.result_ttl_s)
    rt.redis.rpush(keys.job(job_id) + ":panels", orjson.dumps({"panel_id": spec.panel_id, "reason": reason}))
    rt.redis.expire(keys.job(job_id) + ":panels", rt.settings.result_ttl_s)
    dispatch(rt, d, spec, members[: spec.first_stage_size])
    return spec


def panels_of(rt: Runtime, job_id: str) -> list[dict[str, Any]]:
    return [orjson.loads(x) for x in rt.redis.lrange(keys.job(job_id) + ":panels", 0, -1)]


def final_text(rt: Runtime, panel_id: str) -> str | None:
    """The decided answer as text: the arbiter's, else the first answering member with the key."""
    st = rt.store.state(panel_id)
    if st.get("verdict"):
        return str(orjson.loads(st["verdict"])["final_answer"])
    key = st.get("answer")
    answered = [c for c in rt.store.calls(panel_id).values() if c["status"] in ("answered", "late")]
    for c in sorted(answered, key=lambda c: c["member"]):
        if key and c.get("answer_key") == key:
            return str(c["text"])
    return None


def output_triggers(job: Job, policy: TaskPolicy, text: str | None, invalid_so_far: int) -> tuple[list[str], bool]:
    """(triggers hit, schema_invalid) for the single lane's answer."""
    out = policy.triggers.output
    if text is None:
        return ["output:call_failed"], False
    hits: list[str] = []
    invalid = False
    if job.response_schema is not None:
        obj = parse_json_object(text)
        try:
            jsonschema.validate(obj, job.response_schema)
        except jsonschema.ValidationError:
            invalid = True
        if invalid and invalid_so_far + 1 >= (out.schema_invalid or 2):
            hits.append(f"output:schema_invalid_x{invalid_so_far + 1}")
    if out.low_confidence is not None:
        m = _CONFIDENCE.search(text)
        if m:
            conf = float(m.group(1)) / (100 if m.group(2) or float(m.group(1)) > 1 else 1)
            if conf < out.low_confidence:
                hits.append(f"output:low_confidence<{out.low_confidence}")
    if out.missing_citations and not _CITATION.search(text):
        hits.append("output:missing_citations")
    return hits, invalid


def conclude_panel(rt: Runtime, d: Dispatcher, panel_id: str) -> None:
    """A panel is decided: escalate, retry, or finalise the job. One caller at a time acts (a
    lease), and the panel is marked concluded only after the action, so a conclusion that raised
    or lost its worker is taken up again by a retry or the sweep. A caller that finds the lease
    taken (a late member) leaves a re-render request that the holder serves before it lets go."""
    spec = rt.store.spec(panel_id)
    if spec is None:
        return
    pkey = keys.panel(panel_id)
    if not rt.redis.eval(_TAKE_LEASE, 2, pkey + ":concluding", pkey, os.getpid(), CONCLUDE_LEASE_S):
        return
    try:
        if not rt.redis.hexists(pkey, "once:concluded"):
            act_on_decision(rt, d, spec)
            rt.redis.hset(pkey, "once:concluded", time.time())
            if not rt.redis.eval(_RELEASE_LEASE, 2, pkey + ":concluding", pkey):
                return
        while True:  # concluded before, or a late member asked meanwhile: re-render its call
            if rt.redis.hget(keys.job(spec.job_id), "status") == b"decided":
                finalise_job(rt, spec.job_id, rerender=True)
            if not rt.redis.eval(_RELEASE_LEASE, 2, pkey + ":concluding", pkey):
                return
    except BaseException:  # raised mid-conclusion: free the lease for the retry or the sweep
        rt.redis.delete(pkey + ":concluding")
        raise


# KEYS[1] lease, KEYS[2] panel hash. Take the lease, or leave a re-render request for its holder.
_TAKE_LEASE = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'EX', ARGV[2]) then return 1 end
redis.call('HSET', KEYS[2], 'rerender', 1)
return 0
"""
# Let the lease go unless a re-render was requested meanwhile (then keep it: returns 1).
_RELEASE_LEASE = """
if redis.call('HDEL', KEYS[2], 'rerender') == 1 then return 1 end
redis.call('DEL', KEYS[1])
return 0
"""


def act_on_decision(rt: Runtime, d: Dispatcher, spec: PanelSpec) -> None:
    """Escalate, retry or finalise; safe to repeat after a crash (a panel already followed by
    another is not escalated again, a finalised job is only re-rendered)."""
    panel_id = spec.panel_id
    if panels_of(rt, spec.job_id)[-1]["panel_id"] != panel_id:
        return  # this panel's escalation or retry was sent before a crash
    rt.publish_decided(panel_id)
    job = load_job(rt, spec.job_id)
    policy = rt.policies.get(job.task_class)
    text = final_text(rt, panel_id)
    if spec.stage == "single":
        invalid_so_far = int(rt.redis.hget(keys.job(spec.job_id), "schema_invalid") or 0)
        hits, invalid = output_triggers(job, policy, text, invalid_so_far)
        if invalid:
            rt.redis.hincrby(keys.job(spec.job_id), "schema_invalid", 1)
        if hits:
            new_panel(rt, d, spec.job_id, job, policy, "panel", 1, hits, f"output trigger {hits[0]}")
            return
        if invalid:  # below the escalation count: one more try on the default lane
            new_panel(rt, d, spec.job_id, job, policy, "single", spec.attempt + 1, [], "schema invalid: retry")
            return
    finalise_job(rt, spec.job_id)


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


def finalise_job(rt: Runtime, job_id: str, rerender: bool = False) -> Result:
    """Write the result and receipt. The first call (not `rerender`) also signals done and appends
    to the ledger, in one MULTI with the result, so a crash never leaves one without the other;
    a repeat after a crash finds `finalised` and only re-renders."""
    jkey = keys.job(job_id)
    rerender = rerender or bool(rt.redis.hexists(jkey, "finalised"))
    job = load_job(rt, job_id)
    panels = panels_of(rt, job_id)
    last = panels[-1]["panel_id"]
    text = final_text(rt, last)
    receipt = render_receipt(rt, job_id, job, panels).model_copy(update={"final_answer": text})
    prior, ledger_id = rt.redis.hmget(jkey, ["result", "ledger_id"]) if rerender else (None, None)
    if prior and (first := Result.model_validate_json(prior).receipt) is not None:
        receipt = receipt.model_copy(update={"latency_ms": first.latency_ms})  # decided then, not now
    decided = receipt.decision != "failed" and text is not None
    parsed = parse_json_object(text) if (text and job.response_schema) else None
    result = Result(job_id=job_id, status="decided" if decided else "failed", answer=text, parsed=parsed,
                    disagreement=receipt.disagreement, receipt=receipt,
                    error=None if decided else failure_summary(receipt))  # fmt: skip
    if prior is not None and prior == result.model_dump_json().encode():
        return result  # a re-render that changes nothing writes nothing
    pipe = rt.redis.pipeline()
    pipe.hset(jkey, mapping={"status": result.status, "result": result.model_dump_json()})
    entry_at = None
    if not rerender:
        pipe.hset(jkey, "finalised", time.time())
        pipe.rpush(keys.done_channel(job_id), result.status)
    if not rerender or ledger_id:  # a re-render replaces the ledger entry: one document per job
        entry_at = ledger.queue_entry(pipe, receipt, replaces=ledger_id)
    for k in (jkey, keys.done_channel(job_id)):
        pipe.expire(k, rt.settings.result_ttl_s)
    written = pipe.execute()
    if entry_at is not None:
        rt.redis.hset(jkey, "ledger_id", written[entry_at])
    if not rerender:
        metrics.DECISIONS.labels(job.task_class, receipt.decision).inc()
        metrics.CALLS_SAVED.labels(job.task_class).inc(receipt.calls_saved)
        if receipt.early_exit:
            metrics.EARLY_EXITS.labels(job.task_class).inc()
        if any(c.role == "arbiter" for c in receipt.calls):
            metrics.ARBITER.labels(job.task_class).inc()
        metrics.announce_decision(receipt)
        rt.redis.zrem(keys.PANEL_DEADLINES, *[p["panel_id"] for p in panels])
    log.info("job %s %s via %s (%s calls, $%.6f)", job_id, result.status, receipt.decision,
             len(receipt.calls), receipt.total_cost_usd)  # fmt: skip
    return result


def failure_reason(e: BaseException) -> str:
    """One line on why a task failed, for the job's error and the dead-letter list. A pydantic
    error names the fields only: its default text quotes the input, which may be a prompt."""
    if isinstance(e, pydantic.ValidationError):
        where = ", ".join(".".join(map(str, err["loc"])) or "(root)" for err in e.errors()[:5])
        return f"ValidationError: {e.error_count()} invalid field(s) of {e.title}: {where}"
    return f"{type(e).__name__}: {e}"[:300]


DEAD_LETTER = keys.PREFIX + "deadletter"  # list, newest first: what operators inspect and replay
DEAD_LETTER_MAXLEN = 10_000


def dead_letter(rt: Runtime, job_id: str, task: str, task_id: str, reason: str, attempts: int) -> bool:
    """Park a task that failed `attempts` times (raised, or lost its worker each time) and fail its
    job with the reason, so it stops taking workers and its caller stops waiting. True if this
    call failed the job (a job already decided or dead-lettered is left as it is)."""
    entry = {
        "job_id": job_id,
        "task": task,
        "task_id": task_id,
        "reason": reason,
        "attempts": attempts,
        "at": time.time(),
    }
    pipe = rt.redis.pipeline()
    pipe.lpush(DEAD_LETTER, orjson.dumps(entry))
    pipe.ltrim(DEAD_LETTER, 0, DEAD_LETTER_MAXLEN - 1)
    pipe.execute()
    jkey = keys.job(job_id)
    if rt.redis.hget(jkey, "status") in (b"decided", b"failed") or not rt.redis.hsetnx(
        jkey, "dead_letter", orjson.dumps(entry)
    ):
        return False
    fail_job(rt, job_id, f"dead-letter: {task} gave up after {attempts} attempts: {reason}")
    panels = [p["panel_id"] for p in panels_of(rt, job_id)]
    if panels:  # nothing is left for the deadline sweep to decide
        rt.redis.zrem(keys.PANEL_DEADLINES, *panels)
    log.warning("job %s dead-lettered: %s after %d attempts: %s", job_id, task, attempts, reason)
    return True


def fail_job(rt: Runtime, job_id: str, reason: str) -> None:
    result = Result(job_id=job_id, status="failed", error=reason)
    jkey = keys.job(job_id)
    pipe = rt.redis.pipeline()
    pipe.hset(jkey, mapping={"status": "failed", "result": result.model_dump_json(), "error": reason})
    pipe.rpush(keys.done_channel(job_id), "failed")
    pipe.expire(keys.done_channel(job_id), rt.settings.result_ttl_s)
    pipe.execute()
    log.info("job %s failed: %s", job_id, reason)
