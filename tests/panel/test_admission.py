"""A member's admission sent with its start (workers/panel/admission.py): one round trip for the
turn and the admission, and everything granted given back when the member does not call. The
real chord, PanelStore, breaker, budget and limiter scripts (fakeredis with Lua, and a real
redis-server for the round-trip count); only the provider is a stand-in."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, TypeVar

import fakeredis
import pytest
import redis

from producer import keys
from tests.panel.fakes import MODELS, POLICIES, REGISTRY, make_panel, store_job
from workers.budget import Budget
from workers.jobstore import JobStore
from workers.limits import BreakerConfig, CircuitBreaker, Limit, RateLimiter
from workers.panel import attempts
from workers.panel.admission import OPEN_SHA, Admissions, Ask, asks_for
from workers.panel.calls import ModelCaller
from workers.panel.chord import run_member
from workers.panel.ports import Chord
from workers.panel.record import Call
from workers.panel.state import PanelStore
from workers.providers.base import ChatRequest, Completion

T = TypeVar("T")
M0 = MODELS[0]
KEY = f"{REGISTRY.model(M0).provider}:{M0}"
CONFIG = BreakerConfig(window_s=30.0, min_calls=2, failure_rate=0.5, open_s=0.0, probes=1, probe_lease_s=600.0)


@dataclass
class Provider:
    requests: list[ChatRequest] = field(default_factory=list)

    async def complete(self, request: ChatRequest) -> Completion:
        self.requests.append(request)
        return Completion("B", 30, 2, 5.0, request.model, "sim", "stop")


def fleet(r: Any, budget_usd: float | None = None) -> tuple[Chord, Any, Provider]:
    """A chord as a tier process has it, with its admission port (runtime.py builds the same)."""
    provider = Provider()

    def call(panel_id: str | None, make: Callable[[], Awaitable[T]]) -> T:
        return asyncio.run(make())  # type: ignore[arg-type]

    io = SimpleNamespace(registry=REGISTRY, breaker=CircuitBreaker(r, CONFIG), limiter=RateLimiter(r), budget=Budget(r),
                         settings=SimpleNamespace(call_timeout_s=5.0, result_ttl_s=3600), redis=r,
                         provider=lambda name: provider, call=call)  # fmt: skip
    jobs = JobStore(r, POLICIES, 60)
    chord = Chord(store=PanelStore(r), registry=REGISTRY, jobs=jobs, caller=ModelCaller(io), admission=Admissions(io))
    return chord, io, provider


def staged(r: Any) -> tuple[Chord, Any, Provider]:
    """The chord of `fleet`, with job j1 stored and its panel j1.1 made."""
    chord, io, provider = fleet(r)
    store_job(r, "j1")
    make_panel(chord.store)
    return chord, io, provider


def ask_of(chord: Chord, job_id: str, member: str = "m0", **change: Any) -> Ask:
    spec = chord.store.spec(f"{job_id}.1")
    assert spec is not None
    ask = asks_for(chord, spec, spec.members, chord.jobs.load(job_id))[member]
    return Ask(**{**ask.args(), **change})


def nothing_held(r: Any, io: Any, job_id: str) -> None:
    """No budget spent or held, the model's limiter whole, no attempt on record, no probe out."""
    spec = REGISTRY.model(M0)
    assert int(r.get(keys.budget_job("default", job_id)) or 0) == 0
    assert io.limiter.headroom(Limit(KEY, spec.rpm, spec.tpm, spec.burst_s))["tokens"] == spec.tpm
    assert r.hlen(attempts.key(f"{job_id}.1")) == 0
    assert io.breaker.snapshot(KEY)["probes_in_flight"] == 0


@pytest.fixture
def r() -> fakeredis.FakeRedis:
    """A Redis whose scripts a member has run before (a fresh one's first speculation finds
    none: it gives back, the usual path loads them; `test_..._redis_lost` covers that)."""
    r = fakeredis.FakeRedis()
    chord, _, _ = fleet(r)
    store_job(r, "warm")
    make_panel(chord.store, job_id="warm")
    run_member(chord, "warm.1", "m0", ask=ask_of(chord, "warm"))
    r.flushdb()  # the scripts stay
    return r


def test_a_member_with_an_ask_calls_on_the_admission_it_sent_with_its_start(r: fakeredis.FakeRedis) -> None:
    chord, io, provider = staged(r)
    asked: list[str] = []
    real = io.limiter.acquire_step
    io.limiter.acquire_step = lambda *a: asked.append("limiter") or real(*a)  # counts the admissions built
    turn = run_member(chord, "j1.1", "m0", ask=ask_of(chord, "j1"))
    assert turn.status == "answered" and len(provider.requests) == 1
    assert asked == ["limiter"]  # once: with the start, not again at the call
    (tried,) = attempts.parse(r.hgetall(attempts.key("j1.1")))["m0"]
    assert tried.status == "in_flight" and tried.tokens_in > 0  # written before the request, as before
    rec = chord.store.call("j1.1", "m0")
    assert rec is not None and rec.status == "answered"
    spent = int(r.get(keys.budget_job("default", "j1")) or 0) / 1e9
    assert spent == pytest.approx(rec.cost_usd)  # the hold settled to the answer's price


