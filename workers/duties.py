"""The fleet's periodic duties (the deadline sweep, the batch lane's flush and poll), run from inside
the `control` workers, not through Celery beat.

Every worker process that consumes `control` runs one thread per duty. Each interval the thread
asks for the fleet's turn at its duty (SET NX on the duty's turn key, with a TTL of most of the
interval: one run per interval fleet-wide, whichever control worker asks first) and runs it in
that thread. A thread per duty, because a duty's run may block: a batch flush uploads a file and
a poll downloads results (seconds each), and a sweep blocks on Redis for its socket timeout in an
outage; the others keep their time meanwhile, and none runs on the consumer's loop or timer.

    running = start(r, Duty("deadline sweep", keys.SWEEP_TURN, 1.0, run_sweep),
                    Duty("batch poll", keys.BATCH_POLL_TURN, 2.0, run_batch_poll))
    running.stop(wait_s=STOP_WAIT_S)  # at the worker's warm shutdown

Before, beat sent a task per duty every interval. Each such task, alone on the queue, paid beat's
scheduler tick, a publish, a receive, its events and its ack (bench/hotpath.py step 0: ~12 ms
of CPU a second on an idle control worker for the sweep, ~7-8 for the batch ticks), for work
that is one or two Redis round trips when nothing is due. The deadlines also waited on the one
beat process, and on the control queue's backlog. And beat is a singleton that must run exactly
once: with it gone, any live control worker runs each duty, on time.

The duties stay tasks too (`panel.sweep`, `panel.batch_flush`, `panel.batch_poll`): a beat of an
earlier release still sends them during a rolling upgrade, and an operator can send one. Each is
safe to run twice at once, which a turn that expires under a slow run also allows: a panel is
decided once (a Lua step) and concluded under its lease; a flush claims its lines atomically
(workers/batch/claim.lua); a poll takes a lock per open batch and lands each line once.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("panel.duties")
TURN_SHARE = 0.8  # the turn lasts this share of the interval: another worker's tick a little early still waits
WHO = f"{socket.gethostname()}:{os.getpid()}"
STOP_WAIT_S = 30.0  # a warm shutdown waits this long for a duty's run (a flush's upload) to end


@dataclass(frozen=True)
class Duty:
    """Something the fleet does once per `interval_s`, whichever control worker takes the turn."""

    name: str  # in the thread's name and the log
    turn_key: str  # producer/keys.py: a string whose TTL is the turn
    interval_s: float
    run: Callable[[], object]


def take_turn(r: Any, duty: Duty) -> bool:
    return bool(r.set(duty.turn_key, WHO, nx=True, px=max(1, int(duty.interval_s * 1000 * TURN_SHARE))))


@dataclass
class Running:
    """The threads `start` started; `stop` ends them."""

    stopping: threading.Event
    threads: list[threading.Thread]

    def stop(self, wait_s: float = 0.0) -> None:
        """No more turns; wait up to `wait_s` for a run in progress to end. A flush cut off mid-upload
        leaves its lines in a claim that waits PANEL_BATCH_CLAIM_STALE_S (600 s) to be sent again."""
        self.stopping.set()
        end = time.monotonic() + wait_s
        for t in self.threads:
            t.join(max(0.0, end - time.monotonic()))


def start(r: Any, *duties: Duty) -> Running:
    """Run each duty every `interval_s` in this process's turns, each from a thread of its own."""
    stopping = threading.Event()
    threads = [threading.Thread(target=_loop, args=(r, d, stopping), name=f"panel-{d.name.replace(' ', '-')}",
                                daemon=True) for d in duties]  # fmt: skip
    for t in threads:
        t.start()
    return Running(stopping, threads)


def _loop(r: Any, duty: Duty, stop: threading.Event) -> None:
    failing = False
    while not stop.wait(duty.interval_s):
        try:
            if take_turn(r, duty):
                duty.run()
            failing = False
        except Exception as e:  # the next tick tries again; logged once per failing spell
            if not failing:
                log.warning("%s failed (%s: %s); retrying every %.1f s", duty.name, type(e).__name__, e, duty.interval_s)
            failing = True


def consumes_control(app: Any) -> bool:
    """Whether this worker takes the `control` queue (`-Q`; no `-Q` takes every queue)."""
    chosen = app.amqp.queues.consume_from
    return chosen is None or "control" in chosen
