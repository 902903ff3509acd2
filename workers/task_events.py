"""Task events in batches: one PUBLISH per ~100 ms per worker process instead of one per event.

Every task sends `task-received` and `task-succeeded` (Flower lists and settles tasks from them),
and a deciding task one `task-panel-decided` (workers/metrics.py). Celery 5.7 buffers the `task`
group into one `task.multi` message when the consumer has an event loop (`Events.start` in
`celery/worker/consumer/events.py`: `buffer_group=['task'] if c.hub`), and our threads-pool
workers do have one on Redis (`WorkController.should_use_eventloop`). But each buffered event asks
the loop for a flush on its next turn (`Consumer.on_send_event_buffered` -> `hub.call_soon`), and
with prefetch off the loop turns once per message: MONITOR showed 2.83 `task.multi` PUBLISHes per
member call for 2.86 events, i.e. a batch of one (a Redis round trip and kombu's message CPU each,
on the member's hot path).

This consumer step makes the batches real: a send no longer asks for a flush on the loop's next
turn; the first event after a flush arms the worker's timer, which flushes FLUSH_INTERVAL_S later
(on the loop's thread with an event loop, on the timer thread without one, where it also turns the
`task` group's buffering on) with every event sent meanwhile (workers/ticking.py: an idle worker
is never woken), and the sending thread flushes at once when BUFFER_LIMIT events wait (Celery's
own check in `EventDispatcher.send`). Celery's
EventReceiver (what Flower and any monitor use) takes a list body as that many events, in order
(`celery/events/receiver.py` `_receive`). Worker heartbeats (group `worker`) stay unbuffered.

Thread safety is Celery's: task threads append to the group's list (atomic under the GIL; the list
exists before the first send, see `buffer_task_events`), and `flush` publishes a copy under the
dispatcher's mutex and then deletes only what it published, so an event appended during the socket
write waits for the next flush (celery#10434, fixed in 5.7.0 as installed). A failed publish keeps
the batch in the dispatcher's outbound buffer and the next flush sends it again.

Flushed before the dispatcher closes: on the consumer's stop and shutdown (this step runs before
Celery's Events step closes the dispatcher), and when a broker reconnect replaces the dispatcher
the old one's waiting events move to the new one (Celery carries over only its failed publishes).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any

from celery.events import EventDispatcher

from workers.ticking import TickingStep

log = logging.getLogger("panel.task_events")

GROUP = "task"
FLUSH_INTERVAL_S = 0.1  # how late Flower may learn of a task; one PUBLISH per interval at most
BUFFER_LIMIT = 64  # events waiting before the sending thread flushes without the timer

_current: tuple[int, EventDispatcher] | None = None  # (pid, dispatcher): never a forked child's


def dispatcher() -> EventDispatcher | None:
    """This worker process's buffering dispatcher, for a task's custom `task-...` events; None
    outside a worker (or before its consumer started)."""
    if _current is None or _current[0] != os.getpid():
        return None
    return _current[1]


def waiting(d: EventDispatcher) -> list[Any]:
    """The task events `d` holds for its next flush (the list `send` appends to)."""
    buf: list[Any] = d._group_buffer[GROUP]
    return buf


def buffer_task_events(d: EventDispatcher, carried: EventDispatcher | None = None,
                       on_buffered: Callable[[], None] | None = None) -> None:
    """Make `d` buffer the task group; move what `carried` (a replaced dispatcher) still holds.
    `on_buffered` runs after each buffered send (arms the flush; None: nothing does)."""
    d.buffer_limit = BUFFER_LIMIT
    d.on_send_buffered = on_buffered  # not a flush per event on the loop's next turn
    with d.mutex:
        buf = waiting(d)  # created here, once: a first send from two threads never races to create it
        if carried is not None and carried is not d:
            old = waiting(carried)
            buf[:0] = old[:]
            del old[:]
    d.buffer_group = frozenset({GROUP})


def pending(d: EventDispatcher) -> bool:
    """Events waiting for a flush: buffered, or kept from a failed publish."""
    return bool(waiting(d)) or bool(d._outbound_buffer)


def flush(d: EventDispatcher) -> None:
    try:
        d.flush()
    except Exception as e:  # a broker blip: the batch waits in the outbound buffer for the next tick
        log.warning("could not publish %d buffered task events: %s", len(waiting(d)), type(e).__name__)


class BufferedTaskEvents(TickingStep):
    """Consumer step: a worker process's task events in one PUBLISH per FLUSH_INTERVAL_S at most,
    none while no event is sent."""

    requires = ("celery.worker.consumer.events:Events",)

    def __init__(self, c: Any, **kwargs: Any) -> None:
        super().__init__(c, **kwargs)
        self.dispatcher: EventDispatcher | None = None

    def start(self, c: Any) -> None:
        global _current
        d: EventDispatcher | None = c.event_dispatcher
        if d is None or not d.enabled:
            return
        buffer_task_events(d, carried=self.dispatcher, on_buffered=self.poke)
        self.dispatcher = d
        _current = (os.getpid(), d)
        self.lazily(c, FLUSH_INTERVAL_S, lambda: flush(d), lambda: pending(d))

    def stop(self, c: Any) -> None:
        self.cancel()
        if self.dispatcher is not None:
            flush(self.dispatcher)
