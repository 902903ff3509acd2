"""The deadline sweep: decides panels whose members are lost or late, with what has arrived.

Runs every PANEL_SWEEP_INTERVAL_S in one of the `control` workers (workers/duties.py). It also finishes the follow-up of
a panel decided by a member whose worker died right after its vote (the decision is in Redis;
the conclusion was not made), so no job waits forever.

    sweep(store, dispatcher, dead_letter=jobs.dead_letter)
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from producer import keys
from producer.wire import text
from workers.errors import failure_reason
from workers.panel import watchdog
from workers.panel.act import cancel_stragglers
from workers.panel.ports import Dispatcher
from workers.panel.state import PanelStore

STALE_DECISION_S = 30.0  # a decision with no conclusion after this long lost its worker
MAX_PANEL_FAILURES = 3
SWEEP_FAILURES = keys.SWEEP_FAILURES
log = logging.getLogger("panel.sweep")
DeadLetter = Callable[[str, str, str, str, int], bool]  # (job_id, task, task_id, reason, attempts)


def sweep(store: PanelStore, d: Dispatcher, dead_letter: DeadLetter, now: float | None = None, limit: int = 1000,
          watchdog_s: float | None = None, send_run: Callable[[str], None] | None = None) -> int:  # fmt: skip
    """Returns how many panels it decided or concluded. A panel that makes the sweep raise (its
    state unreadable) is skipped, and after MAX_PANEL_FAILURES ticks its job is dead-lettered, so
    one poison panel never stops the sweep from deciding the others. With `watchdog_s`, the
    watchdog (workers/panel/watchdog.py) runs first: members and `panel.run`s whose message
    vanished are sent again, and panels decided but never concluded are concluded."""
    now = time.time() if now is None else now
    acted = 0
    if watchdog_s is not None:
        try:
            acted += watchdog.resend_overdue(store, d, now, watchdog_s)
            if send_run is not None:
                acted += watchdog.resend_lost_runs(store.r, now, watchdog_s, send_run)
            acted += watchdog.conclude_stranded(store.r, d, now, every_s=watchdog_s / 3, window_s=STALE_DECISION_S)
        except Exception as e:  # the watchdog never stops the sweep
            log.warning("sweep: watchdog failed: %s: %s", type(e).__name__, e)
    due: list[bytes] = store.r.zrangebyscore(keys.PANEL_DEADLINES, 0, now + STALE_DECISION_S, start=0, num=limit)  # type: ignore[assignment]
    for raw in due:
        pid = text(raw)
        try:
            acted += sweep_panel(store, d, pid, now)
        except Exception as e:
            quarantine(store, pid, failure_reason(e), dead_letter)
    return acted


def sweep_panel(store: PanelStore, d: Dispatcher, pid: str, now: float) -> int:
    spec = store.spec(pid, fresh=True)
    state = store.state(pid)
    if spec is None or not state or "once:concluded" in state:  # gone (expired) or done
        store.r.zrem(keys.PANEL_DEADLINES, pid)
        return 0
    decided = state.get("decided")
    if decided is None and spec.deadline <= now:
        outcome = "sweep" if store.tally(pid) else "failed"
        won, _, _ = store.decide(pid, outcome)
        if won:
            cancel_stragglers(store, d, spec)
            d.conclude(pid)
            return 1
    elif decided == "exhausted" and spec.deadline <= now:
        # no agreement and no verdict by the deadline: the arbiter was lost (its worker died
        # between taking `once:arbiter` and sending it) or is late. Decide with the plurality,
        # as for lost members; a verdict that still arrives cannot replace a sweep decision.
        won, _, _ = store.decide(pid, "sweep" if store.tally(pid) else "failed", "", replace_exhausted=True)
        if won:
            d.conclude(pid)
            return 1
    elif decided in ("quorum", "sweep", "arbiter", "failed", "split") and now - spec.deadline >= -STALE_DECISION_S:
        d.conclude(pid)  # idempotent; recovers a conclusion lost with its worker
        return 1
    return 0


def quarantine(store: PanelStore, pid: str, reason: str, dead_letter: DeadLetter) -> None:
    """Count a panel's sweep failures; at the limit drop it from the sweep and dead-letter its job."""
    r = store.r
    failures = int(r.hincrby(SWEEP_FAILURES, pid, 1))
    log.warning("sweep: panel %s failed (%d/%d): %s", pid, failures, MAX_PANEL_FAILURES, reason)
    if failures >= MAX_PANEL_FAILURES:
        r.zrem(keys.PANEL_DEADLINES, pid)
        r.hdel(SWEEP_FAILURES, pid)
        dead_letter(pid.rsplit(".", 1)[0], "panel.sweep", pid, reason, failures)
