"""A consumer step that runs a flush from the worker's timer (workers/task_events.py,
workers/deferred_ack.py), armed only when there is something to flush: started on the consumer's
start, cancelled and run once more on its stop and shutdown.

A repeating timer would wake the worker's event loop every period with nothing to do: with acks
every 50 ms and events every 100 ms that was 30 loop turns a second per idle worker process
(each turn re-registers kombu's BRPOP sockets), ~7 ms of CPU a second, six times what a bare
Celery worker idles at. Here the first item buffered after a flush arms one timer entry; the
flush runs `seconds` later on the loop's thread and takes everything buffered meanwhile, so a
flush is never later than `seconds` after the item that armed it (as with the repeating timer)
and an idle worker is never woken.

Arming is thread-safe: the buffering side (a task thread, or the loop's own thread) calls `poke`;
with an event loop, from another thread the entry is added on the loop's thread through
`hub.call_soon` (the loop works out its poll timeout from the timer queue, and kombu's timer heap
is not for other threads), and on the loop's own thread directly: there kombu's call_soon sends
no wakeup, and a callback queued while the loop runs its ready callbacks (where Celery's acks run)
or its timers would wait for the poll's next wakeup, up to seconds. Without a loop the worker's
threaded timer takes it directly. After its tick the step
asks `pending()` and arms again when something is left (a failed publish kept for the next try,
or items buffered while the tick ran)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from celery import bootsteps


class TickingStep(bootsteps.StartStopStep):
    def __init__(self, c: Any, **kwargs: Any) -> None:
        super().__init__(c, **kwargs)
        self.tref: Any = None
        self._lock = threading.Lock()
        self._armed = False
        self._plan: tuple[Any, float, Callable[[], None], Callable[[], bool]] | None = None

    def lazily(self, c: Any, seconds: float, tick: Callable[[], None], pending: Callable[[], bool]) -> None:
        """From now on, `poke()` arms `tick()` to run `seconds` later on the worker's timer, once
        per batch; `pending()` says whether anything is left after a tick (replaces an earlier plan)."""
        self.cancel()
        with self._lock:
            self._plan = (c, seconds, tick, pending)
            self._armed = False
        if pending():
            self.poke()

    def poke(self) -> None:
        """Something was buffered: make sure a tick is on the timer. Cheap when one already is."""
        with self._lock:
            if self._armed or self._plan is None:
                return
            self._armed = True
            c = self._plan[0]
        hub = getattr(c, "hub", None)
        if hub is not None and threading.get_ident() != getattr(hub, "_loop_thread", None):
            hub.call_soon(self._arm)  # wakes the loop (kombu 5.7)
        else:  # the loop's own thread (its call_soon would wait for the next wakeup), or no loop
            self._arm()

    def _arm(self) -> None:
        with self._lock:
            plan = self._plan
            if plan is None:
                self._armed = False
                return
        c, seconds, _, _ = plan
        self.tref = c.timer.call_after(seconds, self._fire, priority=10)

    def _fire(self) -> None:
        with self._lock:
            plan, self._armed, self.tref = self._plan, False, None
        if plan is None:
            return
        _, _, tick, pending = plan
        try:
            tick()
        finally:
            if pending():
                self.poke()

    def cancel(self) -> None:
        """No more ticks until `lazily` again (what is buffered stays; the caller flushes it)."""
        with self._lock:
            self._plan, self._armed, tref, self.tref = None, False, self.tref, None
        if tref is not None:
            tref.cancel()

    def shutdown(self, c: Any) -> None:
        self.stop(c)
