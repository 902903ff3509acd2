"""The deadline sweep: decides panels whose members are lost or late, with what has arrived.

Runs every PANEL_SWEEP_INTERVAL_S on `control` (Celery beat). It also finishes the follow-up of
a panel decided by a member whose worker died right after its vote (the decision is in Redis;
the conclusion was not made), so no job waits forever.
"""

from __future__ import annotations

import time

from producer import keys
from workers.panel.chord import Dispatcher, cancel_stragglers
from workers.runtime import Runtime

STALE_DECISION_S = 30.0  # a decision with no conclusion after this long lost its worker


def sweep(rt: Runtime, d: Dispatcher, now: float | None = None, limit: int = 1000) -> int:
    """Returns how many panels it decided or concluded."""
    now = time.time() if now is None else now
    acted = 0
    for raw in rt.redis.zrangebyscore(keys.PANEL_DEADLINES, 0, now + STALE_DECISION_S, start=0, num=limit):
        pid = raw.decode()
        spec = rt.store.spec(pid)
        state = rt.store.state(pid)
        if spec is None or "once:concluded" in state:
            rt.redis.zrem(keys.PANEL_DEADLINES, pid)
            continue
        decided = state.get("decided")
        if decided is None and spec.deadline <= now:
            outcome = "sweep" if rt.store.tally(pid) else "failed"
            won, _, _ = rt.store.decide(pid, outcome)
            if won:
                cancel_stragglers(rt, d, spec)
                d.conclude(pid)
                acted += 1
        elif decided in ("quorum", "sweep", "arbiter", "failed") and now - spec.deadline >= -STALE_DECISION_S:
            d.conclude(pid)  # idempotent; recovers a conclusion lost with its worker
            acted += 1
    return acted
