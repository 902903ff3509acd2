"""A batch panel's arbiter made in real time, because its deadline is too near for another batch
(a batch may take up to 24 h; workers/panel/route.py decides). It pays the real-time price and its
receipt line says so. A batch panel's member made in real time is an ordinary member turn priced
at the real-time list (`run_member(chord, panel_id, member_id, batch=False)`).

    turn = run_arbiter_now(chord, panel_id)          # panel.batch_arbiter when the deadline is near
"""

from __future__ import annotations

import time

from workers.batch.arbiter import arbiter_messages_for, land_arbiter, needs_arbiter
from workers.panel.chord import Turn
from workers.panel.ports import Chord


def run_arbiter_now(chord: Chord, panel_id: str) -> Turn:
    """The arbiter (and its one retry on an unusable verdict) at the real-time price."""
    spec = chord.store.spec(panel_id)
    if spec is None or not needs_arbiter(chord.store, panel_id):
        return Turn("not needed", spec)
    job = chord.jobs.load(spec.job_id)
    turn = Turn("retry", spec)
    while turn.status == "retry":
        res = chord.caller(None, spec.arbiter, arbiter_messages_for(chord.store, spec, job),
                           max(spec.deadline, time.time() + 60), json_mode=True,
                           spend=chord.jobs.spend(job, batch=False))  # fmt: skip
        turn = land_arbiter(chord, spec, job, res, batch=False)
    return turn
