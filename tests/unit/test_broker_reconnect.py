"""The kombu reconnect-crash patch: the one AttributeError of kombu 5.7.0's close path is absorbed
(the consumer then reconnects); any other error still propagates. The crash itself is reproduced
by the Redis-stop drill (tests/reliability/test_redis_drill.py)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from celery.worker.consumer.consumer import Consumer

from workers import broker_reconnect


def test_installed_by_the_app() -> None:
    import workers.app  # noqa: F401

    assert Consumer.on_connection_error_after_connected is broker_reconnect.on_connection_error_after_connected


def test_the_hostname_crash_is_absorbed_and_others_are_not(monkeypatch: pytest.MonkeyPatch) -> None:
    def crash(self: object, exc: BaseException) -> None:
        raise AttributeError("'NoneType' object has no attribute 'hostname'")

    monkeypatch.setattr(broker_reconnect, "_original", crash)
    consumer = SimpleNamespace(connection=object())
    broker_reconnect.on_connection_error_after_connected(consumer, ConnectionError("down"))
    assert consumer.connection is None

    def other(self: object, exc: BaseException) -> None:
        raise AttributeError("'Foo' object has no attribute 'bar'")

    monkeypatch.setattr(broker_reconnect, "_original", other)
    with pytest.raises(AttributeError):
        broker_reconnect.on_connection_error_after_connected(consumer, ConnectionError("down"))
