"""One model call as the fleet makes it: budget hold, breaker, fleet-wide limit, cancellable
call, retries with jitter bounded by the deadline, failover to the registry's fallbacks.

    caller = ModelCaller(runtime)       # anything with the `CallIO` parts
    outcome = caller(panel_id, "gpt-4o-mini", messages, deadline=time.time() + 60)
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, Protocol, TypeVar

import redis

from workers import metrics
from workers.budget import Budget, Hold, Spend
from workers.errors import BudgetExceeded, Cancelled
from workers.limits import (
    BreakerOpen,
    CircuitBreaker,
    Limit,
    Permit,
    RateLimiter,
    RateLimitWait,
    Reservation,
    TokensExceedLimit,
)
from workers.limits.steps import Owed, run_steps
from workers.panel import attempts
from workers.panel.outage import through_redis_outage
from workers.providers import billing
from workers.providers.base import ChatRequest, Completion, Provider, ProviderError, RateLimited
from workers.providers.caching import limited_tokens, price
from workers.providers.retry import RetryPolicy
from workers.registry import Registry

log = logging.getLogger("panel.calls")
RETRY = RetryPolicy(max_attempts=4, base_delay=0.5)  # per model: waits up to 0.5, 1, 2 s (full jitter), Retry-After obeyed
MAX_ATTEMPTS = RETRY.max_attempts
EXPECTED_OUTPUT_TOKENS = 256  # reserved with the limiter up front; reconciled with the real usage


T = TypeVar("T")
__all__ = ["Admitted", "CallIO", "CallOutcome", "ModelCaller", "Spend", "call_model", "estimate_tokens"]


class CallIO(Protocol):
    """What a call needs from its process (the runtime): prices and limits, the shared budget,
    breaker and limiter, the provider clients, and the IO loop that races a call against its
    panel's decision."""

    registry: Registry
    budget: Budget
    breaker: CircuitBreaker
    limiter: RateLimiter
    settings: Any  # .call_timeout_s, .result_ttl_s
    redis: Any  # attempt records (workers/panel/attempts.py), when a member is named

    def provider(self, name: str) -> Provider: ...

    def call(self, panel_id: str | None, make: Callable[[], Awaitable[T]]) -> T: ...


@dataclass(frozen=True)
class CallOutcome:
    model: str
    completion: Completion | None
    error: str | None = None
    failed_over_from: str | None = None
    attempts: int = 0


def estimate_tokens(messages: list[dict[str, str]], output_tokens: int = EXPECTED_OUTPUT_TOKENS) -> int:
    """Input at four characters a token, plus `output_tokens` expected back."""
    return tokens_for_size(sum(len(m["content"]) for m in messages), len(messages), output_tokens)


def tokens_for_size(chars: int, turns: int, output_tokens: int) -> int:
    """`estimate_tokens` from the prompt's size alone (a member's admission ask carries no prompt)."""
    return chars // 4 + 8 * turns + output_tokens


Opened = tuple[str, dict[str, Any]]  # an attempt's id and its in_flight record (attempts.py)
# a call's admission, granted: breaker permit, budget hold, limiter grant, the attempt's record
Admitted = tuple[Permit, Hold | None, Reservation, Opened | None]


