"""Provider fault matrix on real parts: every fault the simulator's knobs and llmock's scenarios
can script, each on its own model so breakers and knobs never mix, all jobs in flight together.

Specification: every job ends `decided` or `failed` with its reason in the receipt; a transient
fault costs one retry and exactly one paid answer (the simulator's count agrees with the
receipt); a 429 is waited out fleet-wide for its Retry-After (1 s without one); a provider that
keeps failing trips its breaker after `min_calls` failures, fails over to its registry fallback,
is probed when half-open and closes once it answers; llmock's resilience verdict is clean.

Time is compressed: calls time out after 1.5 s, jobs have a 6 s deadline, and the breaker opens
after 3 failures for 3 s (PANEL_BREAKER_*), standing in for a provider down for minutes.

    python3 -m pytest -q tests/reliability/test_fault_matrix.py
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis

from producer.client import PanelClient
from producer.contract import Result
from producer.embedded import free_port
from producer.fleet import SIM_KEY, Fleet
from sim.faults import FaultDice
from sim.knobs import Knobs
from tests.providers.conftest import Llmock
from tests.reliability._support import (
    full_backlog_port,
    llmock_process,
    model_entry,
    openai_provider,
    single_lane_class,
    uid,
    wait_all,
    write_policies,
)
from workers.limits import BreakerConfig, CircuitBreaker

pytestmark = pytest.mark.integration

CALL_TIMEOUT_S = 1.5
DEADLINE_S = 6.0
BREAKER = BreakerConfig(window_s=10.0, min_calls=3, failure_rate=0.5, open_s=3.0)
NO_RETRY_AFTER_PAUSE_S = 1.0  # workers/panel/calls.py pauses a key this long after a bare 429
SLACK_S = 0.05


def dice_name(kind: str, seed: int = 0) -> str:
    """A model name whose seeded fault dice (sim/faults.py) fault its first call and answer its
    second at rate 0.5: a transient body fault, exactly reproducible for the simulator's seed."""
    knobs = Knobs(**{f"rate_{kind}": 0.5})
    for n in range(1000):
        name = f"t-{kind}-{n}"
        dice = FaultDice(seed)
        if dice.draw(name, knobs) is not None and dice.draw(name, knobs) is None:
            return name
    raise AssertionError(f"no seed-{seed} model name faults then answers for {kind}")


@dataclass(frozen=True)
class Case:
    """One row of the matrix: a model on `provider` scripted with `script`, and what must follow."""

    model: str
    provider: str  # sim | simant (its Anthropic API) | mock (llmock) | refused (nothing listens) | blackhole (connect hangs)
    script: dict[str, Any] | list[dict[str, Any]] = field(default_factory=dict)
    outcome: str = "decided"
    reason: str = ""  # failed: a substring the calls' errors name
    requests: int | None = None  # exact provider requests when the case fixes them
    min_gap_after_429_s: float | None = None
    entry: dict[str, Any] = field(default_factory=dict)  # registry overrides
    prompt_chars: int = 0

    @property
    def id(self) -> str:
        return self.model


def _transient_status(status: int, **extra: Any) -> Case:
    return Case(f"t-{status}" + ("-bare" if extra.get("omit_retry_after") else ""), "sim",
                {"fail_next": 1, "fail_status": status, **extra}, requests=2)  # fmt: skip


