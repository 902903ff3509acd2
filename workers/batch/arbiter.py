"""The arbiter of a batch panel, itself a batch line: the same prompt, verdict check, one retry
and majority fallback as the real-time arbiter (workers/panel/arbiter.py), at the batch price.

    request = arbiter_request(rt, spec, job)                    # the line flush() uploads
    land_arbiter(rt, d, spec, job, outcome, batch=True)         # when its result comes back

A verdict that is not valid JSON of the verdict's shape is asked for once more (in a later batch,
or in real time near the deadline); after that, or when the call itself failed, the members'
majority is taken and flagged, exactly as in real time.
"""

from __future__ import annotations

from typing import Any

from producer.contract import Job, Verdict
from workers.panel.arbiter import (
    anonymise,
    arbiter_messages,
    as_shown,
    decide_by_verdict,
    member_answers,
    parse_verdict,
    to_members,
)
from workers.panel.calls import CallOutcome
from workers.panel.chord import Dispatcher, observe_call
from workers.panel.state import PanelSpec
from workers.runtime import Runtime

VERDICT_TRIES = 2  # the first verdict, and one retry when it is unusable


def arbiter_messages_for(rt: Runtime, spec: PanelSpec, job: Job) -> list[dict[str, str]]:
    answers = member_answers(rt, spec.panel_id)
    return arbiter_messages(job.chat(), as_shown(answers, anonymise(spec.panel_id, sorted(answers))), spec.rubric)


def needs_arbiter(rt: Runtime, panel_id: str) -> bool:
    """The panel is waiting for its arbiter (members exhausted, no verdict yet)."""
    return rt.store.decided(panel_id) == "exhausted"


def land_arbiter(rt: Runtime, d: Dispatcher, spec: PanelSpec, job: Job, res: CallOutcome, batch: bool) -> str:
    """Record one arbiter call and act on it. Returns "retry" when one more verdict should be
    asked for (the caller sends it), else what decided the panel. Safe to repeat after a
    decision: it only re-requests the conclusion."""
    pid = spec.panel_id
    if not needs_arbiter(rt, pid):
        if rt.store.decided(pid) == "arbiter":
            d.conclude(pid)  # idempotent: recovers a conclusion lost with its worker
        return "not needed"
    answers = member_answers(rt, pid)
    prior: dict[str, Any] = rt.store.call(pid, "arbiter") or {}
    tries = int(prior.get("tries", 0)) + 1
    verdict: Verdict | None = None
    error = res.error
    rec = _accumulate(rt, spec, prior, res, batch, tries)
    labels = anonymise(pid, sorted(answers))
    if res.completion is not None:
        verdict = parse_verdict(res.completion.text, as_shown(answers, labels))
        verdict = to_members(verdict, labels) if verdict else None
        error = None if verdict else "verdict was not valid JSON of the verdict's shape"
    rec.update(error=error, verdict=verdict.model_dump() if verdict else None, anonymised=labels)
    rt.store.put_call(pid, "arbiter", rec)
    observe_call(rec)
    if verdict is None and res.completion is not None and tries < VERDICT_TRIES:
        return "retry"
    return decide_by_verdict(rt, d, spec, job, verdict, answers)


def _accumulate(rt: Runtime, spec: PanelSpec, prior: dict[str, Any], res: CallOutcome, batch: bool,
                tries: int) -> dict[str, Any]:  # fmt: skip
    """The arbiter's one call record, summing every try (each is paid for)."""
    c = res.completion
    tokens_in = int(prior.get("tokens_in", 0)) + (c.tokens_in if c else 0)
    tokens_out = int(prior.get("tokens_out", 0)) + (c.tokens_out if c else 0)
    cost = float(prior.get("cost_usd", 0.0)) + (
        rt.registry.cost(res.model, c.tokens_in, c.tokens_out, batch) if c else 0.0
    )
    realtime = float(prior.get("realtime_cost_usd") or prior.get("cost_usd", 0.0)) + (
        rt.registry.cost(res.model, c.tokens_in, c.tokens_out) if c else 0.0
    )
    mspec = rt.registry.model(res.model)
    replied = c is not None or prior.get("status") == "answered"  # a reply came, usable or not
    return {"member": "arbiter", "role": "arbiter", "model": res.model, "provider": mspec.provider,
            "tier": mspec.tier, "status": "answered" if replied else "failed", "tokens_in": tokens_in,
            "tokens_out": tokens_out, "latency_ms": float(prior.get("latency_ms", 0.0)) + (c.latency_ms if c else 0.0),
            "cost_usd": cost, "realtime_cost_usd": realtime if batch else None,
            "batch": batch and bool(prior.get("batch", True)), "tries": tries}  # fmt: skip
