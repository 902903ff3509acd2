"""A consumer step that runs a flush from the worker's timer (workers/task_events.py,
workers/deferred_ack.py): started on the consumer's start, cancelled and run once more on its stop
and shutdown."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from celery import bootsteps


class TickingStep(bootsteps.StartStopStep):
    def __init__(self, c: Any, **kwargs: Any) -> None:
        super().__init__(c, **kwargs)
        self.tref: Any = None

    def every(self, c: Any, seconds: float, tick: Callable[..., None], *args: Any) -> None:
        """Run `tick(*args)` every `seconds` from the worker's timer (replacing an earlier timer)."""
        self.cancel()
        self.tref = c.timer.call_repeatedly(seconds, tick, args, priority=10)

    def cancel(self) -> None:
        if self.tref is not None:
            self.tref.cancel()
            self.tref = None

    def shutdown(self, c: Any) -> None:
        self.stop(c)
