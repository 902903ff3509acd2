"""Receipts: one per job, rendered from the panels' state, stored with the result and appended
to the ledger stream (`keys.LEDGER_STREAM`) that `panel ledger` summarises.
"""

from __future__ import annotations

import time
from importlib.resources import files
from typing import Any

import orjson

from producer import keys
from producer.contract import CallRecord, Job, LaneStep, Receipt, Verdict
from workers.panel import attempts
from workers.panel.chord import call_record
from workers.panel.record import NOT_MEMBERS, Call
from workers.panel.run import PanelSnapshot
from workers.runtime import Runtime

LEDGER_MAXLEN = 200_000


def _decision(stage: str, decided: str, verdict: Verdict | None) -> str:
    if decided == "quorum":
        return "single" if stage == "single" else "quorum"
    if decided == "arbiter":
        return "majority" if verdict and verdict.fallback else "arbiter"
    if decided == "split":  # a cascade's last stage without an arbiter: the plurality was taken
        return "majority"
    return decided if decided in ("sweep", "failed") else "failed"


def render_receipt(rt: Runtime, job_id: str, job: Job, panels: list[dict[str, Any]],
                   snaps: dict[str, PanelSnapshot], submitted_at: float, kept: dict[str, Any] | None = None) -> Receipt:  # fmt: skip
    """The job's receipt from its panels' snapshots (workers/panel/state.py), read by the caller.
    `kept`: the earlier cascade stage whose answer decides the job, its last stage having none
    (workers/cascade_lane.py `kept_stage`): the decision is that stage's, and a trigger says so."""
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
        lanes.append(LaneStep(lane="batch" if spec.batch else spec.stage, reason=p["reason"], **_stage_fields(p, state)))
        if p.get("cascade", {}).get("stage") == 1:  # a cascade's default answer is its first stage's
            default_key, default_text = state.get("answer") or None, _decided_text(state, records)
        triggers += [t for t in spec.triggers if t not in triggers]
        dispatched = int(state.get("dispatched", len(spec.members)))
        tried = snap.attempts  # read with the panel's calls, in one MULTI
        for i, m in enumerate(spec.members):
            rec = records.get(m.member)
            extra = attempts.unrepresented(tried.get(m.member, []), rec.status if rec else None)
            pending = rec is None and bool(extra) and extra[-1].status == "in_flight"
            calls += [_attempt_record(rt, a, f"{n}.{m.member}", cut_off=pending and a is extra[-1]) for a in extra]
            if pending:
                saved += 1  # in flight at the decision: being cut off; its own record re-renders this
                continue
            if rec is None:  # never recorded: not sent (staged), or cancelled before it ran
                rec = call_record(rt.registry, spec, m, "skipped" if i >= dispatched else "cancelled")
            if rec.status in ("skipped", "cancelled"):
                saved += 1
            calls.append(CallRecord(**rec.receipt_fields() | {"member": f"{n}.{m.member}"}))
            if default_key is None and "cascade" not in p and rec.status == "answered" and m.model == policy.single.model:
                default_key, default_text = rec.answer_key, rec.text
        for judge in NOT_MEMBERS:  # the equivalence check and the arbiter, charged like members
            if judge in records:
                calls.append(CallRecord(**records[judge].receipt_fields() | {"member": f"{n}.{judge}"}))
        if state.get("verdict"):
            verdict = Verdict.model_validate(orjson.loads(state["verdict"]))
        decision = _decision(spec.stage, state.get("decided", ""), verdict)
        final_key = state.get("answer") or None
        voted = len(snap.votes)
        early_exit = state.get("decided") == "quorum" and voted < len(spec.members)
    if kept is not None:
        snap = snaps[kept["panel_id"]]
        spec = rt.store.spec(kept["panel_id"])
        verdict = Verdict.model_validate(orjson.loads(snap.state["verdict"])) if snap.state.get("verdict") else None
        decision = _decision(spec.stage if spec else "panel", snap.state.get("decided", ""), verdict)
        final_key = snap.state.get("answer") or None
        early_exit = snap.state.get("decided") == "quorum" and spec is not None and len(snap.votes) < len(spec.members)
        triggers.append(f"cascade:stage{panels[-1]['cascade']['stage']}:no answer; stage{kept['cascade']['stage']}'s unaccepted answer kept")
    disagreement = _disagreement(snaps[(kept or panels[-1])["panel_id"]], verdict)
    changed = None if default_key is None or final_key is None else default_key != final_key
    submitted = submitted_at
    return Receipt(
        job_id=job_id, task_class=job.task_class, tenant=job.tenant, lanes=lanes, triggers=triggers,
        calls=calls, decision=decision, early_exit=early_exit, calls_saved=saved, verdict=verdict,  # type: ignore[arg-type]
        disagreement=disagreement, default_answer=default_text, final_answer=None,
        changed_vs_default=changed, total_cost_usd=round(sum(c.cost_usd for c in calls), 10),
        latency_ms=round((time.time() - submitted) * 1000, 1),
    )  # fmt: skip