def test_a_member_that_finds_its_panel_decided_gives_its_admission_back(r: fakeredis.FakeRedis) -> None:
    chord, io, provider = staged(r)
    ask = ask_of(chord, "j1")
    chord.store.decide("j1.1", "quorum", "B")
    turn = run_member(chord, "j1.1", "m0", ask=ask)
    assert turn.status == "cancelled" and provider.requests == []
    nothing_held(r, io, "j1")


def test_a_redelivered_member_reusing_its_answer_gives_its_admission_back(r: fakeredis.FakeRedis) -> None:
    chord, io, provider = staged(r)
    ask = ask_of(chord, "j1")
    chord.store.put_call("j1.1", Call(member="m0", model=M0, provider="fireworks", tier="workhorse", status="answered",
                                      answer_key="B", text="B"))  # fmt: skip
    turn = run_member(chord, "j1.1", "m0", ask=ask)
    assert turn.status == "reused" and provider.requests == []
    nothing_held(r, io, "j1")


def test_a_member_whose_lease_another_copy_holds_gives_its_admission_back(r: fakeredis.FakeRedis) -> None:
    chord, io, provider = staged(r)
    ask = ask_of(chord, "j1")
    r.set(keys.member_lease("j1.1", "m0"), "another-copy", px=60_000)
    chord.store.decide("j1.1", "quorum", "B")  # so the waiting copy stops at once
    assert run_member(chord, "j1.1", "m0", ask=ask).status == "cancelled"
    assert provider.requests == []
    nothing_held(r, io, "j1")


def test_a_half_open_probe_taken_with_a_start_that_does_not_call_is_released(r: fakeredis.FakeRedis) -> None:
    chord, io, provider = fleet(r)
    for _ in range(2):
        io.breaker.record(io.breaker.allow(KEY), ok=False)
    assert io.breaker.state(KEY) == "half_open"  # open_s is 0: the next permit is the one probe
    store_job(r, "j1")
    make_panel(chord.store)
    ask = ask_of(chord, "j1")
    chord.store.decide("j1.1", "quorum", "B")
    run_member(chord, "j1.1", "m0", ask=ask)
    assert io.breaker.snapshot(KEY)["probes_in_flight"] == 0  # not left to its 600 s lease
    assert io.breaker.state(KEY) == "half_open"  # and no outcome counted


def test_a_refusal_gives_the_rest_back_and_the_call_refuses_as_before(r: fakeredis.FakeRedis) -> None:
    chord, io, provider = fleet(r)
    store_job(r, "j1", budget_usd=1e-9)
    make_panel(chord.store)
    turn = run_member(chord, "j1.1", "m0", ask=ask_of(chord, "j1"))
    rec = chord.store.call("j1.1", "m0")
    assert turn.status == "failed" and rec is not None and "budget" in (rec.error or "")
    assert provider.requests == []
    nothing_held(r, io, "j1")


def test_an_ask_that_differs_from_the_job_is_given_back_and_the_call_asks_again(r: fakeredis.FakeRedis) -> None:
    chord, io, provider = staged(r)
    turn = run_member(chord, "j1.1", "m0", ask=ask_of(chord, "j1", chars=10_000))  # a stale or forged size
    assert turn.status == "answered" and len(provider.requests) == 1
    (tried,) = attempts.parse(r.hgetall(attempts.key("j1.1")))["m0"]  # the given-back record is gone
    rec = chord.store.call("j1.1", "m0")
    assert rec is not None and tried.tokens_in == ask_of(chord, "j1").sent
    spent = int(r.get(keys.budget_job("default", "j1")) or 0) / 1e9
    assert spent == pytest.approx(rec.cost_usd)  # the oversized hold went back whole


def test_an_attempt_script_redis_lost_is_loaded_and_the_record_written_alone(r: fakeredis.FakeRedis) -> None:
    chord, io, provider = staged(r)
    r.script_flush()
    turn = run_member(chord, "j1.1", "m0", ask=ask_of(chord, "j1"))  # the limits' scripts lost too: asked again
    assert turn.status == "answered" and len(provider.requests) == 1
    assert len(attempts.parse(r.hgetall(attempts.key("j1.1")))["m0"]) == 1  # the given-back record is gone
    assert r.script_exists(OPEN_SHA) == [True]  # the next member's record rides with its start again


