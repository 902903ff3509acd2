"""Deferred acks (workers/deferred_ack.py) on kombu's real Redis channel against a real
redis-server: an ack leaves the message's unacked record in Redis until the next delivery's MULTI
or a flush carries it, every record is removed in the end, a channel closing sends the acks it
holds before it restores the rest, and a failed flush keeps them for the next try."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import redis
from kombu import Connection, Exchange, Queue
from kombu.message import Message
from kombu.transport import redis as kombu_redis

from workers import deferred_ack

QUEUE = Queue("pf-test-deferred-ack", Exchange("pf-test-deferred-ack"), routing_key="k")


@pytest.fixture
def conn(redis_client: redis.Redis, redis_url: str) -> Iterator[Connection]:
    saved = kombu_redis.Channel.QoS
    deferred_ack.install()
    c = Connection(redis_url)
    yield c
    c.release()
    kombu_redis.Channel.QoS = saved


def publish(conn: Connection, n: int) -> None:
    with conn.Producer() as producer:
        for i in range(n):
            producer.publish({"i": i}, exchange=QUEUE.exchange, routing_key="k", declare=[QUEUE])


def take(conn: Connection, channel: Any, n: int) -> list[Message]:
    got: list[Message] = []
    with conn.Consumer(QUEUE, channel=channel, callbacks=[lambda body, m: got.append(m)]):
        while len(got) < n:
            conn.drain_events(timeout=5)
    return got


def unacked(r: redis.Redis) -> set[str]:
    return {k.decode() for k in r.hkeys("unacked")}


def test_an_ack_rides_in_the_next_deliverys_multi(conn: Connection, redis_client: redis.Redis) -> None:
    channel = conn.channel()
    publish(conn, 1)
    (first,) = take(conn, channel, 1)
    assert isinstance(channel.qos, deferred_ack.DeferredAckQoS)
    first.ack()
    assert unacked(redis_client) == {first.delivery_tag}, "held, not yet sent"
    assert channel.qos.can_consume(), "the local bookkeeping is released at once"
    publish(conn, 1)
    (second,) = take(conn, channel, 1)
    assert unacked(redis_client) == {second.delivery_tag}, "the delivery's MULTI removed the held ack's record"
    assert redis_client.zrange("unacked_index", 0, -1) == [second.delivery_tag.encode()]
    second.ack()
    channel.qos.flush_acks()  # what the worker's timer does within ACK_DELAY_S
    assert unacked(redis_client) == set() and redis_client.zcard("unacked_index") == 0


def test_closing_a_channel_sends_its_held_acks_and_restores_only_the_rest(conn: Connection, redis_client: redis.Redis) -> None:
    channel = conn.channel()
    publish(conn, 3)
    first, second, _third = take(conn, channel, 3)
    first.ack()
    second.ack()
    channel.close()  # kombu restores what was delivered and never acked: the third message
    assert unacked(redis_client) == set()
    assert redis_client.llen(QUEUE.name) == 1, "only the unacked message went back on the queue"


def test_a_failed_flush_keeps_the_acks_for_the_next_try(conn: Connection, redis_client: redis.Redis,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    channel = conn.channel()
    publish(conn, 1)
    (m,) = take(conn, channel, 1)
    m.ack()
    qos = channel.qos

    def broken(pipe: Any = None, client: Any = None) -> Any:
        raise redis.exceptions.ConnectionError("Redis went away")

    monkeypatch.setattr(qos, "pipe_or_acquire", broken)
    with pytest.raises(redis.exceptions.ConnectionError):
        qos.flush_acks()
    monkeypatch.undo()
    assert unacked(redis_client) == {m.delivery_tag}
    qos.flush_acks()
    assert unacked(redis_client) == set()
