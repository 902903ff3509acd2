"""A task's ack rides in the next delivery's MULTI instead of a round trip of its own.

kombu's Redis transport keeps, for every message a consumer takes with acks (acks_late here), a
copy in the `unacked` hash with its delivery time in the `unacked_index` sorted set; that copy is
what the visibility-timeout sweep puts back on the queue when a worker died mid-task. Each
delivery writes it (`QoS.append`: MULTI ZADD HSET EXEC) and each ack removes it (`QoS.ack`: MULTI
ZREM HDEL EXEC): two round trips per task, both on the worker's event-loop thread (Celery hands
acks to the loop with `call_soon`).

Here an ack is recorded in the channel and its ZREM+HDEL go out in the next delivery's MULTI,
or, when no delivery comes first, from the worker's timer within ACK_DELAY_S (armed by the first
held ack, so an idle worker's loop is not woken: workers/ticking.py): one round trip per
task instead of two once deliveries are closer together than that. The local bookkeeping (prefetch
credit, `_delivered`) is updated at once, as before. Before a channel restores its unacked messages
at close (a warm shutdown, a reconnect), it sends the acks it holds.

What changes for the guarantees: a task's ack reaches Redis up to ACK_DELAY_S later. A worker
that dies in that window leaves the finished task's copy in `unacked`, and the sweep redelivers
it after the visibility timeout, exactly as when a worker dies between the task's body and its
ack today (the window is ms wider); the chord's once-only vote and payment make the second run a
no-op (tests/reliability). A failed flush (a Redis blip) puts the acks back for the next try.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from time import time
from typing import Any

from kombu.transport import redis as kombu_redis
from kombu.transport import virtual
from kombu.utils.json import dumps

from workers.ticking import TickingStep

log = logging.getLogger("panel.deferred_ack")

ACK_DELAY_S = 0.05  # longest an ack waits for a delivery to ride with


class DeferredAckQoS(kombu_redis.QoS):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._acks: list[str] = []
        self._acks_lock = threading.Lock()
        self.on_held: Callable[[], None] | None = None  # runs after an ack is held (arms the flush)

    def _take_acks(self) -> list[str]:
        with self._acks_lock:
            tags, self._acks = self._acks, []
        return tags

    def _give_back(self, tags: list[str]) -> None:
        with self._acks_lock:
            self._acks[:0] = tags

    def append(self, message: Any, delivery_tag: str) -> None:
        """kombu's unacked record of a new delivery, with the held acks in the same MULTI."""
        delivery = message.delivery_info
        exchange, routing_key = delivery["exchange"], delivery["routing_key"]
        with self._with_held_acks() as pipe:
            pipe.zadd(self.unacked_index_key, {delivery_tag: time()})
            pipe.hset(self.unacked_key, delivery_tag, dumps([message._raw, exchange, routing_key]))
        virtual.QoS.append(self, message, delivery_tag)

    def ack(self, delivery_tag: str) -> None:
        with self._acks_lock:
            self._acks.append(delivery_tag)
        virtual.QoS.ack(self, delivery_tag)
        if self.on_held is not None:
            self.on_held()

    def holding(self) -> bool:
        return bool(self._acks)

    def flush_acks(self) -> None:
        """Send the held acks now (one MULTI), if any."""
        if self._acks:
            with self._with_held_acks():
                pass

    @contextmanager
    def _with_held_acks(self) -> Iterator[Any]:
        """A MULTI carrying the held acks' ZREM+HDEL, executed after the caller's commands; when it
        fails the acks are held again for the next try."""
        tags = self._take_acks()
        try:
            with self.pipe_or_acquire() as pipe:
                yield pipe
                for tag in tags:
                    self._remove_from_indices(tag, pipe)
                pipe.execute()
        except BaseException:
            self._give_back(tags)
            raise

    def restore_unacked_once(self, stderr: Any = None) -> Any:
        try:
            self.flush_acks()
        except Exception as e:  # the broker is gone: these come back after the visibility timeout
            log.warning("could not send %d held acks at close: %s", len(self._acks), type(e).__name__)
        return super().restore_unacked_once(stderr)


def install() -> None:
    """Idempotent; in worker processes only (the step below installs it)."""
    kombu_redis.Channel.QoS = DeferredAckQoS


def held_acks_qos(c: Any) -> DeferredAckQoS | None:
    channel = getattr(getattr(c, "task_consumer", None), "channel", None)
    qos = getattr(channel, "qos", None) if channel is not None else None
    return qos if isinstance(qos, DeferredAckQoS) else None


def flush(c: Any) -> None:
    qos = held_acks_qos(c)
    if qos is None:
        return
    try:
        qos.flush_acks()
    except Exception as e:  # kept for the next tick; the consumer reconnects on its own
        log.warning("could not send held acks: %s", type(e).__name__)


class DeferredAcks(TickingStep):
    """Consumer step: the task consumer's acks ride with the next delivery, or leave within
    ACK_DELAY_S from the worker's timer (on the event loop's thread, where acks run)."""

    requires = ("celery.worker.consumer.tasks:Tasks",)

    def __init__(self, c: Any, **kwargs: Any) -> None:
        super().__init__(c, **kwargs)
        install()  # before the consumer's channel builds its QoS

    def start(self, c: Any) -> None:
        qos = held_acks_qos(c)
        if qos is None:
            return
        qos.on_held = self.poke
        self.lazily(c, ACK_DELAY_S, lambda: flush(c), qos.holding)

    def stop(self, c: Any) -> None:
        self.cancel()
        flush(c)
