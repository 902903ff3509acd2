"""breaker.lua and CircuitBreaker as specifications, on fakeredis and on the real redis-server."""

from __future__ import annotations

import threading
import time

import pytest
import redis

from tests.limits.conftest import Clock
from workers.limits import BreakerConfig, BreakerOpen, CircuitBreaker, Permit

KEY = "openai:gpt-4o"
CONFIG = BreakerConfig(window_s=30.0, min_calls=5, failure_rate=0.5, open_s=15.0, probes=2)


def _calls(cb: CircuitBreaker, outcomes: str) -> None:
    """'x' a failure, '.' a success, in order."""
    for o in outcomes:
        cb.record(cb.allow(KEY), ok=o == ".")


def _open(cb: CircuitBreaker) -> None:
    _calls(cb, "xxxxx")
    assert cb.state(KEY) == "open"


def test_stays_closed_until_min_calls_even_if_all_fail(r: redis.Redis, clock: Clock) -> None:
    cb = CircuitBreaker(r, CONFIG, clock=clock)
    _calls(cb, "xxxx")
    assert cb.snapshot(KEY) | {"opened_at": None} == {
        "state": "closed", "calls": 4, "failures": 4, "opened_at": None, "retry_in_s": 0.0, "probes_in_flight": 0}  # fmt: skip


def test_opens_when_the_failure_rate_in_the_window_reaches_the_threshold(r: redis.Redis, clock: Clock) -> None:
    cb = CircuitBreaker(r, CONFIG, clock=clock)
    _calls(cb, "..x.x")  # 2 of 5: below half
    assert cb.state(KEY) == "closed"
    _calls(cb, "x")  # 3 of 6: half
    snap = cb.snapshot(KEY)
    assert (snap["state"], snap["opened_at"], snap["retry_in_s"]) == ("open", clock(), 15.0)
    with pytest.raises(BreakerOpen) as e:
        cb.allow(KEY)
    assert (e.value.key, e.value.retry_in_s) == (KEY, 15.0)


def test_failures_that_slid_out_of_the_window_no_longer_count(r: redis.Redis, clock: Clock) -> None:
    cb = CircuitBreaker(r, CONFIG, clock=clock)
    _calls(cb, "xxxx")
    clock.advance(31.0)
    _calls(cb, "x....")
    assert cb.snapshot(KEY)["state"] == "closed"
    assert (cb.snapshot(KEY)["calls"], cb.snapshot(KEY)["failures"]) == (5, 1)


def test_every_worker_sees_the_same_breaker(r: redis.Redis, clock: Clock) -> None:
    worker_a, worker_b = CircuitBreaker(r, CONFIG, clock=clock), CircuitBreaker(r, CONFIG, clock=clock)
    _calls(worker_a, "xx")
    _calls(worker_b, "xxx")  # neither worker saw five failures on its own
    with pytest.raises(BreakerOpen):
        worker_a.allow(KEY)


def test_half_open_after_open_s_admits_exactly_probes(r: redis.Redis, clock: Clock) -> None:
    cb = CircuitBreaker(r, CONFIG, clock=clock)
    _open(cb)
    clock.advance(15.0)
    assert cb.state(KEY) == "half_open"
    first, second = cb.allow(KEY), cb.allow(KEY)
    assert first.probe and second.probe and first.lease != second.lease
    with pytest.raises(BreakerOpen) as e:
        cb.allow(KEY)
    assert e.value.retry_in_s == CONFIG.probe_lease_s  # at worst, until a lease lapses
    assert cb.snapshot(KEY)["probes_in_flight"] == 2


def test_a_probe_success_closes_it_with_a_fresh_window(r: redis.Redis, clock: Clock) -> None:
    cb = CircuitBreaker(r, CONFIG, clock=clock)
    _open(cb)
    clock.advance(15.0)
    probe, other = cb.allow(KEY), cb.allow(KEY)
    cb.record(probe, ok=True)
    assert cb.snapshot(KEY) | {"opened_at": None} == {
        "state": "closed", "calls": 0, "failures": 0, "opened_at": None, "retry_in_s": 0.0, "probes_in_flight": 0}  # fmt: skip
    cb.record(other, ok=False)  # the other probe's late failure belongs to the spell that ended
    assert cb.state(KEY) == "closed" and cb.snapshot(KEY)["calls"] == 0
    assert not cb.allow(KEY).probe


def test_a_probe_failure_reopens_it_for_another_open_s(r: redis.Redis, clock: Clock) -> None:
    cb = CircuitBreaker(r, CONFIG, clock=clock)
    _open(cb)
    clock.advance(15.0)
    cb.record(cb.allow(KEY), ok=False)
    snap = cb.snapshot(KEY)
    assert (snap["state"], snap["opened_at"], snap["retry_in_s"]) == ("open", clock(), 15.0)
    clock.advance(14.999)
    with pytest.raises(BreakerOpen):
        cb.allow(KEY)
    clock.advance(0.001)
    assert cb.allow(KEY).probe


