"""Budget caps hold under concurrency: reserve-then-settle never lets spend pass a cap."""

from __future__ import annotations

import threading

import fakeredis
import pytest

from producer import keys
from workers.budget import Budget
from workers.errors import BudgetExceeded


@pytest.fixture(params=["fake", "real", "cluster"])
def r(request: pytest.FixtureRequest):  # type: ignore[no-untyped-def]
    if request.param == "fake":
        return fakeredis.FakeRedis()
    return request.getfixturevalue("redis_client" if request.param == "real" else "cluster_client")


def test_reserve_up_to_the_cap_then_refuse_naming_the_scope(r) -> None:  # type: ignore[no-untyped-def]
    b = Budget(r)
    b.reserve("j", "t", 0.010, 0.004)
    b.reserve("j", "t", 0.010, 0.006)
    with pytest.raises(BudgetExceeded) as e:
        b.reserve("j", "t", 0.010, 0.000001)
    assert e.value.scope == "job"


def test_settle_refunds_the_unused_hold(r) -> None:  # type: ignore[no-untyped-def]
    b = Budget(r)
    hold = b.reserve("j", "t", 0.010, 0.010)
    b.settle(hold, 0.002)
    assert b.spent(keys.budget_job("t", "j")) == pytest.approx(0.002)
    b.reserve("j", "t", 0.010, 0.008)  # the refund made room


def test_a_denied_reservation_adds_nothing_anywhere(r) -> None:  # type: ignore[no-untyped-def]
    b = Budget(r, tenant_cap_usd=1.0)
    with pytest.raises(BudgetExceeded):
        b.reserve("j", "t", 0.001, 0.002)
    day_key = b.scopes("j", "t", None)[1][0]
    assert b.spent(keys.budget_job("t", "j")) == 0 and b.spent(day_key) == 0


def test_fifty_concurrent_jobs_never_pass_the_tenant_cap(redis_client) -> None:  # type: ignore[no-untyped-def]
    cap, each = 0.10, 0.003  # room for 33 of the 50
    granted: list[int] = []
    barrier = threading.Barrier(50)

    def job(i: int) -> None:
        b = Budget(redis_client, tenant_cap_usd=cap)
        barrier.wait()
        try:
            hold = b.reserve(f"job{i}", "acme", None, each)
        except BudgetExceeded:
            return
        b.settle(hold, each)
        granted.append(i)

    threads = [threading.Thread(target=job, args=(i,)) for i in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    spent = Budget(redis_client).spent(Budget(redis_client).scopes("x", "acme", None)[1][0])
    assert len(granted) == 33 and spent == pytest.approx(33 * each) and spent <= cap