SIM_CASES = [
    Case("t-429", "sim", {"fail_next": 1, "fail_status": 429, "retry_after_s": 0.6}, requests=2, min_gap_after_429_s=0.6),
    Case("t-429-bare", "sim", {"fail_next": 1, "fail_status": 429, "omit_retry_after": True}, requests=2,
         min_gap_after_429_s=NO_RETRY_AFTER_PAUSE_S),
    _transient_status(500), _transient_status(502), _transient_status(503),
    Case(dice_name("timeout"), "sim", {"rate_timeout": 0.5, "hang_s": 5.0}, requests=2),
    Case(dice_name("malformed"), "sim", {"rate_malformed": 0.5}, requests=2),
    Case(dice_name("truncated"), "sim", {"rate_truncated": 0.5}, requests=2),
    Case(dice_name("empty_choices"), "sim", {"rate_empty_choices": 0.5}, requests=2),
    Case("p-429", "sim", {"rate_429": 1.0, "retry_after_s": 0.5}, "failed", "HTTP 429", min_gap_after_429_s=0.5),
    Case("p-429-bare", "sim", {"rate_429": 1.0, "omit_retry_after": True}, "failed", "HTTP 429",
         min_gap_after_429_s=NO_RETRY_AFTER_PAUSE_S),
    Case("p-500", "sim", {"rate_500": 1.0}, "failed", "HTTP 500"),
    Case("p-502", "sim", {"rate_502": 1.0}, "failed", "HTTP 502"),
    Case("p-503", "sim", {"rate_503": 1.0}, "failed", "HTTP 503"),
    Case("p-timeout", "sim", {"rate_timeout": 1.0, "hang_s": 5.0}, "failed", "ReadTimeout"),
    Case("p-malformed", "sim", {"rate_malformed": 1.0}, "failed", "body is not JSON"),
    Case("p-truncated", "sim", {"rate_truncated": 1.0}, "failed", "RemoteProtocolError"),
    Case("p-empty_choices", "sim", {"rate_empty_choices": 1.0}, "failed", "no choices"),
    Case("p-connect-refused", "refused", outcome="failed", reason="ConnectError"),
    Case("p-connect-timeout", "blackhole", outcome="failed", reason="ConnectTimeout"),
    # Anthropic's wire (the same simulator): its own error shape, 503 sent as 529 overloaded
    Case("a-429", "simant", {"fail_next": 1, "fail_status": 429, "retry_after_s": 0.6}, requests=2, min_gap_after_429_s=0.6),
    Case("a-529", "simant", {"fail_next": 1, "fail_status": 503}, requests=2),
    Case("p-a-529", "simant", {"rate_503": 1.0}, "failed", "HTTP 529"),
    Case("p-a-empty", "simant", {"rate_empty_choices": 1.0}, "failed", "no text block"),
    # a prompt larger than the model's whole tpm can never be granted: refused before any call
    Case("p-over-tpm", "sim", outcome="failed", reason="exceed its tpm", requests=0, entry={"tpm": 500},
         prompt_chars=4000),
]  # fmt: skip

LLMOCK_CASES = [
    Case("l-429", "mock", [{"type": "fail", "status": 429, "retry_after": 0.5, "times": 2}], requests=3,
         min_gap_after_429_s=0.5),
    Case("l-429-bare", "mock", [{"type": "fail", "status": 429, "times": 1}], requests=2,
         min_gap_after_429_s=NO_RETRY_AFTER_PAUSE_S),
    Case("l-500", "mock", [{"type": "fail", "status": 500, "times": 1}], requests=2),
    Case("l-502", "mock", [{"type": "fail", "status": 502, "times": 1}], requests=2),
    Case("l-503", "mock", [{"type": "fail", "status": 503, "times": 1}], requests=2),
    Case("l-read-timeout", "mock", [{"type": "delay", "seconds": 3.0, "times": 1}], requests=2),
]  # fmt: skip

CASES = SIM_CASES + LLMOCK_CASES
DOWN, BACKUP = "d-main", "d-backup"


@dataclass
class Matrix:
    fleet: Fleet
    client: PanelClient
    llmock: Llmock
    jobs: dict[str, str]  # model -> job id
    results: dict[str, Result]
    elapsed_s: float
    breaker: CircuitBreaker


