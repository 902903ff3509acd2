"""reserve.lua and RateLimiter as specifications, on fakeredis and on the real redis-server."""

from __future__ import annotations

import time

import pytest
import redis

from tests.limits.conftest import Clock
from workers.limits import Limit, RateLimiter, RateLimitWait, TokensExceedLimit

MODEL = Limit("openai:gpt-4o", rpm=3, tpm=1000)


def test_grants_a_minute_of_requests_at_once_then_says_how_long_to_wait(r: redis.Redis, clock: Clock) -> None:
    rl = RateLimiter(r, clock=clock)
    assert all(rl.try_acquire([MODEL], 10).granted for _ in range(3))
    denied = rl.try_acquire([MODEL], 10)
    assert (denied.granted, denied.wait_s, denied.blocker) == (False, 20.0, MODEL.key)  # 60 s / 3 rpm
    clock.advance(20.0 - 1e-6)
    assert rl.try_acquire([MODEL], 10).wait_s == pytest.approx(1e-6)
    clock.advance(1e-6)
    assert rl.try_acquire([MODEL], 10).granted


def test_tokens_limit_even_when_requests_have_room(r: redis.Redis, clock: Clock) -> None:
    rl = RateLimiter(r, clock=clock)
    lim = Limit("k", rpm=100, tpm=1000)
    assert rl.try_acquire([lim], 600).granted
    denied = rl.try_acquire([lim], 600)
    assert not denied.granted
    assert denied.wait_s == pytest.approx(12.0)  # 200 tokens short at 1000/min
    assert rl.try_acquire([lim], 400).granted  # a smaller request still fits


def test_a_denied_provider_key_takes_nothing_from_the_model_key(r: redis.Redis, clock: Clock) -> None:
    rl = RateLimiter(r, clock=clock)
    provider = Limit("openai", rpm=1, tpm=10_000)
    assert rl.try_acquire([provider], 1).granted
    before = rl.headroom(MODEL)
    denied = rl.try_acquire([MODEL, provider], 500)
    assert (denied.granted, denied.blocker) == (False, "openai")
    assert rl.headroom(MODEL) == before == {"requests": 3.0, "tokens": 1000.0, "paused_until": 0.0}


def test_a_grant_takes_from_every_key_at_once(r: redis.Redis, clock: Clock) -> None:
    rl = RateLimiter(r, clock=clock)
    provider = Limit("openai", rpm=10, tpm=10_000)
    assert rl.try_acquire([MODEL, provider], 500).granted
    assert rl.headroom(MODEL)["tokens"] == 500.0
    assert rl.headroom(provider) == {"requests": 9.0, "tokens": 9500.0, "paused_until": 0.0}


def test_wait_is_the_longest_of_all_keys(r: redis.Redis, clock: Clock) -> None:
    rl = RateLimiter(r, clock=clock)
    slow, fast = Limit("slow", rpm=1, tpm=100), Limit("fast", rpm=2, tpm=100)
    assert rl.try_acquire([slow, fast], 1).granted and rl.try_acquire([fast], 1).granted
    denied = rl.try_acquire([fast, slow], 1)
    assert (denied.wait_s, denied.blocker) == (60.0, "slow")


def test_reconcile_refunds_the_unused_estimate(r: redis.Redis, clock: Clock) -> None:
    rl = RateLimiter(r, clock=clock)
    res = rl.try_acquire([MODEL], 900)
    rl.reconcile(res, 100)
    assert rl.headroom(MODEL)["tokens"] == 900.0
    assert rl.try_acquire([MODEL], 900).granted


def test_reconcile_charges_usage_above_the_estimate_and_later_callers_wait(r: redis.Redis, clock: Clock) -> None:
    rl = RateLimiter(r, clock=clock)
    res = rl.try_acquire([MODEL], 100)
    rl.reconcile(res, 1300)  # 300 tokens of debt: one minute's worth plus 18 s
    assert rl.headroom(MODEL)["tokens"] == 0.0
    assert rl.try_acquire([MODEL], 100).wait_s == pytest.approx(24.0)  # the debt, then 100 tokens


def test_a_refund_gives_back_nothing_that_time_already_returned(r: redis.Redis, clock: Clock) -> None:
    rl = RateLimiter(r, clock=clock)
    slow = rl.try_acquire([MODEL], 1000)
    clock.advance(60.0)  # the bucket refilled while the slow call ran
    assert rl.try_acquire([MODEL], 1000).granted
    rl.reconcile(slow, 0)  # a refund now would let a second 1000 through in the same instant
    assert not rl.try_acquire([MODEL], 1).granted


def test_a_refund_returns_the_part_still_ahead_of_the_clock(r: redis.Redis, clock: Clock) -> None:
    rl = RateLimiter(r, clock=clock)
    res = rl.try_acquire([MODEL], 1000)  # schedule runs to now + 60 s
    clock.advance(15.0)  # 250 tokens came back with time
    rl.reconcile(res, 0)
    assert rl.headroom(MODEL)["tokens"] == 1000.0


