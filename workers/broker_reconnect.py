"""Survive kombu 5.7.0's crash while reconnecting to a Redis that restarted.

Celery's consumer, on a broker error, calls `connection.collect()` (which drops the transport's
`client`) and then `connection.close()`, whose channel close restores unacknowledged messages
through a fresh Redis client built from that dropped `client`:

    on_connection_error_after_connected -> Connection.close -> _do_close_self -> Channel.close
      -> QoS.restore_unacked_once -> ... -> Channel._connparams
    AttributeError: 'NoneType' object has no attribute 'hostname'

Celery treats it as unrecoverable: the worker stops (or, seen in a drill, stays up without a
consumer). kombu 5.7.0 is the newest release (celery/kombu#970, #582 report the same family). The
close was of a connection already broken, and the messages it held stay in Redis's unacked hash,
which the visibility-timeout scan restores; so this patch lets that one AttributeError end the
close and the consumer reconnect as it does for any other broker error. Liveness
(workers/liveness.py) still catches a consumer that stops fetching for any other reason.
"""

from __future__ import annotations

import logging
from typing import Any

from celery.worker.consumer.consumer import Consumer

log = logging.getLogger(__name__)
_original = Consumer.on_connection_error_after_connected


def _is_kombu_close_crash(e: AttributeError) -> bool:
    return "'NoneType' object has no attribute 'hostname'" in str(e) or "has no attribute 'client'" in str(e)


def on_connection_error_after_connected(self: Any, exc: BaseException) -> None:
    try:
        _original(self, exc)
    except AttributeError as e:
        if not _is_kombu_close_crash(e):
            raise
        self.connection = None  # already detached by Celery before the close that raised
        log.warning("broker connection closed uncleanly (%s); its unacked messages return after the "
                    "visibility timeout; reconnecting", e)  # fmt: skip


def install() -> None:
    """Idempotent."""
    Consumer.on_connection_error_after_connected = on_connection_error_after_connected  # type: ignore[method-assign]
