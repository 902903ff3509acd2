"""The deadline sweep from inside the `control` workers, not through Celery beat.

Every worker process that consumes `control` runs a thread that, each PANEL_SWEEP_INTERVAL_S,
asks for the fleet's sweep turn (SET NX with a TTL of most of the interval: one sweep per
interval fleet-wide, whichever control worker asks first) and runs the sweep in that thread
(workers/tasks.py `run_sweep`: the watchdog, the deadlines, the provider snapshot).

Before, beat sent a `panel.sweep` task every interval. Each such task, alone on the queue, paid a
beat publish, a receive, its events and its ack: ~12 ms of CPU a second on an idle control worker
(bench/hotpath.py step 0), for a sweep whose own work is one pipeline when nothing is due. And
the deadlines waited on the one beat process, and on a control queue's backlog: a `panel.sweep`
sat behind every `panel.run` queued before it. Now any live control worker sweeps, on time.

`panel.sweep` stays a task: a beat of an earlier release still sends it during a rolling upgrade,
and an operator can send one. Two sweeps at once were always possible (a delayed task beside the
next one) and are harmless: a panel is decided once (its decision is a Lua step) and concluded
under its lease.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable
from typing import Any

from producer import keys

log = logging.getLogger("panel.sweeper")
TURN_SHARE = 0.8  # the turn lasts this share of the interval: another worker's tick a little early still waits
WHO = f"{socket.gethostname()}:{os.getpid()}"


def take_turn(r: Any, interval_s: float) -> bool:
    return bool(r.set(keys.SWEEP_TURN, WHO, nx=True, px=max(1, int(interval_s * 1000 * TURN_SHARE))))


def start(r: Any, interval_s: float, sweep: Callable[[], int]) -> threading.Event:
    """Sweep every `interval_s` in this process's turns, from a thread of its own (a sweep blocks on
    Redis for its socket timeout in an outage: never on the consumer's loop or the timer thread).
    Set the returned event to stop."""
    stop = threading.Event()

    def loop() -> None:
        failing = False
        while not stop.wait(interval_s):
            try:
                if take_turn(r, interval_s):
                    sweep()
                failing = False
            except Exception as e:  # the next tick tries again; logged once per failing spell
                if not failing:
                    log.warning("deadline sweep failed (%s: %s); retrying every %.1f s", type(e).__name__, e, interval_s)
                failing = True

    threading.Thread(target=loop, name="panel-sweeper", daemon=True).start()
    return stop


def consumes_control(app: Any) -> bool:
    """Whether this worker takes the `control` queue (`-Q`; no `-Q` takes every queue)."""
    chosen = app.amqp.queues.consume_from
    return chosen is None or "control" in chosen
