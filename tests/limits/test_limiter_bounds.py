"""The limiter's bound, proved two ways: threads hammering the real redis-server on its own
clock, and Hypothesis searching sequences of acquire / reconcile / waits on fakeredis."""

from __future__ import annotations

import threading
import time

import fakeredis
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from workers.limits import Limit, RateLimiter

MINUTE_US = 60_000_000


def _server_us(r: redis.Redis) -> int:
    s, us = r.time()
    return int(s) * 1_000_000 + int(us)


def _hammer(r: redis.Redis, plans: list[tuple[Limit, ...]], tokens: int, target: int,
            deadline_s: float = 60.0) -> tuple[list[int], int]:  # fmt: skip
    """16 threads, each on its own limiter (as separate workers would be), try as fast as they
    can until `target` grants in all (or a generous deadline: a loaded machine slows the threads,
    never the limiter's schedule); returns grants per plan and the server-time span that contains
    every attempt."""
    grants = [0] * len(plans)
    lock = threading.Lock()
    start = threading.Barrier(16)
    stop_at = time.monotonic() + deadline_s

    def worker(n: int) -> None:
        rl = RateLimiter(redis.Redis(connection_pool=r.connection_pool))
        plan = n % len(plans)
        start.wait()
        while time.monotonic() < stop_at and sum(grants) < target:
            if rl.try_acquire(plans[plan], tokens).granted:
                with lock:
                    grants[plan] += 1

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(16)]
    t0 = _server_us(r)
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return grants, _server_us(r) - t0


def test_sixteen_threads_never_get_more_requests_than_burst_plus_elapsed_rate(redis_client: redis.Redis) -> None:
    lim = Limit("hot", rpm=600, tpm=10**9)  # one request every 100 ms after a burst of 600
    (granted,), span_us = _hammer(redis_client, [(lim,)], 1, target=600 + 10)
    assert granted >= 610, "the limiter kept refusing after its schedule had room"
    assert granted <= 600 + span_us // 100_000  # exact: never more than burst plus elapsed rate
    assert RateLimiter(redis_client).try_acquire([lim], 1).wait_s <= 0.1  # and no more than one interval owed


def test_sixteen_threads_never_get_more_tokens_than_burst_plus_elapsed_rate(redis_client: redis.Redis) -> None:
    lim = Limit("hot", rpm=10**6, tpm=6000)  # 50 tokens a request: one every 500 ms after 120
    (granted,), span_us = _hammer(redis_client, [(lim,)], 50, target=120 + 3)
    assert granted >= 123, "the limiter kept refusing after its schedule had room"
    assert granted <= (MINUTE_US + span_us) // 500_000
    assert RateLimiter(redis_client).try_acquire([lim], 50).wait_s <= 0.5


def test_a_shared_provider_key_bounds_the_sum_of_its_models(redis_client: redis.Redis) -> None:
    provider = Limit("openai", rpm=600, tpm=10**9)
    a, b = Limit("openai:a", rpm=400, tpm=10**9), Limit("openai:b", rpm=400, tpm=10**9)
    (ga, gb), span_us = _hammer(redis_client, [(a, provider), (b, provider)], 1, target=600 + 10)
    assert ga + gb <= 600 + span_us // 100_000
    assert ga <= 400 + span_us // 150_000 and gb <= 400 + span_us // 150_000
    assert ga + gb >= 600  # the provider, not the models, was the binding limit


# Limits whose per-unit interval is a whole number of microseconds, so the check below is exact.
TPMS = [60, 100, 600, 1000, 6000, 60_000]

# Round numbers (a full minute, a whole bucket, a full refund) reach the edges quickly.
waits = st.one_of(st.sampled_from([0, 1, 15_000_000, 60_000_000, 61_000_000]), st.integers(0, 90_000_000))
shares = st.one_of(st.sampled_from([0.0, 0.5, 1.0]), st.floats(0, 1))
ops = st.lists(
    st.one_of(
        st.tuples(st.just("wait"), waits),
        st.tuples(st.just("acquire"), shares),
        st.tuples(st.just("acquire_after_wait"), shares),
        st.tuples(st.just("reconcile"), st.integers(0, 1000), st.one_of(shares, st.floats(1, 2))),
        st.tuples(st.just("release"), st.integers(0, 1000)),  # a grant whose call was never made
    ),
    max_size=40,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tpm=st.sampled_from(TPMS), rpm=st.sampled_from([1, 3, 60, 600]), steps=ops)
