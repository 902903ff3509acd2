"""The deadline sweep: decides panels whose members are lost or late, with what has arrived.

Runs every PANEL_SWEEP_INTERVAL_S on `control` (Celery beat). It also finishes the follow-up of
a panel decided by a member whose worker died right after its vote (the decision is in Redis;
the conclusion was not made), so no job waits forever.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from producer import keys
from workers.panel import watchdog
from workers.panel.chord import Dispatcher, cancel_stragglers
from workers.runtime import Runtime

STALE_DECISION_S = 30.0  # a decision with no conclusion after this long lost its worker
MAX_PANEL_FAILURES = 3
SWEEP_FAILURES = keys.PREFIX + "sweep:failures"  # hash: panel id -> ticks it made the sweep raise
log = logging.getLogger("panel.sweep")


def sweep(rt: Runtime, d: Dispatcher, now: float | None = None, limit: int = 1000,
          send_run: Callable[[str], None] | None = None) -> int:  # fmt: skip
    """Returns how many panels it decided or concluded. A panel that makes the sweep raise (its
    state unreadable) is skipped, and after MAX_PANEL_FAILURES ticks its job is dead-lettered, so
    one poison panel never stops the sweep from deciding the others."""
    now = time.time() if now is None else now
    acted = 0
    try:  # members whose message vanished are sent again long before their deadline
        acted += watchdog.resend_overdue(rt, d, now, rt.settings.watchdog_s)
        if send_run is not None:
            acted += watchdog.resend_lost_runs(rt, now, rt.settings.watchdog_s, send_run)
        acted += watchdog.conclude_stranded(rt, d, now, every_s=rt.settings.watchdog_s / 3, window_s=STALE_DECISION_S)
    except Exception as e:  # the watchdog never stops the sweep
        log.warning("sweep: watchdog failed: %s: %s", type(e).__name__, e)
    for raw in rt.redis.zrangebyscore(keys.PANEL_DEADLINES, 0, now + STALE_DECISION_S, start=0, num=limit):
        pid = raw.decode()
        try:
            acted += sweep_panel(rt, d, pid, now)
        except Exception as e:
            from workers.jobs import failure_reason

            quarantine(rt, pid, failure_reason(e))
    return acted


def sweep_panel(rt: Runtime, d: Dispatcher, pid: str, now: float) -> int:
    spec = rt.store.spec(pid)
    state = rt.store.state(pid)
    if spec is None or "once:concluded" in state:
        rt.redis.zrem(keys.PANEL_DEADLINES, pid)
        return 0
    decided = state.get("decided")
    if decided is None and spec.deadline <= now:
        outcome = "sweep" if rt.store.tally(pid) else "failed"
        won, _, _ = rt.store.decide(pid, outcome)
        if won:
            cancel_stragglers(rt, d, spec)
            d.conclude(pid)
            return 1
    elif decided == "exhausted" and spec.deadline <= now:
        # no agreement and no verdict by the deadline: the arbiter was lost (its worker died
        # between taking `once:arbiter` and sending it) or is late. Decide with the plurality,
        # as for lost members; a verdict that still arrives cannot replace a sweep decision.
        won, _, _ = rt.store.decide(pid, "sweep" if rt.store.tally(pid) else "failed", "", replace_exhausted=True)
        if won:
            d.conclude(pid)
            return 1
    elif decided in ("quorum", "sweep", "arbiter", "failed") and now - spec.deadline >= -STALE_DECISION_S:
        d.conclude(pid)  # idempotent; recovers a conclusion lost with its worker
        return 1
    return 0


def quarantine(rt: Runtime, pid: str, reason: str) -> None:
    """Count a panel's sweep failures; at the limit drop it from the sweep and dead-letter its job."""
    from workers.jobs import dead_letter

    failures = int(rt.redis.hincrby(SWEEP_FAILURES, pid, 1))
    log.warning("sweep: panel %s failed (%d/%d): %s", pid, failures, MAX_PANEL_FAILURES, reason)
    if failures >= MAX_PANEL_FAILURES:
        rt.redis.zrem(keys.PANEL_DEADLINES, pid)
        rt.redis.hdel(SWEEP_FAILURES, pid)
        dead_letter(rt, pid.rsplit(".", 1)[0], "panel.sweep", pid, reason, failures)
