"""A batch panel's call made in real time, because its deadline is too near for another batch
(a batch may take up to 24 h). It pays the real-time price and its receipt line says so.

    run_member_now(rt, d, panel_id, "m2")     # panel.batch_realtime on the member's tier queue
    run_arbiter_now(rt, d, panel_id)          # panel.batch_arbiter when the deadline is near
"""

from __future__ import annotations

import time

from workers.batch.arbiter import arbiter_messages_for, land_arbiter, needs_arbiter
from workers.panel.calls import EXPECTED_OUTPUT_TOKENS, call_model, estimate_tokens
from workers.panel.chord import Dispatcher, call_record, follow_up, json_mode, land
from workers.panel.state import PanelSpec
from workers.runtime import Cancelled, Runtime


def run_member_now(rt: Runtime, d: Dispatcher, panel_id: str, member_id: str) -> str:
    """One member's call at the real-time price; the panel's later stages stay on the batch lane
    unless they, too, are near the deadline. Returns the call's status."""
    from workers.jobs import load_job, spend_of

    spec = rt.store.spec(panel_id)
    if spec is None:
        return "gone"
    m = spec.member(member_id)
    prior = rt.store.call(panel_id, member_id)
    if prior and prior["status"] in ("answered", "failed", "late"):  # redelivered after the call
        follow_up(rt, d, spec, rt.store.vote(panel_id, member_id, prior.get("answer_key"), stage_step(spec)))
        return "reused"
    if rt.store.decided(panel_id):
        rt.store.put_call(panel_id, member_id, call_record(spec, m, rt, "cancelled", batch=False), only_if_absent=True)
        return "cancelled"
    job = load_job(rt, spec.job_id)
    started = time.time()
    try:
        res = call_model(rt, panel_id, m.model, job.chat(), spec.deadline, json_mode=json_mode(spec, job),
                         spend=spend_of(rt, job, batch=False))  # fmt: skip
    except Cancelled as c:
        tokens_in = estimate_tokens(job.chat()) - EXPECTED_OUTPUT_TOKENS if c.sent else 0
        rt.store.put_call(panel_id, member_id, call_record(spec, m, rt, "cancelled", batch=False, tokens_in=tokens_in,
                          cost_usd=rt.registry.cost(m.model, tokens_in, 0, False)), only_if_absent=True)  # fmt: skip
        return "cancelled"
    return land(rt, d, spec, m, job, res, elapsed_ms=(time.time() - started) * 1000, batch=False)


def run_arbiter_now(rt: Runtime, d: Dispatcher, panel_id: str) -> str:
    """The arbiter (and its one retry on an unusable verdict) at the real-time price."""
    from workers.jobs import load_job, spend_of

    spec = rt.store.spec(panel_id)
    if spec is None or not needs_arbiter(rt, panel_id):
        return "not needed"
    job = load_job(rt, spec.job_id)
    outcome = "retry"
    while outcome == "retry":
        res = call_model(rt, None, spec.arbiter, arbiter_messages_for(rt, spec, job), max(spec.deadline, time.time() + 60),
                         json_mode=True, spend=spend_of(rt, job, batch=False))  # fmt: skip
        outcome = land_arbiter(rt, d, spec, job, res, batch=False)
    return outcome


def stage_step(spec: PanelSpec) -> int:
    """How many more members a staged panel sends on disagreement (as the chord counts it)."""
    return 1 if spec.dispatch == "staged" else len(spec.members)
