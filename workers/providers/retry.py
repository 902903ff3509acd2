"""Retries of one provider call: full-jitter exponential backoff, Retry-After obeyed, bounded by
attempts and by the caller's deadline. Every attempt is reported, so the fleet-wide limiter and
breaker see what each worker sees.

    completion = await call_with_retries(chat, request, deadline=time.time() + 60,
                                         on_attempt=lambda n, err: breaker_record(err))
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import random
import time
from collections.abc import Awaitable, Callable

from workers.providers.base import ChatRequest, Completion, Provider, ProviderError

OnAttempt = Callable[[int, ProviderError | None], Awaitable[None] | None]
MIN_ATTEMPT_TIMEOUT_S = 1.0  # a shorter read timeout fails calls that would have answered


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
    """When to try a failed call again, and after how long: the one rule both drivers follow (the
    fleet's member call, workers/panel/calls.py, sync between its admission steps, and
    `call_with_retries` here, async around a bare provider)."""

    max_attempts: int = 5
    base_delay: float = 0.25
    max_delay: float = 20.0

    def wait(self, attempt: int, error: ProviderError, now: float, deadline: float | None,
             draw: Callable[[float, float], float] = random.uniform) -> float | None:  # fmt: skip
        """Seconds to wait before attempt `attempt + 1`, or None to give up: the error is not
        retryable, the attempts are spent, or the wait would end past `deadline`. Full jitter,
        uniform in [0, min(max_delay, base_delay * 2**(attempt-1))], never shorter than the
        provider's `retry_after` (a retry inside the provider's window fails again, and counts)."""
        if not error.retryable or attempt >= self.max_attempts:
            return None
        wait = draw(0.0, min(self.max_delay, self.base_delay * 2 ** (attempt - 1)))
        if error.retry_after is not None:
            wait = max(wait, error.retry_after)
        if deadline is not None and now + wait >= deadline:
            return None
        return wait


async def call_with_retries(
    provider: Provider,
    request: ChatRequest,
    *,
    deadline: float | None = None,
    max_attempts: int = 5,
    base_delay: float = 0.25,
    max_delay: float = 20.0,
    on_attempt: OnAttempt | None = None,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    clock: Callable[[], float] = time.time,
    rng: random.Random | None = None,
) -> Completion:
    """The first Completion, or the last error once retrying cannot help.

    Gives up (re-raising) on a non-retryable error (InputRejected), after `max_attempts`, or when
    the next wait would end past `deadline` (epoch seconds, as `time.time()`). The wait before
    attempt n+1 is uniform in [0, min(max_delay, base_delay * 2**(n-1))] and never shorter than
    the provider's `retry_after`: a retry inside the provider's window fails again, and counts.
    Each attempt's timeout is cut to the time left before the deadline (at least 1 s).
    `on_attempt(n, error or None)` runs after every attempt, sync or async.
    """
    if max_attempts < 1:
        raise ValueError("max_attempts must be at least 1")
    policy = RetryPolicy(max_attempts, base_delay, max_delay)
    draw = rng.uniform if rng is not None else random.uniform
    attempt = 0
    while True:
        attempt += 1
        if deadline is not None:
            left = max(MIN_ATTEMPT_TIMEOUT_S, deadline - clock())
            if left < request.timeout_s:
                request = dataclasses.replace(request, timeout_s=left)
        try:
            completion = await provider.complete(request)
        except ProviderError as error:
            await _report(on_attempt, attempt, error)
            wait = policy.wait(attempt, error, clock(), deadline, draw)
            if wait is None:
                raise
            await sleep(wait)
        else:
            await _report(on_attempt, attempt, None)
            return completion


async def _report(on_attempt: OnAttempt | None, attempt: int, error: ProviderError | None) -> None:
    if on_attempt is None:
        return
    result = on_attempt(attempt, error)
    if inspect.isawaitable(result):
        await result
