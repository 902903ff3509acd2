"""Every breaker permit `call_model` takes is recorded or released, whatever stops the call:
a half-open probe slot must never wait for its lease to expire. Real breaker, limiter and
budget scripts on fakeredis and on redis-server; only the provider and the IO loop are stand-ins."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any, TypeVar

import pytest
import redis
import yaml

from tests.limits.conftest import Clock
from workers.budget import Budget
from workers.errors import BudgetExceeded
from workers.limits import BreakerConfig, CircuitBreaker, Limit, RateLimiter, RateLimitWait, Reservation
from workers.panel import attempts, calls
from workers.providers import billing
from workers.providers.base import ChatRequest, Completion, ProviderUnavailable
from workers.registry import Registry
from workers.runtime import Cancelled

T = TypeVar("T")
SHIPPED_MODELS = Path(__file__).resolve().parents[2] / "policies" / "models.yaml"
MODEL = "llama3.1-70b"  # falls back to qwen2.5-72b-instruct in the shipped registry
KEY = f"fireworks:{MODEL}"
# long lease: a leaked probe would hold its slot for the rest of the test
CONFIG = BreakerConfig(window_s=30.0, min_calls=2, failure_rate=0.5, open_s=10.0, probes=1, probe_lease_s=600.0)
MESSAGES = [{"role": "user", "content": "Is 7 prime?"}]


@dataclass
class ScriptedProvider:
    """Answers from a script: a Completion, or an exception to raise, per call."""

    script: list[Completion | Exception]
    requests: list[ChatRequest] = field(default_factory=list)

    async def complete(self, request: ChatRequest) -> Completion:
        self.requests.append(request)
        step = self.script.pop(0)
        if isinstance(step, Exception):
            raise step
        return step


def _answer() -> Completion:
    return Completion("yes", 10, 2, 5.0, MODEL, "fireworks", "stop")


class RefusingLimiter(RateLimiter):
    """The real limiter, but every grant comes back as a 42 s wait, past any deadline here
    (what the script granted is returned by the caller's give-back, as for a real refusal)."""

    def reservation_from(self, limits: Any, tokens: int, result: list[Any]) -> Reservation:
        real = super().reservation_from(limits, tokens, result)
        if real.granted:
            self.reconcile(real, 0)
        return Reservation(False, 42.0, tokens, tuple(limits), blocker=KEY)


def _runtime(r: redis.Redis, clock: Clock, provider: ScriptedProvider, limiter: RateLimiter | None = None,
             cancel: bool = False) -> Any:  # fmt: skip
    def call(panel_id: str | None, make: Callable[[], Awaitable[T]]) -> T:
        if cancel:
            raise Cancelled(panel_id or "", sent=True)
        return asyncio.run(make())  # type: ignore[arg-type]

    return SimpleNamespace(
        registry=Registry.load(),
        breaker=CircuitBreaker(r, CONFIG, clock=clock),
        limiter=limiter or RateLimiter(r, clock=clock),
        budget=Budget(r),
        settings=SimpleNamespace(call_timeout_s=5.0, result_ttl_s=3600),
        provider=lambda name: provider,
        call=call,
        redis=r,
    )


def _half_open(rt: Any, clock: Clock) -> None:
    for _ in range(2):
        rt.breaker.record(rt.breaker.allow(KEY), ok=False)
    clock.advance(CONFIG.open_s)
    assert rt.breaker.state(KEY) == "half_open"


def _probe_slot_is_free(rt: Any) -> bool:
    return rt.breaker.snapshot(KEY)["probes_in_flight"] == 0


def test_a_probe_refused_by_the_limiter_frees_its_slot_at_once(r: redis.Redis, clock: Clock) -> None:
    rt = _runtime(r, clock, ScriptedProvider([_answer()]), limiter=RefusingLimiter(r, clock=clock))
    _half_open(rt, clock)
    request = ChatRequest(model=MODEL, messages=MESSAGES)
    with pytest.raises(RateLimitWait):
        calls._attempt(rt, None, MODEL, request, MESSAGES, time.time() + 5, None)
    assert _probe_slot_is_free(rt)
    assert rt.breaker.state(KEY) == "half_open"  # no outcome counted: the provider was never asked
    rt.limiter = RateLimiter(r, clock=clock)
    assert calls._attempt(rt, None, MODEL, request, MESSAGES, time.time() + 5, None).text == "yes"
    assert rt.breaker.state(KEY) == "closed"  # the next probe got the slot and closed it


def test_without_the_release_the_slot_would_stay_taken_until_its_lease_ends(r: redis.Redis, clock: Clock) -> None:
    """The counterfactual, so the test above can fail: a permit neither recorded nor released."""
    rt = _runtime(r, clock, ScriptedProvider([]))
    _half_open(rt, clock)
    rt.breaker.allow(KEY)  # taken and dropped, as _attempt did before the fix
    assert not _probe_slot_is_free(rt)
    clock.advance(CONFIG.probe_lease_s - 1)
    assert not _probe_slot_is_free(rt)


def test_a_probe_refused_by_the_budget_frees_its_slot(r: redis.Redis, clock: Clock) -> None:
    rt = _runtime(r, clock, ScriptedProvider([_answer()]))
    _half_open(rt, clock)
    spend = calls.Spend(job_id="j1", tenant="t1", cap_usd=1e-9)
    with pytest.raises(BudgetExceeded):
        calls._attempt(rt, None, MODEL, ChatRequest(model=MODEL, messages=MESSAGES), MESSAGES, time.time() + 5, spend)
    assert _probe_slot_is_free(rt)


def test_a_probe_cancelled_by_the_panel_frees_its_slot_and_refunds_its_tokens(r: redis.Redis, clock: Clock) -> None:
    rt = _runtime(r, clock, ScriptedProvider([_answer()]), cancel=True)
    _half_open(rt, clock)
    spec = rt.registry.model(MODEL)
    with pytest.raises(Cancelled):
        calls._attempt(
            rt, "panel-1", MODEL, ChatRequest(model=MODEL, messages=MESSAGES), MESSAGES, time.time() + 5, None
        )
    assert _probe_slot_is_free(rt) and rt.breaker.state(KEY) == "half_open"
    head = rt.limiter.headroom(Limit(KEY, spec.rpm, spec.tpm))
    assert head["tokens"] == spec.tpm  # the whole estimate came back: nothing was used


def test_a_failing_probe_is_recorded_not_released_and_reopens(r: redis.Redis, clock: Clock) -> None:
    rt = _runtime(r, clock, ScriptedProvider([ProviderUnavailable("fireworks", "503 from upstream", status=503)]))
    _half_open(rt, clock)
    with pytest.raises(ProviderUnavailable):
        calls._attempt(rt, None, MODEL, ChatRequest(model=MODEL, messages=MESSAGES), MESSAGES, time.time() + 5, None)
    assert rt.breaker.state(KEY) == "open"


def test_release_ignores_ordinary_permits_and_stale_generations(r: redis.Redis, clock: Clock) -> None:
    cb = CircuitBreaker(r, CONFIG, clock=clock)
    cb.release(cb.allow(KEY))  # closed: nothing held, nothing to free, no state change
    assert cb.snapshot(KEY)["calls"] == 0
    for _ in range(2):
        cb.record(cb.allow(KEY), ok=False)
    clock.advance(CONFIG.open_s)
    stale = cb.allow(KEY)
    cb.record(stale, ok=False)  # reopens: a new generation
    clock.advance(CONFIG.open_s)
    fresh = cb.allow(KEY)
    cb.release(stale)  # must not free the new generation's slot
    assert cb.snapshot(KEY)["probes_in_flight"] == 1
    cb.release(fresh)
    assert cb.snapshot(KEY)["probes_in_flight"] == 0


class RecordingLimiter(RateLimiter):
    """The real limiter, remembering how many tokens each acquire reserved."""

    reserved: list[int]

    def acquire_step(self, limits: Any, tokens: int) -> Any:
        self.reserved = [*getattr(self, "reserved", []), tokens]
        return super().acquire_step(limits, tokens)


def test_the_limiter_reserves_no_more_output_than_the_model_may_write(r: redis.Redis, clock: Clock) -> None:
    limiter = RecordingLimiter(r, clock=clock)
    rt = _runtime(r, clock, ScriptedProvider([_answer(), _answer()]), limiter=limiter)
    request = ChatRequest(model=MODEL, messages=MESSAGES)
    calls._attempt(rt, None, MODEL, request, MESSAGES, time.time() + 5, None)
    doc = yaml.safe_load(SHIPPED_MODELS.read_text())
    doc["models"][MODEL]["max_output_tokens"] = 16  # a classifier's one-word answers
    rt.registry = Registry.model_validate(doc)
    calls._attempt(rt, None, MODEL, request, MESSAGES, time.time() + 5, None)
    assert limiter.reserved == [calls.estimate_tokens(MESSAGES), calls.estimate_tokens(MESSAGES, output_tokens=16)]


def _open(rt: Any) -> None:
    for _ in range(CONFIG.min_calls):
        rt.breaker.record(rt.breaker.allow(KEY), ok=False)
    assert rt.breaker.state(KEY) == "open"


def test_a_fallback_already_in_the_panel_is_passed_over_and_the_member_gives_up_its_vote(r: redis.Redis,
                                                                                       clock: Clock) -> None:  # fmt: skip
    provider = ScriptedProvider([_answer()])
    rt = _runtime(r, clock, provider)
    _open(rt)
    fallback = Registry.load().model(MODEL).fallbacks[0]
    out = calls.call_model(rt, None, MODEL, MESSAGES, time.time() + 5, in_panel=frozenset({fallback}))
    assert out.completion is None and provider.requests == []  # the panel's own member is not asked twice
    assert out.error is not None and f"fallback {fallback} already in the panel: vote given up" in out.error
    out = calls.call_model(rt, None, MODEL, MESSAGES, time.time() + 5)  # a panel without it: fail over
    assert out.completion is not None and (out.model, out.failed_over_from) == (fallback, MODEL)


def test_an_attempts_record_goes_with_its_admission_and_only_a_sent_request_keeps_it(r: redis.Redis,
                                                                                    clock: Clock) -> None:  # fmt: skip
    """The in_flight record rides in the admission's round trip: a refused admission (nothing
    sent) leaves none; a sent request's record stays, closed with its outcome, its fields kept."""
    request = ChatRequest(model=MODEL, messages=MESSAGES)
    rt = _runtime(r, clock, ScriptedProvider([_answer()]), limiter=RefusingLimiter(r, clock=clock))
    with pytest.raises(RateLimitWait):
        calls._attempt(rt, "job-1.1", MODEL, request, MESSAGES, time.time() + 5, None, member="m0")
    spend = calls.Spend(job_id="j1", tenant="t1", cap_usd=1e-9)
    rt.limiter = RateLimiter(r, clock=clock)
    with pytest.raises(BudgetExceeded):
        calls._attempt(rt, "job-1.1", MODEL, request, MESSAGES, time.time() + 5, spend, member="m0")
    assert attempts.of_panel(r, "job-1.1") == {}
    scripted = ScriptedProvider([ProviderUnavailable("fireworks", "503 from upstream", status=503), _answer()])
    rt.provider = lambda name: scripted
    with pytest.raises(ProviderUnavailable):
        calls._attempt(rt, "job-1.1", MODEL, request, MESSAGES, time.time() + 5, None, member="m0")
    assert calls._attempt(rt, "job-1.1", MODEL, request, MESSAGES, time.time() + 5, None, member="m0").text == "yes"
    got = attempts.of_panel(r, "job-1.1")["m0"]
    assert [(a.status, a.model, a.member) for a in got] == [("failed", MODEL, "m0"), ("in_flight", MODEL, "m0")]
    assert got[0].error is not None and "503" in got[0].error and got[0].latency_ms >= 0
    assert got[1].tokens_in == billing.input_tokens("openai", request) == 3  # "Is 7 prime?" as sent: 11 chars