def test_tokens_granted_in_any_window_never_exceed_the_limit(tpm: int, rpm: int, steps: list[tuple]) -> None:  # type: ignore[type-arg]
    now_us = [1_000_000_000]
    rl = RateLimiter(fakeredis.FakeRedis(), clock=lambda: now_us[0] / 1e6)
    lim = Limit("k", rpm=rpm, tpm=tpm)
    grants: list[list[int]] = []  # [time, reserved, counted, requests]; counted = what the provider saw
    open_: list[tuple[int, object]] = []
    for step in steps:
        if step[0] == "wait":
            now_us[0] += step[1]
        elif step[0] in ("acquire", "acquire_after_wait"):
            tokens = round(step[1] * tpm)
            res = rl.try_acquire([lim], tokens)
            if not res.granted and step[0] == "acquire_after_wait":
                assert res.wait_s > 0
                now_us[0] += round(res.wait_s * 1e6)
                res = rl.try_acquire([lim], tokens)
                assert res.granted, "after the announced wait the same request must pass"
            if res.granted:
                grants.append([now_us[0], tokens, tokens, 1])
                open_.append((len(grants) - 1, res))
        elif step[0] == "release":
            if open_:  # given back whole: neither its tokens nor its request reached the provider
                i, res = open_.pop(step[1] % len(open_))
                released = rl.release_step(res)  # type: ignore[arg-type]
                assert released is not None
                released.run()
                grants[i][2] = grants[i][3] = 0
        elif open_:
            i, res = open_.pop(step[1] % len(open_))
            actual = round(step[2] * grants[i][1])
            rl.reconcile(res, actual)  # type: ignore[arg-type]
            grants[i][2] = min(actual, grants[i][1])  # a charge above the estimate is debt, not a grant
    for i, (start, *_) in enumerate(grants):
        for end, *_ in grants[i:]:
            inside = [g for g in grants if start <= g[0] <= end]
            span = end - start
            assert sum(g[2] for g in inside) * MINUTE_US <= tpm * (MINUTE_US + span)
            assert sum(g[3] for g in inside) * MINUTE_US <= rpm * (MINUTE_US + span)


def test_a_refund_after_an_earlier_refund_moved_its_slice_gives_back_only_what_is_still_ahead() -> None:
    """Hypothesis found it (tpm 60): two 30-token grants fill the burst; refunding the first moves
    the second's slice 30 s earlier, so at t=30 s the second's capacity has come back by itself.
    Refunding it there as though its slice were still where its grant put it let a 60-token grant
    and a 30-token grant through in the same instant: 90 tokens against a limit of 60."""
    steps = [("acquire", 0.5), ("acquire", 0.5), ("reconcile", 0, 0.0), ("acquire_after_wait", 1.0),
             ("reconcile", 0, 0.0), ("acquire", 0.5)]  # fmt: skip
    test_tokens_granted_in_any_window_never_exceed_the_limit.hypothesis.inner_test(tpm=60, rpm=3, steps=steps)  # type: ignore[attr-defined]


def test_a_release_whose_request_time_has_passed_gives_back_no_request_a_later_grant_holds() -> None:
    """rpm 1: A's request slot has passed by the time B is granted, a minute on; giving A back then
    must not take an interval off the schedule, which now ends at B's slot: C would pass in the
    same instant as B, two requests against a limit of one."""
    steps = [("acquire", 0.0), ("wait", 60_000_000), ("acquire", 0.0), ("release", 0), ("acquire", 0.0)]
    test_tokens_granted_in_any_window_never_exceed_the_limit.hypothesis.inner_test(tpm=60, rpm=1, steps=steps)  # type: ignore[attr-defined]