def _admit(rt: CallIO, model: str, messages: list[dict[str, str]], deadline: float, spend: Spend | None,
           panel_id: str | None = None, member: str | None = None, sent_tokens: int = 0) -> Admitted:  # fmt: skip
    """Breaker permit, budget hold and limiter grant, asked for together in one round trip. A
    refusal by any gives back what the others granted (a budget hold is refunded, limiter tokens
    returned, a probe slot released; an ordinary permit holds nothing), then raises BreakerOpen,
    BudgetExceeded or TokensExceedLimit, in that order; a limiter that asks to wait is waited
    for, holding nothing, and asked again (RateLimitWait if the wait would pass `deadline`).

    With a `member`, the attempt's in_flight record (attempts.py) goes in the same round trip, so
    it is written before the request leaves; a refusal or a wait removes it (nothing was sent).
    Its tokens_in, `sent_tokens`, is what a cut-off or lost call is charged (providers/billing.py)."""
    spec = rt.registry.model(model)
    key = f"{spec.provider}:{model}"
    limits = [Limit(key, spec.rpm, spec.tpm, spec.burst_s)]
    # a model cannot answer past its max_tokens: reserving more only idles capacity, and a
    # refund comes back only while the reservation is still ahead of the clock
    tokens = estimate_tokens(messages, output_tokens=min(EXPECTED_OUTPUT_TOKENS, spec.max_output_tokens))
    if tokens > spec.tpm:
        raise TokensExceedLimit(key, tokens, spec.tpm)
    want: Hold | None = None
    if spend is not None:  # worst case: estimated input plus the model's whole output budget
        worst = rt.registry.cost(model, estimate_tokens(messages), spec.max_output_tokens, spend.batch)
        want = rt.budget.reserve_hold(spend.job_id, spend.tenant, spend.cap_usd, worst)
    while True:
        opened: Opened | None = None
        if panel_id is not None and member is not None:
            opened = attempts.opening(member, model, sent_tokens, bool(spend and spend.batch))
        pid = panel_id or ""
        together = opened is not None and rt.redis is rt.budget.r  # the attempts and the limits share a Redis
        try:
            got = run_steps(rt.budget.r, [rt.breaker.allow_step(key), rt.budget.reserve_step(want) if want else None,
                                          rt.limiter.acquire_step(limits, tokens)],
                            also=_queue_opened(pid, opened, rt.settings.result_ttl_s) if together and opened else None)  # fmt: skip
        except BaseException:
            if together and opened is not None:  # the record may have been written: nothing was sent
                _drop_attempt(rt, pid, opened[0])
            raise
        refusal: Exception | None = None
        permit = hold = reservation = None
        try:
            permit = rt.breaker.permit_from(key, got[0])
        except BreakerOpen as e:
            refusal = e
        try:
            hold = rt.budget.hold_from(want, got[1]) if want else None
        except BudgetExceeded as e:
            refusal = refusal or e
        try:
            reservation = rt.limiter.reservation_from(limits, tokens, got[2])
        except TokensExceedLimit as e:
            refusal = refusal or e
        if refusal is None and reservation is not None and reservation.granted and permit is not None:
            if opened is not None and not together:
                try:
                    through_redis_outage(partial(_write_opened, rt, pid, opened))
                except BaseException:
                    rt.limiter.reconcile(reservation, 0)
                    if hold is not None:
                        rt.budget.settle(hold, 0.0)
                    rt.breaker.release(permit)
                    raise
            return permit, hold, reservation, opened
        if together and opened is not None:
            _drop_attempt(rt, pid, opened[0])
        if reservation is not None and reservation.granted:
            rt.limiter.reconcile(reservation, 0)
        if hold is not None:
            rt.budget.settle(hold, 0.0)
        if permit is not None:
            rt.breaker.release(permit)
        if refusal is not None:
            raise refusal
        assert reservation is not None
        if time.time() + reservation.wait_s > deadline:
            raise RateLimitWait(reservation.blocker, reservation.wait_s)
        time.sleep(reservation.wait_s + random.uniform(0, min(0.05, reservation.wait_s / 10)))


def _queue_opened(panel_id: str, opened: Opened, ttl_s: int) -> Callable[[Any], object]:
    # the result TTL, as the panel's own: an attempt opened just after its job was finalised (a
    # late member) must not give the panel's attempts back the 7-day TTL finalise took away
    return lambda pipe: attempts.queue_begin(pipe, panel_id, *opened, ttl_s=ttl_s)


def _write_opened(rt: CallIO, panel_id: str, opened: Opened) -> None:
    pipe = rt.redis.pipeline(transaction=False)
    attempts.queue_begin(pipe, panel_id, *opened, ttl_s=rt.settings.result_ttl_s)
    pipe.execute()


def _drop_attempt(rt: CallIO, panel_id: str, aid: str) -> None:
    """Remove the record of an attempt never sent; left behind (Redis gone), the receipt shows it
    as "lost in flight, may be billed": an overstatement, never a bill missed."""
    try:
        attempts.drop(rt.redis, panel_id, aid)
    except redis.RedisError as e:
        log.warning("attempt %s of panel %s never sent, its record left in flight: %s", aid, panel_id, e)


