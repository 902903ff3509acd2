"""take_lease.lua and release_lease.lua as specifications, on fakeredis and redis-server: one
holder concludes a panel at a time, and a re-render asked for meanwhile is never lost."""

from __future__ import annotations

from importlib.resources import files

import fakeredis
import pytest
import redis

LEASE, PANEL = "pf:panel:p:concluding", "pf:panel:p"


@pytest.fixture(params=["fake", "real"])
def r(request: pytest.FixtureRequest) -> redis.Redis:
    if request.param == "fake":
        return fakeredis.FakeRedis()
    client: redis.Redis = request.getfixturevalue("redis_client")
    return client


def scripts(r: redis.Redis) -> tuple[object, object]:
    here = files("workers")
    return (r.register_script(here.joinpath("take_lease.lua").read_text()),
            r.register_script(here.joinpath("release_lease.lua").read_text()))  # fmt: skip


def test_a_second_taker_leaves_a_rerender_request_that_the_holder_serves_before_letting_go(r: redis.Redis) -> None:
    take, release = scripts(r)
    assert take(keys=[LEASE, PANEL], args=[1, 30]) == [1, 0]  # type: ignore[operator]
    assert take(keys=[LEASE, PANEL], args=[2, 30]) == [0, 0]  # type: ignore[operator]  # a late member
    assert release(keys=[LEASE, PANEL], args=["123.5"]) == 1  # type: ignore[operator]  # keep it: re-render
    assert r.hget(PANEL, "once:concluded") == b"123.5" and r.exists(LEASE)
    assert release(keys=[LEASE, PANEL], args=[""]) == 0  # type: ignore[operator]
    assert not r.exists(LEASE)
    assert take(keys=[LEASE, PANEL], args=[3, 30]) == [1, 1]  # type: ignore[operator]  # concluded: re-render only