def test_a_start_that_does_not_call_takes_none_of_its_models_requests_per_minute(r: fakeredis.FakeRedis) -> None:
    """The limiter's grant is one request as well as its tokens. A member that does not call gives
    both back (before: its request stayed taken, one of the model's rpm per start that never
    called, which the usual path never took), and a call whose ask was given back and asked again
    takes one request, not two. On one instant of the limiter's clock: nothing drains meanwhile."""
    chord, io, provider = fleet(r)
    now = time.time()
    io.limiter = RateLimiter(r, clock=lambda: now)
    spec = REGISTRY.model(M0)
    lim = Limit(KEY, spec.rpm, spec.tpm, spec.burst_s)
    full = io.limiter.headroom(lim)
    store_job(r, "j1")
    make_panel(chord.store)
    ask = ask_of(chord, "j1")
    chord.store.decide("j1.1", "quorum", "B")
    assert run_member(chord, "j1.1", "m0", ask=ask).status == "cancelled" and provider.requests == []
    assert io.limiter.headroom(lim) == full
    store_job(r, "j2")
    make_panel(chord.store, job_id="j2")
    turn = run_member(chord, "j2.1", "m0", ask=ask_of(chord, "j2", chars=10_000))  # given back, asked again
    assert turn.status == "answered" and len(provider.requests) == 1
    assert io.limiter.headroom(lim)["requests"] == pytest.approx(full["requests"] - 1)


def test_a_start_whose_reply_was_lost_leaves_no_attempt_on_record(r: fakeredis.FakeRedis) -> None:
    """The start's MULTI ran (its admission granted, the attempt's in_flight record written) but its
    reply was lost: the retry goes without the admission and finds the panel decided meanwhile. The
    record of that never-made attempt goes (before: left in flight, the receipt showed the member
    "lost in flight, may be billed" for a call never sent; the usual path drops it on any error)."""
    chord, io, provider = staged(r)
    ask = ask_of(chord, "j1")
    real = chord.store.turn
    lost: list[bool] = []

    def turn(*a: Any, **kw: Any) -> Any:
        got = real(*a, **kw)
        if not lost:  # ran, then the connection dropped before its reply was read
            lost.append(True)
            chord.store.decide("j1.1", "quorum", "B")
            raise redis.ConnectionError("Connection closed by server.")
        return got

    chord.store.turn = turn  # type: ignore[method-assign]
    assert run_member(chord, "j1.1", "m0", ask=ask).status == "cancelled" and lost
    assert provider.requests == []
    assert r.hlen(attempts.key("j1.1")) == 0


def test_a_released_grant_keeps_a_later_grants_request() -> None:
    """A grant given back after another was granted returns its tokens, not a request: the
    schedule's end is the later grant's, and taking an interval off it would let one request more
    through than the limit (the limiter's bound: tests/limits/test_limiter_bounds.py)."""
    r = fakeredis.FakeRedis()
    now = time.time()
    rl = RateLimiter(r, clock=lambda: now)
    lim = Limit("p:m", rpm=600, tpm=60_000, burst_s=1.0)
    first, second = rl.try_acquire([lim], 100), rl.try_acquire([lim], 100)
    assert first.granted and second.granted
    after_two = rl.headroom(lim)
    step = rl.release_step(first)
    assert step is not None
    step.run()
    got = rl.headroom(lim)
    assert got["requests"] == pytest.approx(after_two["requests"])  # the later grant's end stands
    assert got["tokens"] == pytest.approx(after_two["tokens"] + 100)
    step = rl.release_step(second)
    assert step is not None
    step.run()
    assert rl.headroom(lim)["requests"] == pytest.approx(after_two["requests"] + 1)


def reads(r: redis.Redis) -> int:
    return int(r.info("stats")["total_reads_processed"])


def test_a_members_start_and_admission_are_one_round_trip_on_redis_server(redis_client: redis.Redis) -> None:
    """Counted by the server: the start with its admission, then the record with its vote and the
    answer's settlement: 2 round trips for an answering member (3 without the ask)."""
    counts = {}
    for with_ask in (True, False):
        redis_client.flushdb()
        chord, _, _ = fleet(redis_client)
        job_id = f"j{int(with_ask)}"
        store_job(redis_client, job_id)  # type: ignore[arg-type]
        make_panel(chord.store, job_id=job_id)
        run_member(chord, f"{job_id}.1", "m0", ask=ask_of(chord, job_id))  # warm-up: scripts loaded, spec and job read
        ask = ask_of(chord, job_id, "m1") if with_ask else None
        before = reads(redis_client)
        turn = run_member(chord, f"{job_id}.1", "m1", ask=ask)
        counts[with_ask] = reads(redis_client) - before - 1  # the INFO after counts itself
        assert turn.status == "answered"
    assert counts == {True: 2, False: 3}


def test_a_member_task_accepts_hints_it_does_not_know() -> None:
    """A rolling upgrade: a newer control may send a member kwargs this worker does not know;
    Celery checks a message's arguments against the task's signature (`check_arguments`), and a
    refusal would fail the member."""
    from workers.tasks import member

    check = member.__header__  # what Celery's check_arguments calls with a message's args and kwargs
    check("p1", "m0", admit=None, a_hint_from_a_newer_control={"x": 1})  # no TypeError
    with pytest.raises(TypeError):
        check("p1")  # a missing member id is still refused
