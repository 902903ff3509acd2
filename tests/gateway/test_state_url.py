"""The gateway reads and writes where the workers do: the state Redis (PANEL_STATE_URL), not the
broker's, when the two are apart; a Cluster state URL is refused at start, naming the setting."""

from __future__ import annotations

import pytest

from gateway.context import Gateway
from gateway.settings import GatewaySettings
from producer.connect import RedisUrlError


def test_the_gateway_uses_the_state_url_not_the_broker(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PANEL_BROKER_URL", "redis://127.0.0.1:6390/0")
    monkeypatch.setenv("PANEL_STATE_URL", "redis://127.0.0.1:6391/3")
    g = Gateway.make(GatewaySettings())  # nothing connects until a request: no server needed
    try:
        kw = g.redis.connection_pool.connection_kwargs
        assert (kw["port"], kw["db"]) == (6391, 3)
    finally:
        g.client.close()


def test_a_cluster_state_url_is_refused_naming_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PANEL_BROKER_URL", "redis://127.0.0.1:6390/0")
    monkeypatch.setenv("PANEL_STATE_URL", "redis+cluster://127.0.0.1:7000,127.0.0.1:7001")
    with pytest.raises(RedisUrlError, match="PANEL_STATE_URL"):
        Gateway.make(GatewaySettings())
