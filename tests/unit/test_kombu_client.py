"""The kombu client patch (workers/kombu_client.py) on kombu's real Redis channel against a real
redis-server: one redis-py client per channel for its synchronous commands (kombu 5.7.0 builds a
new one per command), a new one when the channel's pool changes, and a closed connection still
raising the transport's connection error. Acks, unacked records and publishes keep working
through the shared client, from several threads at once."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
import redis
from kombu import Connection, Exchange, Queue
from kombu.message import Message

from workers import broker_reconnect, kombu_client


@pytest.fixture
def conn(redis_url: str) -> Iterator[Connection]:
    kombu_client.install()
    c = Connection(redis_url)
    yield c
    c.release()


def test_installed_by_the_app() -> None:
    from kombu.transport import redis as kombu_redis

    import workers.app  # noqa: F401

    assert kombu_redis.Channel.conn_or_acquire is kombu_client.conn_or_acquire


def test_a_channel_reuses_one_client_until_its_pool_changes(conn: Connection) -> None:
    channel = conn.channel()
    with channel.conn_or_acquire() as a, channel.conn_or_acquire() as b:
        assert a is b and a.connection_pool is channel.pool
    given = redis.Redis(connection_pool=channel.pool)
    with channel.conn_or_acquire(given) as c:
        assert c is given  # a caller's own client is used as kombu uses it
    channel._pool = None  # what closing the channel does; the next use builds a new pool
    with channel.conn_or_acquire() as d:
        assert d is not a and d.connection_pool is channel.pool
    kombu_client.uninstall()
    try:
        with channel.conn_or_acquire() as e, channel.conn_or_acquire() as f:
            assert e is not f  # kombu's own: a client per command
    finally:
        kombu_client.install()


def test_a_collected_connection_still_raises_a_connection_error(conn: Connection) -> None:
    broker_reconnect.install()
    channel = conn.channel()
    with channel.conn_or_acquire() as client:
        client.ping()
    conn.collect()
    channel._pool = None
    with pytest.raises(redis.exceptions.ConnectionError, match="already closed"):
        with channel.conn_or_acquire():
            pass


def test_publish_unacked_record_and_ack_through_the_shared_client_from_many_threads(
    redis_client: redis.Redis, conn: Connection
) -> None:
    queue = Queue("pf-test-kombu-client", Exchange("pf-test-kombu-client"), routing_key="k")
    n, threads = 200, 8  # kombu's pool holds 10 connections (the fleet sets its own max_connections)
    queue(conn.default_channel).declare()  # once: a publish racing its own declare can find no binding yet
    with conn.Producer() as producer, ThreadPoolExecutor(threads) as pool:
        list(pool.map(lambda i: producer.publish({"i": i}, exchange=queue.exchange, routing_key="k"), range(n)))
    got: list[int] = []
    messages: list[Message] = []
    with conn.Consumer(queue, callbacks=[lambda body, m: (got.append(body["i"]), messages.append(m))]):
        while len(got) < n:
            conn.drain_events(timeout=5)
    assert sorted(got) == list(range(n))
    r = redis_client
    assert r.hlen("unacked") == n  # each delivery's record, written through the shared client
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(lambda m: m.ack(), messages))
    assert r.hlen("unacked") == 0 and r.zcard("unacked_index") == 0