def _attempt_record(rt: Runtime, a: attempts.Attempt, member: str, cut_off: bool = False) -> CallRecord:
    """A provider attempt no member record stands for: a failed retry, a call cut off, or one lost
    in flight (charged at its input estimate, or its real usage if the answer had come back).
    `cut_off`: in flight when the panel was decided, its cancellation not yet recorded (no charge yet)."""
    mspec = rt.registry.model(a.model)
    status, error = attempts.receipt_status(a)
    tokens_in = 0 if status == "failed" else a.tokens_in
    if cut_off:  # charged when its own record lands (re-rendered): a receipt's cost only ever grows
        status, error, tokens_in = "cancelled", "in flight at the decision: cut off; its charge lands with its record", 0
    return CallRecord(member=member, model=a.model, provider=mspec.provider, tier=mspec.tier, status=status,  # type: ignore[arg-type]
                      tokens_in=tokens_in, tokens_out=a.tokens_out, latency_ms=round(a.latency_ms, 1), batch=a.batch,
                      cost_usd=rt.registry.cost(a.model, tokens_in, a.tokens_out, a.batch), error=error)  # fmt: skip


def _stage_fields(entry: dict[str, Any], state: dict[str, str]) -> dict[str, Any]:
    """A cascade stage's acceptance for its LaneStep: check, value, threshold, accepted."""
    if "cascade" not in entry:
        return {}
    fields: dict[str, Any] = {"stage": entry["cascade"]["stage"]}
    if state.get("cascade"):
        a = orjson.loads(state["cascade"])
        fields |= {k: a[k] for k in ("check", "value", "threshold", "accepted")}
    return fields


def _decided_text(state: dict[str, str], records: dict[str, Call]) -> str | None:
    if state.get("verdict"):
        return str(orjson.loads(state["verdict"])["final_answer"])
    key = state.get("answer")
    answered = sorted((c for m, c in records.items() if m not in NOT_MEMBERS and c.status in ("answered", "late")),
                      key=lambda c: c.member)  # fmt: skip
    return next((c.text for c in answered if key and c.answer_key == key), None)


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


def queue_entry(pipe: Any, receipt: Receipt, replaces: bytes | str | None = None) -> int:
    """Queue the receipt's ledger entry on `pipe` (a MULTI), deleting the entry it `replaces`, so
    the ledger holds one entry per job, the same document as the job's result even when a late
    record re-renders it. Returns the XADD's index in the pipeline's results (the entry id, to be
    kept in the job hash as `ledger_id`)."""
    if replaces:
        pipe.xdel(keys.LEDGER_STREAM, replaces)
    at = len(pipe)  # queued so far (a cluster pipeline keeps no command_stack of its own)
    pipe.xadd(keys.LEDGER_STREAM, {"task_class": receipt.task_class, "receipt": receipt.model_dump_json()},
              maxlen=LEDGER_MAXLEN, approximate=True)  # fmt: skip
    return at


_ENTRY = (files("workers") / "ledger_entry.lua").read_text()


def queue_entry_with_id(pipe: Any, receipt: Receipt, job_key: str, replaces: bytes | str | None = None) -> None:
    """`queue_entry`, with the entry's id written to the job's `ledger_id` in the same step
    (ledger_entry.lua, sent as EVAL: inside a MULTI a script Redis lost would fail alone while
    the rest ran). The stream and the job are different slots: a single Redis only."""
    pipe.eval(_ENTRY, 2, keys.LEDGER_STREAM, job_key, LEDGER_MAXLEN, receipt.task_class,
              receipt.model_dump_json(), text_of(replaces))  # fmt: skip


def text_of(raw: bytes | str | None) -> str:
    return raw.decode() if isinstance(raw, bytes) else (raw or "")


def prior_latency_ms(prior: bytes | str) -> float | None:
    """A stored result's receipt latency (the decision's, which a re-render keeps), read without
    validating the whole result again: `finalise_job` wrote it through `Result`."""
    receipt = orjson.loads(prior).get("receipt")
    return None if receipt is None else float(receipt["latency_ms"])