def test_pause_blocks_every_worker_until_it_passes(r: redis.Redis, clock: Clock) -> None:
    worker_a, worker_b = RateLimiter(r, clock=clock), RateLimiter(r, clock=clock)
    worker_a.pause(MODEL.key, 5.0)
    denied = worker_b.try_acquire([Limit("other", 10, 100), MODEL], 1)
    assert (denied.granted, denied.wait_s, denied.blocker) == (False, 5.0, MODEL.key)
    assert worker_b.headroom(MODEL) == {"requests": 3.0, "tokens": 1000.0, "paused_until": clock() + 5.0}
    assert worker_b.try_acquire([Limit("other", 10, 100)], 1).granted  # other keys go on
    worker_b.pause(MODEL.key, 1.0)  # a shorter pause never cuts a longer one
    clock.advance(4.999)
    assert not worker_b.try_acquire([MODEL], 1).granted
    clock.advance(0.001)
    assert worker_b.try_acquire([MODEL], 1).granted


def test_a_request_larger_than_the_minute_fails_at_once_and_writes_nothing(r: redis.Redis, clock: Clock) -> None:
    rl = RateLimiter(r, clock=clock)
    with pytest.raises(TokensExceedLimit) as e:
        rl.acquire([Limit("big", 10_000, 10_000), MODEL], 1001, sleep=pytest.fail)
    assert (e.value.key, e.value.tokens, e.value.tpm) == (MODEL.key, 1001, 1000)
    assert "exceed its tpm of 1000" in str(e.value)
    assert r.keys("*") == []


def test_the_script_itself_refuses_an_oversize_request(r: redis.Redis, clock: Clock) -> None:
    rl = RateLimiter(r, clock=clock)  # defence in depth: callers that skip the Python check
    assert rl._run("acquire", ["pf:rl:k"], [1001, 3, 1000]) == [-1, 1, 0]


def test_acquire_sleeps_the_announced_wait_and_holds_nothing_meanwhile(r: redis.Redis, clock: Clock) -> None:
    rl = RateLimiter(r, clock=clock)
    lim = Limit("k", rpm=1, tpm=100)
    rl.try_acquire([lim], 1)
    slept: list[float] = []

    def sleep(s: float) -> None:
        assert rl.headroom(lim)["requests"] < 1  # the waiter took no slot
        slept.append(s)
        clock.advance(s)

    assert rl.acquire([lim], 1, sleep=sleep).granted
    assert len(slept) == 1 and 60.0 <= slept[0] <= 60.0 + 0.05  # the wait plus a little jitter


def test_acquire_raises_when_the_wait_would_pass_the_deadline(r: redis.Redis, clock: Clock) -> None:
    rl = RateLimiter(r, clock=clock)
    lim = Limit("k", rpm=1, tpm=100)
    rl.try_acquire([lim], 1)
    with pytest.raises(RateLimitWait) as e:
        rl.acquire([lim], 1, deadline=time.time() + 30, sleep=pytest.fail)
    assert (e.value.key, e.value.wait_s) == ("k", 60.0)


def test_a_quiet_key_refills_to_one_minute_and_no_more(r: redis.Redis, clock: Clock) -> None:
    rl = RateLimiter(r, clock=clock)
    rl.try_acquire([MODEL], 1)
    clock.advance(3600.0)
    assert sum(rl.try_acquire([MODEL], 1).granted for _ in range(5)) == 3


def test_a_clock_that_steps_back_grants_nothing_extra(r: redis.Redis, clock: Clock) -> None:
    rl = RateLimiter(r, clock=clock)  # e.g. a failover to a replica whose clock lags
    assert all(rl.try_acquire([MODEL], 1).granted for _ in range(3))
    clock.advance(-10.0)
    denied = rl.try_acquire([MODEL], 1)
    assert not denied.granted and denied.wait_s == 30.0  # the schedule stands; the wait grows
    assert rl.headroom(MODEL)["requests"] == 0.0


def test_idle_keys_expire_once_their_schedule_has_passed(r: redis.Redis, clock: Clock) -> None:
    rl = RateLimiter(r, clock=clock)
    # TTLs run on the wall clock: the lower bounds allow for however long this machine took
    t0 = time.monotonic()
    rl.try_acquire([MODEL], 1)  # request schedule ends 20 s ahead
    ttl = r.pttl("pf:rl:" + MODEL.key)
    assert 20_000 - (time.monotonic() - t0) * 1000 < ttl <= 21_000
    t0 = time.monotonic()
    rl.pause(MODEL.key, 90.0)
    ttl = r.pttl("pf:rl:" + MODEL.key)
    assert 90_000 - (time.monotonic() - t0) * 1000 < ttl <= 91_000