def _attempt(rt: CallIO, panel_id: str | None, model: str, request: ChatRequest,
             messages: list[dict[str, str]], deadline: float, spend: Spend | None,
             member: str | None = None, owed: Owed | None = None, admitted: Admitted | None = None) -> Completion:  # fmt: skip
    """One attempt: breaker permit, budget hold, limiter grant, the call; every hold released or
    settled whatever happens. `admitted`: granted already, with the member's start
    (workers/panel/admission.py): not asked again. Raises BreakerOpen, BudgetExceeded, RateLimitWait, ProviderError, Cancelled.
    With `owed`, an answer's settlement is handed over in it instead of sent here (the member's
    record carries it: workers/panel/chord.py `land`, which sends it once either way).

    A permit whose call never reported (the budget or the limiter refused it, the panel was
    decided, Redis failed) is released, not recorded: it says nothing about the provider, and a
    half-open probe left unreleased would block every other probe until its lease expired."""
    spec = rt.registry.model(model)
    key = f"{spec.provider}:{model}"
    permit: Permit | None
    hold: Hold | None
    reservation: Reservation | None
    sent = billing.input_tokens(rt.registry.provider_of(model).api, request) if member is not None else 0
    permit, hold, reservation, opened = admitted or _admit(rt, model, messages, deadline, spend, panel_id, member, sent)
    pid = panel_id or ""
    ended: Callable[[Any], object] | None = None  # the attempt's closing record, sent with the give-back
    failed_ok: bool | None = None  # a provider error's breaker outcome, recorded with the give-back
    cut_off = False  # cancelled by the decision: with `owed`, the give-back goes with the cut-off record
    try:  # the attempt's in_flight record went with the admission (attempts.py)
        try:
            completion = rt.call(panel_id, lambda: rt.provider(spec.provider).complete(request))
        except Cancelled as c:
            c.tokens_in = sent if c.sent else 0  # what the member's record charges
            cut_off = True
            if opened is not None:
                ended = partial(_queue_end, pid, opened, "cancelled", sent=c.sent, **({} if c.sent else {"tokens_in": 0}))
            raise
        except ProviderError as e:
            if opened is not None:
                ended = partial(_queue_end, pid, opened, "failed", error=str(e)[:300], tokens_in=0)
            failed_ok = not e.retryable or isinstance(e, RateLimited)
            if isinstance(e, RateLimited):
                metrics.RATE_LIMITED.labels(spec.provider, model).inc()
                rt.limiter.pause(key, e.retry_after or 1.0)
            raise
        # answered: reconcile the tokens, record the success, settle the spend, in one round trip;
        # a paid answer must not be dropped by a Redis restart (it would be bought again). Both use
        # the cached/uncached split the provider reported.
        actual = price(rt.registry, model, completion, spend.batch) if spend else 0.0
        used = limited_tokens(rt.registry.provider_of(model).api, completion)
        steps = [rt.limiter.reconcile_step(reservation, used),
                 rt.breaker.record_step(permit, ok=True), rt.budget.settle_step(hold, actual) if hold else None]  # fmt: skip
        permit = hold = reservation = None  # settled, whatever happens below
        if owed is not None:  # owed from here on: sent with the member's record, or alone (Owed.send)
            owed.r, owed.steps, owed.sent = rt.budget.r, steps, False
            return completion
        through_redis_outage(lambda: run_steps(rt.budget.r, steps))
        return completion
    finally:  # no answer (refused, failed, cancelled, Redis gone): give back what is still held, the
        # breaker's outcome of a failed call and the attempt's closing record with it, one round trip
        try:
            back = [rt.limiter.reconcile_step(reservation, 0) if reservation is not None else None,
                    rt.budget.settle_step(hold, 0.0) if hold is not None else None,
                    rt.breaker.record_step(permit, ok=failed_ok) if permit is not None and failed_ok is not None else None]  # fmt: skip
            if back[2] is not None:
                permit = None  # recorded
            together = rt.redis is rt.budget.r  # the attempts and the limits share a Redis
            if cut_off and owed is not None and together:  # owed: sent with the member's cut-off record
                owed.r, owed.steps, owed.also, owed.sent = rt.budget.r, back, ended, False
            elif any(back) or (ended is not None and together):
                through_redis_outage(lambda: run_steps(rt.budget.r, back, also=ended if together else None))
            if ended is not None and not together:
                ended(rt.redis)
        finally:
            if permit is not None:
                rt.breaker.release(permit)


def _queue_end(panel_id: str, opened: Opened, status: str, pipe: Any, **fields: Any) -> None:
    attempts.queue_end(pipe, panel_id, opened[0], status, opened[1], **fields)