def _policies(dest: Path) -> Path:
    providers = {name: openai_provider(f"RB_{name.upper()}_URL", "RB_KEY") for name in ("sim", "mock", "refused", "blackhole")}
    providers["simant"] = {**openai_provider("RB_SIMANT_URL", "RB_KEY"), "api": "anthropic"}
    models = {c.model: model_entry(c.provider, **c.entry) for c in CASES}
    models[DOWN] = model_entry("sim", fallbacks=[BACKUP])
    models[BACKUP] = model_entry("sim")
    classes = {f"fault_{c.model}": single_lane_class(c.model, DEADLINE_S) for c in CASES}
    classes["fault_down"] = single_lane_class(DOWN, DEADLINE_S)
    return write_policies(dest, providers, models, classes)


def _script(fleet: Fleet, llmock: Llmock) -> None:
    fleet.sim("/_sim/config", {"models": {c.model: c.script for c in SIM_CASES if c.script}})
    behaviours = [{**b, "match": {"model": c.model}} for c in LLMOCK_CASES for b in c.script]  # type: ignore[union-attr]
    llmock.script(*behaviours)


@pytest.fixture(scope="module")
def matrix(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Matrix]:
    with llmock_process() as llmock, full_backlog_port() as blackhole:
        policies = _policies(tmp_path_factory.mktemp("fault-policies"))
        env = {
            "PANEL_POLICIES": str(policies), "PANEL_CALL_TIMEOUT_S": str(CALL_TIMEOUT_S), "RB_KEY": SIM_KEY,
            "RB_SIM_URL": "$SIM_URL/v1", "RB_SIMANT_URL": "$SIM_URL", "RB_MOCK_URL": f"{llmock.origin}/v1",
            "RB_REFUSED_URL": f"http://127.0.0.1:{free_port()}/v1", "RB_BLACKHOLE_URL": f"http://127.0.0.1:{blackhole}/v1",
            "PANEL_BREAKER_WINDOW_S": str(BREAKER.window_s), "PANEL_BREAKER_MIN_CALLS": str(BREAKER.min_calls),
            "PANEL_BREAKER_FAILURE_RATE": str(BREAKER.failure_rate), "PANEL_BREAKER_OPEN_S": str(BREAKER.open_s),
        }  # fmt: skip
        t0 = time.monotonic()
        fleet = Fleet(env=env).start()
        print(f"fault matrix: fleet up in {time.monotonic() - t0:.1f}s")
        client = PanelClient(fleet.redis_url)
        try:
            _script(fleet, llmock)
            started = time.monotonic()
            jobs = {c.model: client.submit({"task_class": f"fault_{c.model}",
                                            "prompt": f"{uid(c.model)}: what is 6 times 7?" + "x" * c.prompt_chars})
                    for c in CASES}  # fmt: skip
            done = wait_all(client, list(jobs.values()), timeout=90)
            results = {m: done[jid] for m, jid in jobs.items()}
            print(f"fault matrix: {len(jobs)} jobs ended in {time.monotonic() - started:.1f}s")
            breaker = CircuitBreaker(redis.Redis.from_url(fleet.redis_url), BREAKER)
            yield Matrix(fleet, client, llmock, jobs, results, time.monotonic() - started, breaker)
        finally:
            client.close()
            fleet.stop()


def _sim_requests(fleet: Fleet, model: str) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = fleet.sim(f"/_sim/requests?model={model}")["requests"]  # type: ignore[assignment]
    return sorted(rows, key=lambda r: r["started"])


def _llmock_requests(llmock: Llmock, model: str) -> list[dict[str, Any]]:
    rows = [r for r in llmock.requests() if r.get("model") == model]
    # A reply held past the client's timeout reached nobody: llmock logs it 200, we count it a fault.
    return [{"started": r["started_at"], "ended": r["ended_at"], "status": r["status"],
             "fault": r["fault"] or ("held" if r["duration"] >= CALL_TIMEOUT_S else None)}
            for r in sorted(rows, key=lambda r: r["seq"])]  # fmt: skip