def test_production_decides_on_redis_time_not_the_callers_clock(
    r: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    rl = RateLimiter(r)  # no injected clock: the script reads TIME
    lim = Limit("k", rpm=2, tpm=100)
    monkeypatch.setattr(time, "time", lambda: 0.0)  # a worker whose clock is wildly off
    assert rl.try_acquire([lim], 1).granted and rl.try_acquire([lim], 1).granted
    denied = rl.try_acquire([lim], 1)
    assert 29.0 < denied.wait_s <= 30.0
    monkeypatch.undo()
    server_now = float(r.time()[0])
    assert rl.headroom(lim)["paused_until"] == 0.0
    rl.pause("k", 10.0)
    assert server_now + 9.0 < rl.headroom(lim)["paused_until"] <= server_now + 12.0


def test_limits_reject_nonsense_before_any_round_trip(r: redis.Redis) -> None:
    rl = RateLimiter(r)
    with pytest.raises(ValueError):
        Limit("k", rpm=0, tpm=10)
    with pytest.raises(ValueError):
        rl.try_acquire([MODEL, MODEL], 1)
    with pytest.raises(ValueError):
        rl.try_acquire([MODEL], -1)
    assert r.keys("*") == []


def test_a_short_burst_grants_only_that_many_seconds_at_once_then_the_steady_rate(r: redis.Redis, clock: Clock) -> None:
    rl = RateLimiter(r, clock=clock)
    lim = Limit("sliding", rpm=600, tpm=1_000_000, burst_s=2.0)  # 10 a second, 20 at once
    assert sum(rl.try_acquire([lim], 1).granted for _ in range(30)) == 20
    assert rl.try_acquire([lim], 1).wait_s == pytest.approx(0.1)
    assert rl.headroom(lim)["requests"] == 0.0
    clock.advance(60.0)  # a quiet minute refills the burst, not the minute
    assert rl.headroom(lim)["requests"] == pytest.approx(20.0)
    granted = 0
    for _ in range(600):  # five eager callers every 100 ms for a minute: the burst, then the rate
        granted += sum(rl.try_acquire([lim], 1).granted for _ in range(5))
        clock.advance(0.1)
    assert granted == 20 + 599  # 600 * (2 s + 59.9 s) / 60: the bound, met exactly


def test_a_request_larger_than_the_burst_goes_alone_on_a_clear_schedule(r: redis.Redis, clock: Clock) -> None:
    rl = RateLimiter(r, clock=clock)
    lim = Limit("sliding", rpm=600, tpm=6000, burst_s=1.0)  # a burst of 100 tokens
    assert rl.try_acquire([lim], 50).granted
    big = rl.try_acquire([lim], 400)  # four bursts: waits until the first 50 have drained
    assert not big.granted and big.wait_s == pytest.approx(0.5)
    clock.advance(0.5)
    assert rl.try_acquire([lim], 400).granted
    assert rl.try_acquire([lim], 1).wait_s == pytest.approx(4.0 - 1.0 + 0.01)  # its 4 s, less the burst


def test_burst_must_be_within_a_minute() -> None:
    for bad in (0.0, -1.0, 61.0):
        with pytest.raises(ValueError, match="burst_s"):
            Limit("k", rpm=1, tpm=1, burst_s=bad)


def test_a_refund_after_the_clock_stepped_back_returns_no_more_than_was_unused(r: redis.Redis, clock: Clock) -> None:
    rl = RateLimiter(r, clock=clock)
    res = rl.try_acquire([MODEL], 1000)  # schedule runs to grant + 60 s
    clock.advance(-10.0)  # a failover to a replica whose clock lags 10 s
    rl.reconcile(res, 400)
    # 400 used: the schedule ends 24 s past the grant, which is 34 s past this clock
    assert rl.headroom(MODEL)["tokens"] == pytest.approx(1000 * (60 - 34) / 60)


def test_a_charge_on_a_key_that_expired_meanwhile_still_makes_later_callers_wait(r: redis.Redis, clock: Clock) -> None:
    rl = RateLimiter(r, clock=clock)
    res = rl.try_acquire([MODEL], 100)
    clock.advance(120.0)
    r.delete("pf:rl:" + MODEL.key)  # idle keys expire (TTLs run on the wall clock, so expire it by hand)
    rl.reconcile(res, 1100)  # the call used a whole minute more than it reserved
    assert rl.try_acquire([MODEL], 100).wait_s == pytest.approx(6.0)  # past the debt, then its own 100


def test_a_refund_on_a_key_that_expired_meanwhile_writes_nothing(r: redis.Redis, clock: Clock) -> None:
    rl = RateLimiter(r, clock=clock)
    res = rl.try_acquire([MODEL], 900)
    clock.advance(120.0)
    r.delete("pf:rl:" + MODEL.key)
    rl.reconcile(res, 0)
    assert r.keys("*") == []


def test_a_grant_comes_exactly_when_a_pause_ends(r: redis.Redis, clock: Clock) -> None:
    rl = RateLimiter(r, clock=clock)
    rl.pause(MODEL.key, 5.0)
    clock.advance(5.0 - 1e-6)
    assert rl.try_acquire([MODEL], 1).wait_s == pytest.approx(1e-6)
    clock.advance(1e-6)
    assert rl.try_acquire([MODEL], 1).granted