def _one_model(rt: CallIO, panel_id: str | None, model: str, messages: list[dict[str, str]], deadline: float,
               json_mode: bool, spend: Spend | None, logprobs: bool = False,
               member: str | None = None, owed: Owed | None = None,
               admitted: Admitted | None = None) -> tuple[Completion | None, str | None, int]:  # fmt: skip
    """Retry one model until success, a non-retryable error, or the deadline. Raises BreakerOpen.
    `admitted`: the first attempt's admission, granted already."""
    spec = rt.registry.model(model)
    timeout = max(1.0, min(rt.settings.call_timeout_s, deadline - time.time()))
    request = ChatRequest(model=spec.wire_model, messages=messages, max_tokens=spec.max_output_tokens,
                          json_mode=json_mode, logprobs=logprobs, timeout_s=timeout)  # fmt: skip
    last_error = "no attempt made"
    for attempt in range(1, MAX_ATTEMPTS + 1):
        try:
            first, admitted = admitted, None
            return _attempt(rt, panel_id, model, request, messages, deadline, spend, member, owed, first), None, attempt
        except BreakerOpen as e:
            if attempt > 1:  # it opened while this call retried: keep the call's last error in the reason
                e.add_note(last_error)
            raise
        except (BudgetExceeded, TokensExceedLimit) as e:  # no retry or fallback can fix these
            return None, str(e), attempt
        except RateLimitWait as e:
            return None, f"rate limit wait would pass the deadline ({e})", attempt
        except ProviderError as e:
            last_error = str(e)
            wait = RETRY.wait(attempt, e, time.time(), deadline)
            if wait is None:
                return None, last_error, attempt
            time.sleep(wait)
    return None, last_error, MAX_ATTEMPTS


def call_model(rt: CallIO, panel_id: str | None, model: str, messages: list[dict[str, str]], deadline: float,
               json_mode: bool = False, spend: Spend | None = None, logprobs: bool = False,
               member: str | None = None, in_panel: frozenset[str] = frozenset(),
               owed: Owed | None = None, admitted: Admitted | None = None) -> CallOutcome:  # fmt: skip
    """Call `model`, failing over along its fallbacks while their breakers are open. Raises Cancelled.
    `admitted`: the first attempt's admission at `model`, granted with the member's start.
    With `owed`, an answer's settlement (tokens, breaker, budget) is left in it for the caller to
    send with its record (`_attempt`).
    With a `member`, every provider attempt is recorded (workers/panel/attempts.py). A fallback in
    `in_panel` (the other members' models) is passed over: one model never votes twice in a
    quorum; with no distinct fallback left the member gives up its vote, and its error says so."""
    tried: list[str] = []
    causes: list[str] = []
    passed_over: list[str] = []
    for candidate in [model, *rt.registry.model(model).fallbacks]:
        if candidate in tried:
            continue
        if candidate != model and candidate in in_panel:
            passed_over.append(candidate)
            continue
        tried.append(candidate)
        try:
            first, admitted = admitted, None
            completion, error, n = _one_model(rt, panel_id, candidate, messages, deadline, json_mode, spend, logprobs,
                                              member, owed, first)  # fmt: skip
        except BreakerOpen as e:
            log.info("breaker open for %s (%s); failing over", candidate, e)
            causes += getattr(e, "__notes__", [])
            continue
        return CallOutcome(candidate, completion, error, model if candidate != model else None, n)
    after = f" (last error: {'; '.join(causes)})" if causes else ""
    dup = (f"; fallback {', '.join(passed_over)} already in the panel: vote given up (a model never counts "
           "twice in a quorum)") if passed_over else "; no fallback available"  # fmt: skip
    return CallOutcome(model, None, f"circuit open for {', '.join(tried)}{dup}{after}")


class ModelCaller:
    """`call_model` bound to a process's `CallIO`: the `Caller` the panel path is given."""

    def __init__(self, io: CallIO) -> None:
        self.io = io

    def __call__(self, panel_id: str | None, model: str, messages: list[dict[str, str]], deadline: float,
                 json_mode: bool = False, spend: Spend | None = None, logprobs: bool = False,
                 member: str | None = None, in_panel: frozenset[str] = frozenset(),
                 owed: Owed | None = None, admitted: Admitted | None = None) -> CallOutcome:  # fmt: skip
        return call_model(self.io, panel_id, model, messages, deadline, json_mode, spend, logprobs, member, in_panel,
                          owed, admitted)  # fmt: skip
