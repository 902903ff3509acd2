"""One Redis client object per kombu channel, instead of a new one for every broker command.

kombu 5.7.0's Redis transport gets its client for every synchronous command from
`Channel.conn_or_acquire()`, which builds a new `redis.Redis` each time (`_create_client`): a
message's unacked record (`QoS.append`), its ack (`QoS.ack`), every task publish (`_put`) and every
event publish (`_put_fanout`). The client is only a front for the channel's connection pool, but
its constructor builds redis-py's table of ~200 response callbacks: ~60 us of CPU here, four to
five times per member call (a py-spy `--gil` profile of a tier process put it at 14% of kombu's and
Celery's share, the largest single item).

The patch keeps the client per channel and builds a new one when the channel's pool changes.
redis-py's `Redis` is safe to share between threads (each command takes a connection from the
pool; a pipeline is a new object per use), which is how kombu's own long-lived `Channel.client`
(BRPOP, publish) is used already. The channel's `pool` is read first, as before, so a closed
connection still raises the transport's connection error (workers/broker_reconnect.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from kombu.transport import redis as kombu_redis

_original = kombu_redis.Channel.conn_or_acquire
_CACHED = "_panel_sync_client"


@contextmanager
def conn_or_acquire(self: Any, client: Any = None) -> Iterator[Any]:
    if client:
        yield client
        return
    pool = self.pool  # raises as kombu does when the connection is gone
    cached = self.__dict__.get(_CACHED)
    if cached is None or cached.connection_pool is not pool:
        cached = self._create_client()
        self.__dict__[_CACHED] = cached
    yield cached


def install() -> None:
    """Idempotent."""
    kombu_redis.Channel.conn_or_acquire = conn_or_acquire  # type: ignore[method-assign]


def uninstall() -> None:
    """kombu's own (a new client per command): the bare-task benchmark runs plain Celery with it."""
    kombu_redis.Channel.conn_or_acquire = _original  # type: ignore[method-assign]