def _gaps_after_429(rows: list[dict[str, Any]]) -> list[float]:
    """For each request that followed a finished 429, how long after that 429 it started."""
    gaps = []
    for before, after in zip(rows, rows[1:], strict=False):
        if before["status"] == 429 and before["ended"] <= after["started"]:
            gaps.append(after["started"] - before["ended"])
    return gaps


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_every_fault_ends_decided_or_failed_with_its_reason_and_pays_at_most_once(matrix: Matrix, case: Case) -> None:
    result = matrix.results[case.model]
    receipt = result.receipt
    assert result.status == case.outcome, (case, result.error, receipt)
    if case.provider in ("sim", "simant"):
        rows = _sim_requests(matrix.fleet, case.model)
    elif case.provider == "mock":
        rows = _llmock_requests(matrix.llmock, case.model)
    else:
        rows = []
    if case.requests is not None:
        assert len(rows) == case.requests, rows
    if case.outcome == "decided":
        assert receipt is not None and result.answer
        (call,) = [c for c in receipt.calls if c.status == "answered"]  # the single lane: one answer, after retries
        assert call.model == case.model and call.failed_over_from is None
        retries = [c for c in receipt.calls if c is not call]  # every failed attempt is in the receipt, unpaid
        assert all(c.status == "failed" and c.cost_usd == 0 and c.error for c in retries), retries
        if rows:  # call for call with what the provider saw
            assert len(receipt.calls) == len(rows), (receipt.calls, rows)
        assert sum(r["status"] == 200 and not r.get("fault") for r in rows) == 1, rows  # one paid answer upstream
        if case.provider in ("sim", "simant"):
            stats = matrix.fleet.sim("/_sim/stats")["models"][case.model]  # type: ignore[index]
            assert stats["answered"] == 1 and stats["tokens_in"] == call.tokens_in, stats
    else:
        assert result.error, result
        assert receipt is not None and [s.lane for s in receipt.lanes] == ["single", "panel"]
        assert "output:call_failed" in receipt.triggers  # the failed single lane escalated once, then failed
        # a call still retrying when the deadline sweep decides its panel is cancelled, not failed
        assert {c.status for c in receipt.calls} <= {"failed", "cancelled"}, receipt.calls
        errors = [c.error or "" for c in receipt.calls if c.status == "failed"]
        assert any(case.reason in e for e in errors), errors
        # the other calls were cut off by what the fault set in motion: an open breaker, or the
        # limiter's 429 pause reaching past the deadline
        assert all(case.reason in e or "circuit open" in e or "rate limit wait" in e for e in errors), errors
        assert not any(r["status"] == 200 and not r.get("fault") for r in rows), rows
        assert all(c.cost_usd == 0 for c in receipt.calls if c.status == "failed")  # no answer, nothing charged
    for gap in _gaps_after_429(rows) if case.min_gap_after_429_s else []:
        assert gap >= case.min_gap_after_429_s - SLACK_S, (gap, rows)
    if case.min_gap_after_429_s:
        assert _gaps_after_429(rows), f"no retry followed a 429: {rows}"


@pytest.mark.parametrize("key", ["sim:p-500", "sim:p-502", "sim:p-503", "sim:p-timeout", "sim:p-malformed", "sim:p-truncated",
                                 "sim:p-empty_choices", "simant:p-a-529", "simant:p-a-empty"])  # fmt: skip
def test_a_provider_failing_every_call_trips_its_breaker_after_min_calls(matrix: Matrix, key: str) -> None:
    rows = _sim_requests(matrix.fleet, key.split(":")[1])
    snap = matrix.breaker.snapshot(key)
    assert snap["state"] in ("open", "half_open"), snap  # it never answered, so it never closed
    # Two lanes of up to 4 attempts each, cut short by the breaker: 3 to open it, at most one
    # half-open probe per open period of the 2 x 6 s the job lived.
    assert BREAKER.min_calls <= len(rows) < 8, rows


