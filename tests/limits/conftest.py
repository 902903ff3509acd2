"""Every limits test runs three times: on fakeredis (Lua 5.1 via lupa), on the real redis-server and
on a real 3-node Redis Cluster."""

from __future__ import annotations

import fakeredis
import pytest
import redis


class Clock:
    """A stand-in for Redis TIME, injected through ARGV; production never passes one."""

    def __init__(self, t: float = 1_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


@pytest.fixture(params=["fake", "real", "cluster"])
def r(request: pytest.FixtureRequest) -> redis.Redis:
    if request.param == "fake":
        return fakeredis.FakeRedis()
    if request.param == "cluster":  # a real 3-node Redis Cluster: a cross-slot script fails here
        cluster: redis.Redis = request.getfixturevalue("cluster_client")
        return cluster
    client: redis.Redis = request.getfixturevalue("redis_client")
    return client


@pytest.fixture
def clock() -> Clock:
    return Clock()
