"""The kombu reconnect-crash patch, on kombu's real Redis channel: a channel whose connection was
collected (what Celery's consumer does on a broker error) raises a connection error, which kombu
and Celery handle, instead of kombu 5.7.0's AttributeError, which stops the worker. The crash in
a real worker is reproduced by the Redis-stop drill (tests/reliability/test_redis_drill.py)."""

from __future__ import annotations

import pytest
import redis
from kombu import Connection

from workers import broker_reconnect


def test_installed_by_the_app() -> None:
    from kombu.transport import redis as kombu_redis

    import workers.app  # noqa: F401

    assert kombu_redis.Channel._connparams is broker_reconnect._connparams


def test_a_collected_connections_channel_raises_a_connection_error_not_attribute_error(redis_url: str) -> None:
    broker_reconnect.install()
    conn = Connection(redis_url)
    channel = conn.channel()
    channel.client.ping()
    conn.collect()  # what the consumer does before closing a broken connection: transport.client = None
    with pytest.raises(redis.exceptions.ConnectionError, match="already closed"):
        channel._connparams()
    assert isinstance(broker_reconnect.BrokerConnectionClosed("x"), tuple(channel.connection_errors))  # type: ignore[arg-type]