@pytest.mark.parametrize("model", ["p-429", "p-429-bare"])
def test_429s_pause_the_limiter_but_never_open_the_breaker(matrix: Matrix, model: str) -> None:
    snap = matrix.breaker.snapshot(f"sim:{model}")
    assert snap["state"] == "closed" and snap["failures"] == 0, snap
    assert len(_sim_requests(matrix.fleet, model)) >= 4  # retried, not cut off


def test_llmock_verdict_finds_no_early_retry_no_storm_and_no_retried_4xx(matrix: Matrix) -> None:
    verdict = matrix.llmock.verdict()
    assert verdict["passed"] and verdict["findings"] == [], verdict
    failures = sum(b["times"] for c in LLMOCK_CASES for b in c.script if b["type"] == "fail")  # type: ignore[union-attr,index]
    assert verdict["faults_injected"] == failures, verdict  # a delay is no fault to llmock: its reply is late, not wrong
    assert verdict["attempts"] == sum(c.requests or 0 for c in LLMOCK_CASES), verdict


def test_transient_faults_leave_their_breakers_closed(matrix: Matrix) -> None:
    for case in CASES:
        if case.outcome == "decided":
            snap = matrix.breaker.snapshot(f"{case.provider}:{case.model}")
            assert snap["state"] == "closed", (case.model, snap)


def test_a_provider_down_for_minutes_fails_over_then_is_probed_and_closes(matrix: Matrix) -> None:
    """The outage in compressed time: the breaker opens after 3 failures; every job fails over to
    the registry fallback; while it is open nobody in the fleet calls the dead model but one
    half-open probe per open period; once the model is back, the next probe closes it.

    Bounds, not a script: on a loaded machine a retry may land after an open period ends."""
    fleet, client, key = matrix.fleet, matrix.client, f"sim:{DOWN}"
    fleet.sim("/_sim/config", {"models": {DOWN: {"down": True}}})

    def run(n: int) -> list[Result]:
        ids = [client.submit({"task_class": "fault_down", "prompt": f"{uid('down')}: 2+2?"}) for _ in range(n)]
        return list(wait_all(client, ids, timeout=60).values())

    def failed_over(res: Result) -> bool:
        answered = [c for c in res.receipt.calls if c.status == "answered"] if res.receipt else []
        return res.status == "decided" and [(c.model, c.failed_over_from) for c in answered] == [(BACKUP, DOWN)]

    def dead_calls() -> int:
        return len(_sim_requests(fleet, DOWN))

    def probes_allowed(since: float) -> int:
        return 1 + int((time.monotonic() - since) / BREAKER.open_s)

    outage = time.monotonic()
    first = run(1)
    assert all(map(failed_over, first)), first
    assert BREAKER.min_calls <= dead_calls() <= BREAKER.min_calls + probes_allowed(outage)
    assert matrix.breaker.state(key) in ("open", "half_open")

    before, since = dead_calls(), time.monotonic()
    while_open = run(4)
    assert all(map(failed_over, while_open)), while_open
    assert dead_calls() - before <= probes_allowed(since) - 1  # fleet-wide: none but a probe per period

    time.sleep(BREAKER.open_s + 0.2)
    before = dead_calls()
    probed = run(1)  # half-open: the probe finds it still down and reopens it; the job fails over
    assert all(map(failed_over, probed)), probed
    assert dead_calls() == before + 1 and matrix.breaker.state(key) == "open"

    fleet.sim("/_sim/config", {"models": {DOWN: {"down": False}}})
    time.sleep(BREAKER.open_s + 0.2)
    (healed,) = run(1)
    assert healed.status == "decided" and healed.receipt is not None
    assert [(c.model, c.failed_over_from) for c in healed.receipt.calls] == [(DOWN, None)]
    assert matrix.breaker.state(key) == "closed"
    statuses = [r["status"] for r in _sim_requests(fleet, DOWN)]
    assert statuses[-1] == 200 and set(statuses[:-1]) == {503}, statuses
