"""Is this worker's consumer fetching? The heartbeat file is touched only when it is, so the
liveness probe (`deploy/docker/panel-heartbeat-ok`) fails for a worker that is alive but idle.

A timer that merely ticks proves nothing: after kombu's reconnect path raised
(`AttributeError: 'NoneType' object has no attribute 'hostname'` in `_connparams`, via
`on_connection_error_after_connected -> close -> restore_unacked_once`, seen in a Redis-restart
drill) the event loop kept running, the old heartbeat kept the file fresh, and the worker never
took another task. So the check reads the consumer itself:

- its blueprint is running and it holds a broker connection and a task channel consuming queues;
- that channel sent a fetch (BRPOP) within `stale_s`, or it may not fetch because every pool
  slot is taken (a busy worker is alive: kombu only fetches when a slot is free).

A consumer that stays unable to fetch for `exit_after_s` makes the worker leave (warm shutdown,
then a hard exit if that hangs), so its supervisor starts a fresh one: its unacked messages come
back through the visibility timeout, and running a member twice is harmless (once-only vote,
recorded answers reused).
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

RUN = 1  # celery.bootsteps.RUN


def fetch_problem(consumer: Any, now: float, stale_s: float, channel_since: float | None = None) -> str | None:
    """Why `consumer` cannot take work right now, or None when it fetches (or is full).
    `channel_since`: when this task channel was first seen (a fresh channel after a reconnect
    has not fetched yet and gets `stale_s` to start)."""
    if consumer is None or getattr(consumer.blueprint, "state", None) != RUN:
        return "consumer not running (reconnecting or stopped)"
    if consumer.connection is None:
        return "no broker connection"
    task_consumer = getattr(consumer, "task_consumer", None)
    channel = getattr(task_consumer, "channel", None)
    if channel is None or getattr(channel, "closed", False):
        return "no task channel"
    if not getattr(channel, "active_queues", True):
        return "consuming no queue"
    sent = getattr(channel, "_brpop_sent_at", None) or channel_since  # kombu's Redis channel: last BRPOP sent
    if sent is not None and now - sent <= stale_s:
        return None
    try:
        if not channel.qos.can_consume():
            return None  # every slot busy: it fetches again when one frees
    except Exception as e:  # a broken channel is exactly what this looks for
        return f"channel unusable: {type(e).__name__}: {e}"
    waited = "never" if sent is None else f"{now - sent:.0f} s ago"
    return f"free to take work but last fetched {waited}"


@dataclass
class Liveness:
    """Touches the heartbeat file while the consumer fetches; leaves the process when it has not
    for `exit_after_s` (0: never leave, only stop touching)."""

    path: str
    stale_s: float = 30.0
    exit_after_s: float = 90.0
    hard_exit_s: float = 30.0
    clock: Any = time.monotonic
    _bad_since: float | None = field(default=None, init=False)
    _leaving: bool = field(default=False, init=False)
    _channel: tuple[int, float] = field(default=(0, 0.0), init=False)  # (id, first seen) of the task channel

    def tick(self, consumer: Any) -> str | None:
        now = self.clock()
        channel = getattr(getattr(consumer, "task_consumer", None), "channel", None)
        if channel is not None and self._channel[0] != id(channel):
            self._channel = (id(channel), now)
        problem = fetch_problem(consumer, now, self.stale_s, self._channel[1] if channel is not None else None)
        if problem is None:
            if self._bad_since is not None:
                log.info("worker consumer fetching again after %.0f s (heartbeat resumed)", now - self._bad_since)
            self._bad_since = None
            with open(self.path, "a"):
                os.utime(self.path)
            return None
        if self._bad_since is None:
            self._bad_since = now
            log.warning("worker consumer cannot take work: %s (heartbeat paused)", problem)
        if self.exit_after_s and now - self._bad_since >= self.exit_after_s and not self._leaving:
            self._leave(problem, now - self._bad_since)
        return problem

    def _leave(self, problem: str, for_s: float) -> None:
        self._leaving = True
        log.critical("worker consumer unable to take work for %.0f s (%s): exiting so the supervisor "
                     "restarts it; unacked messages return after the visibility timeout", for_s, problem)  # fmt: skip
        hard = threading.Timer(self.hard_exit_s, os._exit, args=(70,))  # EX_SOFTWARE, if the warm stop hangs
        hard.daemon = True
        hard.start()
        os.kill(os.getpid(), signal.SIGTERM)
