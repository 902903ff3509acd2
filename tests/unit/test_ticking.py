"""The flush timer armed on demand (workers/ticking.py), on kombu's real event-loop hub and on
Celery's threaded timer: an idle step puts nothing on the timer, items buffered from other
threads arm one tick that takes them all, and what a tick leaves behind arms the next."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

from celery.utils.timer2 import Timer as ThreadedTimer
from kombu.asynchronous import Hub
from kombu.asynchronous.timer import Timer

from workers.ticking import TickingStep


def until(cond: Callable[[], bool], turn: Callable[[], None] = lambda: time.sleep(0.01), timeout: float = 20.0) -> None:
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, "condition not met within the deadline"
        turn()


class Buffer:
    def __init__(self) -> None:
        self.items: list[int] = []
        self.ticks: list[list[int]] = []
        self.fail_next = False

    def tick(self) -> None:
        if self.fail_next:
            self.fail_next = False
            raise ConnectionError("broker blip")
        self.ticks.append(self.items[:])
        del self.items[:]

    def pending(self) -> bool:
        return bool(self.items)


def on_hub(timer: Timer | None = None) -> tuple[Any, Hub, Callable[[], None]]:
    hub = Hub(timer=timer or Timer())
    # the loop polls only with a socket registered: a socketpair end that never gets data
    a, b = socket.socketpair()
    hub.add_reader(a, lambda *_: None)
    hub.on_close.add(lambda *_: (a.close(), b.close()))
    c = SimpleNamespace(hub=hub, timer=hub.timer)
    return c, hub, hub.run_once


def planned(c: Any, seconds: float) -> tuple[TickingStep, Buffer]:
    """A step whose ticks flush a Buffer, armed on demand every `seconds`."""
    buf = Buffer()
    step = TickingStep(c)
    step.lazily(c, seconds, buf.tick, buf.pending)
    return step, buf


def test_an_idle_step_puts_nothing_on_the_loops_timer() -> None:
    c, hub, turn = on_hub()
    step, buf = planned(c, 0.05)
    for _ in range(2):
        turn()
    assert list(hub.timer.queue) == [], "nothing buffered: no timer entry, the loop sleeps"
    assert buf.ticks == []


def test_items_from_other_threads_arm_one_tick_that_takes_them_all() -> None:
    c, hub, turn = on_hub()
    step, buf = planned(c, 0.05)

    def send(i: int) -> None:
        buf.items.append(i)
        step.poke()

    threads = [threading.Thread(target=send, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    turn()  # the poke's call_soon runs on the loop's thread and arms the timer once
    assert len(hub.timer.queue) == 1
    until(lambda: bool(buf.ticks), turn)
    assert sorted(buf.ticks[0]) == list(range(8)) and len(buf.ticks) == 1
    turn()
    assert list(hub.timer.queue) == [], "nothing left: not re-armed"


def test_what_a_failed_tick_leaves_arms_the_next() -> None:
    c, hub, turn = on_hub()
    step, buf = planned(c, 0.02)
    buf.items.append(1)
    buf.fail_next = True
    step.poke()
    until(lambda: bool(buf.ticks), turn)  # the first tick raised (the hub logs it); the second sent
    assert buf.ticks == [[1]]


def test_a_cancelled_step_is_not_armed_again() -> None:
    c, hub, turn = on_hub()
    step, buf = planned(c, 0.02)
    buf.items.append(1)
    step.poke()
    turn()
    step.cancel()
    step.poke()
    for _ in range(3):  # an armed step would tick on the first turn past its 0.02 s
        turn()
    assert buf.ticks == [] and buf.items == [1], "cancelled: the caller flushes what is left"


def test_on_celerys_threaded_timer_without_a_loop() -> None:
    timer = ThreadedTimer()
    try:
        c = SimpleNamespace(hub=None, timer=timer)
        step, buf = planned(c, 0.02)
        buf.items.extend([1, 2])
        step.poke()
        until(lambda: bool(buf.ticks))
        assert buf.ticks == [[1, 2]]
    finally:
        timer.stop()


def test_an_item_buffered_by_a_callback_the_loop_runs_is_flushed_within_the_period() -> None:
    """Celery hands an ack to the loop with `hub.call_soon` (Consumer.call_soon_ack), so the QoS
    holds it, and pokes, on the loop's own thread while the loop runs its ready callbacks. kombu's
    call_soon from the loop's thread sends no wakeup, and the ready set was already taken for this
    turn: an `_arm` queued that way waits for whatever wakes the poll next (a BRPOP timeout, the
    worker's 2 s heartbeat timer, up to the timer's 10 s max_interval), not `seconds`."""
    c, hub, _ = on_hub(Timer(max_interval=10.0))  # Celery's event-loop timer (celery/worker/components.py)
    hub.call_repeatedly(2.0, lambda: None)  # the consumer's heartbeat (celery/worker/heartbeat.py)
    step, buf = planned(c, 0.05)
    loop = threading.Thread(target=hub.run_forever, daemon=True)
    loop.start()
    try:
        time.sleep(0.3)  # the loop is polling

        def ack() -> None:  # on the loop's thread, as QoS.ack -> on_held
            buf.items.append(1)
            step.poke()

        t0 = time.monotonic()
        hub.call_soon(ack)  # from a task thread: wakes the loop
        until(lambda: bool(buf.ticks), timeout=5.0)
        assert time.monotonic() - t0 < 0.5, "flushed within the period, not at the loop's next wakeup"
    finally:
        hub.stop()
        loop.join(5)
        hub.close()