def test_calls_permitted_before_it_opened_do_not_move_it(r: redis.Redis, clock: Clock) -> None:
    cb = CircuitBreaker(r, CONFIG, clock=clock)
    slow = [cb.allow(KEY) for _ in range(3)]  # in flight while the breaker opens
    _open(cb)
    clock.advance(15.0)
    for permit in slow:
        cb.record(permit, ok=True)  # a success from before is no evidence of recovery
    assert cb.state(KEY) == "half_open"


def test_a_probe_that_never_reports_frees_its_slot_after_its_lease(r: redis.Redis, clock: Clock) -> None:
    cb = CircuitBreaker(r, BreakerConfig(min_calls=5, open_s=15.0, probes=1, probe_lease_s=60.0), clock=clock)
    _open(cb)
    clock.advance(15.0)
    cb.allow(KEY)  # its worker dies
    clock.advance(59.9)
    with pytest.raises(BreakerOpen):
        cb.allow(KEY)
    clock.advance(0.1)
    assert cb.allow(KEY).probe


def test_forged_or_stale_permits_are_ignored(r: redis.Redis, clock: Clock) -> None:
    cb = CircuitBreaker(r, CONFIG, clock=clock)
    _open(cb)
    cb.record(Permit(KEY, probe=True, generation=1, lease="1"), ok=True)  # open, not half-open
    assert cb.state(KEY) == "open"


def test_production_decides_on_redis_time(r: redis.Redis) -> None:
    cb = CircuitBreaker(r, BreakerConfig(min_calls=1, open_s=30.0))  # no injected clock: TIME
    _calls(cb, "x")
    snap = cb.snapshot(KEY)
    assert snap["state"] == "open" and 29.0 < snap["retry_in_s"] <= 30.0
    assert abs(snap["opened_at"] - int(r.time()[0])) < 5


def test_config_rejects_nonsense() -> None:
    with pytest.raises(ValueError):
        BreakerConfig(failure_rate=0.0)
    with pytest.raises(ValueError):
        BreakerConfig(probes=0)


def test_half_open_admits_exactly_probes_of_sixteen_concurrent_callers(redis_client: redis.Redis) -> None:
    config = BreakerConfig(min_calls=5, open_s=0.2, probes=3)
    cb = CircuitBreaker(redis_client, config)
    _open(cb)
    time.sleep(0.25)
    barrier, permits, refused = threading.Barrier(16), [], []
    lock = threading.Lock()

    def caller() -> None:
        worker = CircuitBreaker(redis.Redis(connection_pool=redis_client.connection_pool), config)
        barrier.wait()
        try:
            p = worker.allow(KEY)
            with lock:
                permits.append(p)
        except BreakerOpen:
            with lock:
                refused.append(1)

    threads = [threading.Thread(target=caller) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert (len(permits), len(refused)) == (3, 13)
    assert all(p.probe for p in permits) and len({p.lease for p in permits}) == 3
    cb.record(permits[0], ok=True)
    assert cb.state(KEY) == "closed"


def test_the_window_covers_between_nine_tenths_and_all_of_window_s(r: redis.Redis) -> None:
    bucket = CONFIG.window_s / 10
    for offset, survives in ((0.0, CONFIG.window_s), (bucket - 0.001, CONFIG.window_s - bucket + 0.001)):
        r.flushdb()
        clock = Clock(999_999.0 + offset)  # 999_999 s is the start of a 3 s bucket
        cb = CircuitBreaker(r, CONFIG, clock=clock)
        _calls(cb, "xxxx")
        clock.advance(survives - 0.001)
        assert cb.snapshot(KEY)["failures"] == 4, offset
        clock.advance(0.001)
        assert cb.snapshot(KEY)["failures"] == 0, offset


def test_a_clock_that_steps_back_keeps_it_open_longer_never_shorter(r: redis.Redis, clock: Clock) -> None:
    cb = CircuitBreaker(r, CONFIG, clock=clock)
    _open(cb)
    clock.advance(-10.0)
    with pytest.raises(BreakerOpen) as e:
        cb.allow(KEY)
    assert e.value.retry_in_s == pytest.approx(CONFIG.open_s + 10.0)


def test_releasing_a_lapsed_probe_does_not_free_the_probe_that_replaced_it(r: redis.Redis, clock: Clock) -> None:
    cb = CircuitBreaker(r, BreakerConfig(min_calls=5, open_s=15.0, probes=1, probe_lease_s=60.0), clock=clock)
    _open(cb)
    clock.advance(15.0)
    lapsed = cb.allow(KEY)
    clock.advance(60.0)
    current = cb.allow(KEY)  # the lapsed lease freed its slot; a new probe holds it
    cb.release(lapsed)  # its worker finally gives up
    with pytest.raises(BreakerOpen):
        cb.allow(KEY)
    cb.release(current)
    assert cb.allow(KEY).probe
