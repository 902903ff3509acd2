"""A batch panel's call made in real time, because its deadline is too near for another batch
(a batch may take up to 24 h). It pays the real-time price and its receipt line says so.

    run_member_now(rt, d, panel_id, "m2")     # panel.batch_realtime on the member's tier queue
    run_arbiter_now(rt, d, panel_id)          # panel.batch_arbiter when the deadline is near
"""

from __future__ import annotations

import time

from workers.batch.arbiter import arbiter_messages_for, land_arbiter, needs_arbiter
from workers.panel.calls import call_model
from workers.panel.chord import Dispatcher, run_member
from workers.runtime import Runtime


def run_member_now(rt: Runtime, d: Dispatcher, panel_id: str, member_id: str) -> str:
    """One member's call at the real-time price; the panel's later stages stay on the batch lane
    unless they, too, are near the deadline. Returns the call's status."""
    return run_member(rt, d, panel_id, member_id, batch=False)


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
