"""Several Lua steps in one round trip (workers/limits/steps.py), on fakeredis and redis-server:
the same results as one call each, and a script Redis lost (a restart) is loaded and only the
steps it refused are sent again."""

from __future__ import annotations

import redis

from workers.budget import Budget
from workers.limits import BreakerConfig, CircuitBreaker, Limit, RateLimiter
from workers.limits.steps import run_steps


def test_steps_in_one_round_trip_do_what_each_call_does(r: redis.Redis) -> None:
    budget, breaker, limiter = Budget(r), CircuitBreaker(r, BreakerConfig()), RateLimiter(r)
    hold = budget.reserve_hold("j1", "t1", 1.0, 0.25)
    lim = [Limit("p:m", rpm=60, tpm=10_000)]
    got = run_steps(r, [breaker.allow_step("p:m"), budget.reserve_step(hold), None, limiter.acquire_step(lim, 100)])
    assert got[2] is None
    permit = breaker.permit_from("p:m", got[0])
    assert not permit.probe and budget.hold_from(hold, got[1]) == hold
    assert limiter.reservation_from(lim, 100, got[3]).granted
    assert budget.spent("pf:budget:job:j1") == 0.25
    run_steps(r, [budget.settle_step(hold, 0.1), breaker.record_step(permit, ok=True)])
    assert abs(budget.spent("pf:budget:job:j1") - 0.1) < 1e-9
    assert breaker.snapshot("p:m")["calls"] == 1


def test_a_script_redis_lost_is_loaded_and_only_its_steps_run_again(r: redis.Redis) -> None:
    budget, breaker = Budget(r), CircuitBreaker(r, BreakerConfig())
    hold = budget.reserve_hold("j2", "t1", None, 0.5)
    run_steps(r, [budget.reserve_step(hold), breaker.allow_step("p:m")])  # both scripts loaded
    r.script_flush()  # what a Redis restart does to them
    got = run_steps(r, [budget.reserve_step(hold), breaker.allow_step("p:m")])
    assert budget.hold_from(hold, got[0]) == hold and breaker.permit_from("p:m", got[1])
    assert budget.spent("pf:budget:job:j2") == 1.0  # each reserve ran exactly once per call
