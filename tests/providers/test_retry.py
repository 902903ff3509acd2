"""`call_with_retries` as a specification, on a scripted provider and a recorded sleep."""

from __future__ import annotations

import random

import pytest

from workers.providers import (
    ChatRequest,
    Completion,
    InputRejected,
    MalformedResponse,
    ProviderError,
    ProviderUnavailable,
    RateLimited,
    call_with_retries,
)

pytestmark = pytest.mark.anyio
REQUEST = ChatRequest(model="m", messages=[{"role": "user", "content": "hi"}], timeout_s=60)
DONE = Completion("ok", 1, 1, 1.0, "m", "p", "stop")


class Scripted:
    """Raises the scripted errors in order, then answers."""

    name = "p"

    def __init__(self, *errors: ProviderError) -> None:
        self.errors = list(errors)
        self.requests: list[ChatRequest] = []

    async def complete(self, request: ChatRequest) -> Completion:
        self.requests.append(request)
        if self.errors:
            raise self.errors.pop(0)
        return DONE

    async def aclose(self) -> None:
        return None


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


async def test_never_waits_less_than_retry_after() -> None:
    clock = Clock()
    provider = Scripted(RateLimited("p", "429", 429, retry_after=3.0), RateLimited("p", "429", 429, retry_after=0.5))
    assert await call_with_retries(provider, REQUEST, sleep=clock.sleep, clock=clock, rng=random.Random(1)) is DONE
    assert clock.sleeps[0] >= 3.0 and clock.sleeps[1] >= 0.5


async def test_backoff_is_full_jitter_under_an_exponential_cap() -> None:
    clock = Clock()
    provider = Scripted(*[ProviderUnavailable("p", "503", 503)] * 6)
    await call_with_retries(
        provider,
        REQUEST,
        max_attempts=7,
        base_delay=1.0,
        max_delay=8.0,
        sleep=clock.sleep,
        clock=clock,
        rng=random.Random(7),
    )
    caps = [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    assert all(0.0 <= s <= cap for s, cap in zip(clock.sleeps, caps, strict=True))
    assert len(set(clock.sleeps)) == len(clock.sleeps)  # jittered, not a constant interval


async def test_input_rejected_is_never_retried() -> None:
    provider = Scripted(InputRejected("p", "bad", 400))
    with pytest.raises(InputRejected):
        await call_with_retries(provider, REQUEST, sleep=Clock().sleep)
    assert len(provider.requests) == 1


async def test_gives_up_with_the_last_error_when_the_wait_would_pass_the_deadline() -> None:
    clock = Clock()
    last = RateLimited("p", "429", 429, retry_after=30.0)
    provider = Scripted(MalformedResponse("p", "cut"), last)
    with pytest.raises(RateLimited) as caught:
        await call_with_retries(
            provider, REQUEST, deadline=clock.now + 10, base_delay=0.01, sleep=clock.sleep, clock=clock
        )
    assert caught.value is last and len(provider.requests) == 2 and sum(clock.sleeps) < 10


async def test_stops_after_max_attempts() -> None:
    provider = Scripted(*[ProviderUnavailable("p", "503", 503)] * 9)
    with pytest.raises(ProviderUnavailable):
        await call_with_retries(provider, REQUEST, max_attempts=3, sleep=Clock().sleep)
    assert len(provider.requests) == 3


async def test_each_attempt_timeout_is_cut_to_the_deadline() -> None:
    clock = Clock()
    provider = Scripted(ProviderUnavailable("p", "503", 503))
    await call_with_retries(
        provider, REQUEST, deadline=clock.now + 20, base_delay=4.0, sleep=clock.sleep, clock=clock, rng=random.Random(3)
    )
    first, second = provider.requests
    assert first.timeout_s == 20 and second.timeout_s == pytest.approx(20 - clock.sleeps[0])


async def test_on_attempt_sees_every_attempt_and_may_be_async() -> None:
    seen: list[tuple[int, str | None]] = []

    async def record(attempt: int, error: ProviderError | None) -> None:
        seen.append((attempt, str(error.status) if error else None))

    provider = Scripted(RateLimited("p", "429", 429, retry_after=0.0), ProviderUnavailable("p", "500", 500))
    await call_with_retries(provider, REQUEST, on_attempt=record, sleep=Clock().sleep)
    assert seen == [(1, "429"), (2, "500"), (3, None)]


def top(lo: float, hi: float) -> float:
    return hi  # the jitter's upper end: the cap itself


def test_the_fleet_s_member_call_follows_the_same_rule() -> None:
    """workers/panel/calls.py retries by `RetryPolicy.wait` too (sync, between its admission
    steps): one rule, two drivers. Its policy: four attempts, waits capped at 0.5, 1, 2 s."""
    from workers.panel.calls import RETRY
    from workers.providers.retry import RetryPolicy

    down = ProviderUnavailable("p", "HTTP 503")
    assert [RETRY.wait(n, down, 0.0, None, top) for n in (1, 2, 3, 4)] == [0.5, 1.0, 2.0, None]
    assert RETRY.wait(1, InputRejected("p", "HTTP 400"), 0.0, None, top) is None  # never retried
    assert RETRY.wait(1, RateLimited("p", "429", retry_after=7.0), 0.0, None, top) == 7.0
    assert RETRY.wait(1, RateLimited("p", "429", retry_after=7.0), 0.0, 5.0, top) is None  # past the deadline
    assert RetryPolicy().wait(5, down, 0.0, None, top) is None and RetryPolicy().wait(9, down, 0.0, None, top) is None
    assert RetryPolicy(max_attempts=20).wait(12, down, 0.0, None, top) == 20.0  # the cap
