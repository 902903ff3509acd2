"""Receipts: one per job, rendered from the panels' state, stored with the result and appended
to the `pf:ledger` stream that `panel ledger` summarises.
"""

from __future__ import annotations

import time
from typing import Any

import orjson

from producer.contract import CallRecord, Job, LaneStep, Receipt, Verdict
from workers.panel.chord import call_record
from workers.panel.state import PanelSnapshot
from workers.runtime import Runtime

LEDGER_MAXLEN = 200_000


def _decision(stage: str, decided: str, verdict: Verdict | None) -> str:
    if decided == "quorum":
        return "single" if stage == "single" else "quorum"
    if decided == "arbiter":
        return "majority" if verdict and verdict.fallback else "arbiter"
    return decided if decided in ("sweep", "failed") else "failed"


def render_receipt(rt: Runtime, job_id: str, job: Job, panels: list[dict[str, Any]],
                   snaps: dict[str, PanelSnapshot], submitted_at: float) -> Receipt:  # fmt: skip
    """The job's receipt from its panels' snapshots (workers/panel/state.py), read by the caller."""
    policy = rt.policies.get(job.task_class)
    lanes: list[LaneStep] = []
    triggers: list[str] = []
    calls: list[CallRecord] = []
    saved = 0
    verdict: Verdict | None = None
    decision, early_exit, default_key, final_key = "failed", False, None, None
    default_text = None
    for n, p in enumerate(panels, start=1):
        spec = rt.store.spec(p["panel_id"])
        if spec is None:
            continue
        snap = snaps[spec.panel_id]
        state, records = snap.state, snap.calls
        lanes.append(LaneStep(lane="batch" if spec.batch else spec.stage, reason=p["reason"]))
        triggers += [t for t in spec.triggers if t not in triggers]
        dispatched = int(state.get("dispatched", len(spec.members)))
        for i, m in enumerate(spec.members):
            rec = records.get(m.member)
            if rec is None:  # never recorded: not sent (staged), or cancelled before it ran
                rec = call_record(rt.registry, spec, m, "skipped" if i >= dispatched else "cancelled")
            if rec.status in ("skipped", "cancelled"):
                saved += 1
            calls.append(CallRecord(**rec.receipt_fields() | {"member": f"{n}.{m.member}"}))
            if default_key is None and rec.status == "answered" and m.model == policy.single.model:
                default_key, default_text = rec.answer_key, rec.text
        if "arbiter" in records:
            calls.append(CallRecord(**records["arbiter"].receipt_fields() | {"member": f"{n}.arbiter"}))
        if state.get("verdict"):
            verdict = Verdict.model_validate(orjson.loads(state["verdict"]))
        decision = _decision(spec.stage, state.get("decided", ""), verdict)
        final_key = state.get("answer") or None
        voted = len(snap.votes)
        early_exit = state.get("decided") == "quorum" and voted < len(spec.members)
    disagreement = _disagreement(snaps[panels[-1]["panel_id"]], verdict)
    changed = None if default_key is None or final_key is None else default_key != final_key
    submitted = submitted_at
    return Receipt(
        job_id=job_id, task_class=job.task_class, tenant=job.tenant, lanes=lanes, triggers=triggers,
        calls=calls, decision=decision, early_exit=early_exit, calls_saved=saved, verdict=verdict,  # type: ignore[arg-type]
        disagreement=disagreement, default_answer=default_text, final_answer=None,
        changed_vs_default=changed, total_cost_usd=round(sum(c.cost_usd for c in calls), 10),
        latency_ms=round((time.time() - submitted) * 1000, 1),
    )  # fmt: skip


def _disagreement(snap: PanelSnapshot, verdict: Verdict | None) -> str | None:
    if verdict and verdict.disagreements:
        return "; ".join(verdict.disagreements)
    tally = snap.tally
    if len(tally) <= 1:
        return None
    votes = snap.votes
    answer = snap.state.get("answer")
    dissent = sorted(m for m, k in votes.items() if k and k != answer)
    return f"{', '.join(dissent)} answered otherwise ({len(tally)} distinct answers; decided: {answer!r})"
