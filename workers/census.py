"""Which worker process ran which task: so a redelivered task can tell a worker that was lost
(its process died, maybe killed by a neighbour) from a live worker that gave its message back
(kombu restores unacked messages when its broker connection drops, or a long task outlives the
visibility timeout).

Nothing is written on a task's path: the task_prerun/postrun signals note task ids in memory
and one background thread per process writes them every FLUSH_S in one pipeline,

- `held(task id)` = this process's name (`done` appended once the task finished), and
- `census(process)` = the time of the flush: the process is alive while it keeps changing.

A redelivered task asks `verdict`: its holder alive (flushed within STALE_S, or flushes while
we wait), or the task finished there, means the message came back from a live worker; otherwise the holder was lost, and
the task is a suspect that runs alone (workers/quarantine.py). A holder that never flushed the
task (it died within FLUSH_S of the start) is lost too.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any, Literal

import redis
from celery.signals import task_postrun, task_prerun

from producer import keys

log = logging.getLogger("panel.census")
FLUSH_S = 0.5
STALE_S = 4 * FLUSH_S  # a live process flushes at least this often (its Redis reachable)
CONFIRM_S = STALE_S + 1.0  # how long a redelivered task waits for a stale holder to show it is alive
DONE_TTL_S = 120  # a finished task's holder stays known this long (acks lost in an outage come back within it)
PROCESS = f"{socket.gethostname()}:{os.getpid()}:{int(time.time())}"


class Census:
    """This process's task ids started and finished since the last flush."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._started: set[str] = set()
        self._finished: set[str] = set()
        self._running: dict[str, threading.Event] = {}  # set when that task ends here
        self._up_since: float | None = None  # monotonic time of the first flush since the last failure

    def started(self, task_id: str) -> None:
        with self._lock:
            self._started.add(task_id)
            self._running.setdefault(task_id, threading.Event())

    def finished(self, task_id: str) -> None:
        with self._lock:
            self._finished.add(task_id)
            ended = self._running.pop(task_id, None)
        if ended is not None:
            ended.set()

    def up_for(self) -> float:
        """How long this process's flushes have been succeeding without a break (0: failing, or none yet)."""
        since = self._up_since
        return 0.0 if since is None else time.monotonic() - since

    def running_here(self, task_id: str) -> threading.Event | None:
        """Set when the copy of `task_id` this process is running ends; None if it runs none."""
        with self._lock:
            return self._running.get(task_id)

    def flush(self, r: Any, held_ttl_s: int) -> int:
        """One pipeline; on a Redis error the ids are kept for the next flush (an outage must not
        hide a live holder: its restored messages are checked right after the broker is back)."""
        with self._lock:
            started, finished = self._started, self._finished
            self._started, self._finished = set(), set()
        pipe = r.pipeline(transaction=False)
        for task_id in started - finished:
            pipe.set(keys.task_holder(task_id), PROCESS, ex=held_ttl_s)
        for task_id in finished:
            pipe.set(keys.task_holder(task_id), f"{PROCESS} done", ex=DONE_TTL_S)
        pipe.set(keys.census(PROCESS), repr(time.time()), ex=held_ttl_s)
        try:
            pipe.execute()
        except redis.RedisError:
            self._up_since = None
            with self._lock:
                self._started |= started
                self._finished |= finished
            raise
        if self._up_since is None:
            self._up_since = time.monotonic()
        return len(started) + len(finished)


CENSUS = Census()


def _started(task_id: str | None = None, task: Any = None, **_: Any) -> None:
    """A redelivered task is noted by `attempt` after its verdict: noted now, a flush could name
    this process its holder before the verdict reads who held it last."""
    if task_id and getattr(task, "acks_late", False):  # only these come back after a lost worker
        if not (getattr(task.request, "delivery_info", None) or {}).get("redelivered"):
            CENSUS.started(task_id)


def _finished(task_id: str | None = None, task: Any = None, **_: Any) -> None:
    if task_id and getattr(task, "acks_late", False):
        CENSUS.finished(task_id)


@dataclass(frozen=True)
class Verdict:
    holder: str | None  # the process that last ran the task, if it flushed it
    # given_back: its holder is alive (or the task had finished): not lost mid-task
    kind: Literal["given_back", "lost"]


def verdict(r: Any, task_id: str, confirm_s: float = CONFIRM_S) -> Verdict:
    """Was the worker that last ran `task_id` lost? A stale or unknown holder is lost at once
    when this process's own flushes have gone through for STALE_S (Redis was up: a live holder
    would have flushed); else, just after an outage, it has `confirm_s` to show it is alive."""
    end = time.monotonic() + (0.0 if CENSUS.up_for() >= STALE_S else confirm_s)
    holder: str | None = None
    while True:
        raw = r.get(keys.task_holder(task_id))
        if raw is not None:
            holder, _, done = raw.decode().partition(" ")
            if done:
                return Verdict(holder, "given_back")
            seen = r.get(keys.census(holder))
            if seen is not None and time.time() - float(seen) < STALE_S:
                return Verdict(holder, "given_back")
        if time.monotonic() >= end:
            return Verdict(holder, "lost")
        time.sleep(FLUSH_S / 2)


def start(r: Any, held_ttl_s: int) -> threading.Event:
    """Note this process's acks_late tasks and flush them every FLUSH_S from a thread of its own
    (not on the task path, nor on the timer thread the heartbeat uses: in a Redis outage a flush
    may block for its socket timeout). Set the returned event to stop."""
    task_prerun.connect(_started, weak=False)
    task_postrun.connect(_finished, weak=False)
    stop = threading.Event()

    def loop() -> None:
        failing = False
        while not stop.wait(FLUSH_S):
            try:
                CENSUS.flush(r, held_ttl_s)
                failing = False
            except Exception as e:  # the next flush carries these ids; logged once per outage
                if not failing:
                    log.warning("census flush failed (%s); retrying every %.1f s", type(e).__name__, FLUSH_S)
                failing = True

    threading.Thread(target=loop, name="panel-census", daemon=True).start()
    return stop
