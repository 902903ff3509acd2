"""Survive kombu 5.7.0's crash while reconnecting to a Redis that restarted.

Celery's consumer, on a broker error, calls `connection.collect()` (which drops the transport's
`client`) and then `connection.close()`. Anything that afterwards needs a Redis client from the
old channel builds one from that dropped `client`, and raises AttributeError instead of a
connection error. Two paths were seen in the Redis-stop drill (tests/reliability/test_redis_drill.py):

    on_connection_error_after_connected -> Connection.close -> Channel.close
      -> QoS.restore_unacked_once -> ... -> Channel._connparams
    (a task finishing after the reconnect) Message.ack_log_error -> QoS.ack -> ... -> Channel._connparams

    AttributeError: 'NoneType' object has no attribute 'hostname'

Celery treats it as unrecoverable: the worker stops, or (seen in an earlier drill) stays up with
no consumer. kombu 5.7.0 is the newest release; celery/kombu#970 and #582 report the same family.
The patch makes `_connparams` on a closed transport raise the transport's own connection error,
which both paths already handle: the close goes on, the consumer reconnects, and a late ack is
logged and dropped; its message stays in Redis's unacked hash and comes back after the visibility
timeout (a redelivered member re-uses its recorded answer, paid once). Liveness
(workers/liveness.py) still catches a consumer that stops fetching for any other reason.
"""

from __future__ import annotations

import logging
from typing import Any

import redis
from kombu.transport import redis as kombu_redis

log = logging.getLogger(__name__)
_original = kombu_redis.Channel._connparams


class BrokerConnectionClosed(redis.exceptions.ConnectionError):
    """A Redis client was asked of a channel whose broker connection was already closed."""


def _connparams(self: Any, asynchronous: bool = False) -> Any:
    if self.connection is None or getattr(self.connection, "client", None) is None:
        raise BrokerConnectionClosed("broker connection already closed (kombu channel of a dropped connection)")
    return _original(self, asynchronous=asynchronous)  # type: ignore[no-untyped-call]


def install() -> None:
    """Idempotent."""
    kombu_redis.Channel._connparams = _connparams  # type: ignore[method-assign]
