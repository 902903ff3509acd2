"""One model call as the fleet makes it: breaker, fleet-wide limit, cancellable call, retries
with jitter bounded by the deadline, failover to the registry's fallbacks.

    outcome = call_model(rt, panel_id, "gpt-4o-mini", messages, deadline=time.time() + 60)
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass

from workers import metrics
from workers.limits import BreakerOpen, Limit, RateLimitWait
from workers.providers.base import ChatRequest, Completion, ProviderError, RateLimited
from workers.runtime import Cancelled, Runtime

log = logging.getLogger("panel.calls")
MAX_ATTEMPTS = 4
EXPECTED_OUTPUT_TOKENS = 256  # reserved up front; reconciled with the real usage after


@dataclass(frozen=True)
class CallOutcome:
    model: str
    completion: Completion | None
    error: str | None = None
    failed_over_from: str | None = None
    attempts: int = 0


def estimate_tokens(messages: list[dict[str, str]]) -> int:
    return sum(len(m["content"]) for m in messages) // 4 + 8 * len(messages) + EXPECTED_OUTPUT_TOKENS


def _one_model(rt: Runtime, panel_id: str | None, model: str, messages: list[dict[str, str]],
               deadline: float, json_mode: bool) -> tuple[Completion | None, str | None, int]:  # fmt: skip
    """Try one model until success, a non-retryable error, or the deadline. Raises BreakerOpen."""
    spec = rt.registry.model(model)
    limits = [Limit(f"{spec.provider}:{model}", spec.rpm, spec.tpm)]
    breaker_key = f"{spec.provider}:{model}"
    request = ChatRequest(model=spec.wire_model, messages=messages, max_tokens=spec.max_output_tokens,
                          json_mode=json_mode, timeout_s=max(1.0, min(rt.settings.call_timeout_s, deadline - time.time())))  # fmt: skip
    provider = rt.provider(spec.provider)
    last_error = "no attempt made"
    for attempt in range(1, MAX_ATTEMPTS + 1):
        permit = rt.breaker.allow(breaker_key)  # raises BreakerOpen: the caller fails over
        try:
            reservation = rt.limiter.acquire(limits, estimate_tokens(messages), deadline=deadline)
        except RateLimitWait as e:
            return None, f"rate limit wait past the deadline ({e})", attempt
        try:
            completion = rt.call(panel_id, lambda: provider.complete(request))
        except ProviderError as e:
            rt.limiter.reconcile(reservation, 0)
            rt.breaker.record(permit, ok=not e.retryable or isinstance(e, RateLimited))
            last_error = str(e)
            if isinstance(e, RateLimited):
                metrics.RATE_LIMITED.labels(spec.provider, model).inc()
                rt.limiter.pause(limits[0].key, e.retry_after or 1.0)
            if not e.retryable:
                return None, last_error, attempt
            wait = min(20.0, random.uniform(0, 0.25 * 2**attempt))  # full jitter
            if e.retry_after:
                wait = max(wait, e.retry_after)
            if time.time() + wait >= deadline or attempt == MAX_ATTEMPTS:
                return None, last_error, attempt
            time.sleep(wait)
            continue
        except Cancelled:
            rt.limiter.reconcile(reservation, 0)
            raise
        rt.limiter.reconcile(reservation, completion.tokens_in + completion.tokens_out)
        rt.breaker.record(permit, ok=True)
        return completion, None, attempt
    return None, last_error, MAX_ATTEMPTS


def call_model(rt: Runtime, panel_id: str | None, model: str, messages: list[dict[str, str]],
               deadline: float, json_mode: bool = False) -> CallOutcome:  # fmt: skip
    """Call `model`, failing over along its fallbacks while their breakers are open. Raises Cancelled."""
    tried: list[str] = []
    for candidate in [model, *rt.registry.model(model).fallbacks]:
        if candidate in tried:
            continue
        tried.append(candidate)
        try:
            completion, error, attempts = _one_model(rt, panel_id, candidate, messages, deadline, json_mode)
        except BreakerOpen as e:
            log.info("breaker open for %s (%s); failing over", candidate, e)
            continue
        return CallOutcome(candidate, completion, error, model if candidate != model else None, attempts)
    return CallOutcome(model, None, f"circuit open for {', '.join(tried)}; no fallback available")
