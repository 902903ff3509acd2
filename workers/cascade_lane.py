"""The cascade lane in the fleet: a stage as a panel run (a single-model stage is a panel of one,
a panel stage is the quorum chord), and a decided stage judged by its acceptance check
(`workers/cascade.py`) from what the panel recorded. `workers/jobs.py` opens the runs and acts
on the verdict (conclude the job, or open the next stage with the reason).

The acceptance is written to the stage's panel hash (`cascade` field) before the next stage is
opened, so the receipt shows every stage taken with its check, value, threshold and verdict.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

import orjson

from producer import keys
from producer.contract import Job
from workers import cascade
from workers.panel.record import NOT_MEMBERS
from workers.panel.run import Member, PanelRun, PanelSnapshot, final_text
from workers.policy import TaskPolicy
from workers.runtime import Runtime

log = logging.getLogger("panel.cascade")


def stage_run(rt: Runtime, job_id: str, job: Job, policy: TaskPolicy, n: int, triggers: list[str],
              deadline: float, first: bool = False) -> PanelRun:  # fmt: skip
    """Stage `n`'s panel run (not yet stored): through the batch lane for a batch job (a panel
    stage then sends its quorum's worth first, as batch panels do), else in real time. `first`:
    the job's first panel, number 1 (counted when stored: workers/jobs.py open_panel)."""
    assert policy.cascade is not None
    st = cascade.stage(policy.cascade, n)
    last = cascade.is_last(policy.cascade, n)
    members = [Member(f"m{i}", mdl, rt.registry.model(mdl).tier) for i, mdl in enumerate(st.models)]
    panel = st.panel
    # a split of a stage that is not the last, judged by agreement, escalates: no arbiter is called
    arbiter = "" if panel is None or (st.check == "agreement" and not last) else (panel.arbiter or "")
    batch = job.mode == "batch" or policy.mode == "batch"
    pid = f"{job_id}.{1 if first else int(rt.redis.hincrby(keys.job(job_id), 'panels_n', 1))}"
    return PanelRun(
        panel_id=pid, job_id=job_id, stage="single" if panel is None else "panel", attempt=1, members=members,
        quorum=1 if panel is None else panel.quorum,
        dispatch="parallel" if panel is None else "staged" if batch else panel.dispatch,
        agreement=(panel.agreement if panel else policy.panel.agreement).model_dump(), arbiter=arbiter,
        rubric=policy.rubric, deadline=deadline, batch=batch, triggers=triggers, logprobs=st.check == "logprob",
    )  # fmt: skip


def previous_key(rt: Runtime, job_id: str, n: int) -> str | None:
    """The decided answer key of the job's stage n-1 (its last run), or None."""
    runs = [orjson.loads(x) for x in rt.redis.lrange(keys.job_panels(job_id), 0, -1)]
    before = [p["panel_id"] for p in runs if p.get("cascade", {}).get("stage") == n - 1]
    if not before:
        return None
    got = rt.redis.hget(keys.panel(before[-1]), "answer")
    return (got.decode() if isinstance(got, bytes) else str(got)) if got else None


def evidence(spec: PanelRun, snap: PanelSnapshot, job: Job, text: str | None) -> cascade.Evidence:
    """The decided stage as the checks see it. The answer's log-probability is the highest among
    the members that voted for it (one member for a single-model stage)."""
    state, calls = snap.state, snap.calls
    key = state.get("answer") or None
    backers = [c for m, c in calls.items() if m not in NOT_MEMBERS and c.status in ("answered", "late")
               and key is not None and c.answer_key == key]  # fmt: skip
    logprobs = [c.logprob for c in backers if c.logprob is not None]
    joined = calls.get("equivalence")
    return cascade.Evidence(text=text, logprob=max(logprobs) if logprobs else None,
                            outcome=state.get("decided", "failed"), agreeing=len(backers), quorum=spec.quorum,
                            response_schema=job.response_schema, key=key,
                            equivalent=joined is not None and joined.equivalent is True)  # fmt: skip


def judge_stage(rt: Runtime, spec: PanelRun, job: Job, policy: TaskPolicy, n: int, text: str | None,
                snap: PanelSnapshot) -> cascade.Acceptance:  # fmt: skip
    """Decided stage `n` by its check, recorded on the panel for the receipt. Repeatable: the same
    state gives the same verdict."""
    assert policy.cascade is not None
    last = cascade.is_last(policy.cascade, n)
    st = cascade.stage(policy.cascade, n)
    ev = evidence(spec, snap, job, text)
    if st.check == "agrees_previous":
        ev = replace(ev, previous_key=previous_key(rt, spec.job_id, n))
    verdict = cascade.acceptance(st, n, last, ev)
    rt.redis.hset(keys.panel(spec.panel_id), "cascade", orjson.dumps(verdict.to_dict()))
    if cascade.goes_on(verdict):
        log.info("job %s: %s; stage %d follows", spec.job_id, verdict.reason(), n + 1)
    return verdict


def kept_stage(panels: list[dict[str, Any]], snaps: dict[str, PanelSnapshot]) -> dict[str, Any] | None:
    """A cascade whose last stage taken ended without an answer (its calls failed, or ran out of
    the deadline the stages share) after an earlier stage answered: that stage, whose answer,
    paid for and unaccepted, the job keeps rather than failing with none. None otherwise."""
    last = panels[-1]
    if "cascade" not in last or final_text(snaps[last["panel_id"]]) is not None:
        return None
    for p in reversed(panels[:-1]):
        if "cascade" in p and final_text(snaps[p["panel_id"]]) is not None:
            stage: dict[str, Any] = p
            return stage
    return None
