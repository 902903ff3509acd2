"""Outage drill on real parts: a provider starts failing under concurrent traffic from several
worker processes, its breaker opens fleet-wide after a bounded number of failed calls, traffic
fails over to the registry fallback (receipts say so), and once the provider is back the
half-open probe closes the breaker and traffic returns. No job is lost.

Time is compressed: the breaker opens after MIN_CALLS failures in a 10 s window and stays open
OPEN_S seconds (PANEL_BREAKER_*), calls time out after 1 s (PANEL_CALL_TIMEOUT_S); the models,
their fallbacks and the task classes come from a test policies dir (PANEL_POLICIES).

Bound on calls to the failing model: every member thread of the fleet may hold a permit of the
closed breaker when the MIN_CALLS-th failure opens it, so at most MIN_CALLS - 1 + THREADS calls
fail before it opens, and after that only half-open probes reach it, PROBES per OPEN_S spell.
"""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import yaml

from producer.client import PanelClient
from producer.contract import Result
from producer.embedded import RedisProcess
from producer.fleet import Fleet, WorkerSpec
from workers.limits import BreakerConfig, CircuitBreaker

MIN_CALLS, OPEN_S, PROBES = 4, 2.0, 1
BREAKER = BreakerConfig(window_s=10.0, min_calls=MIN_CALLS, failure_rate=0.5, open_s=OPEN_S, probes=PROBES)
TIERS, THREADS_PER_TIER = 2, 4
THREADS = TIERS * THREADS_PER_TIER
BACKUP = "drill-backup"
JOBS = 12  # more jobs than member threads: some find the breaker already open
# How each outage looks on the wire, as simulator knobs, and how it is undone.
OUTAGES = {
    "drill-5xx": ({"down": True}, {"down": False}),  # every call a 503
    "drill-timeout": ({"rate_timeout": 1.0, "hang_s": 5.0}, {"rate_timeout": 0.0}),  # every call hangs past 1 s
}


def _model(fallbacks: list[str]) -> dict[str, object]:
    return {"provider": "fireworks", "tier": "economy", "price": {"input": 0.1, "output": 0.1},
            "batch_price": {"input": 0.05, "output": 0.05}, "rpm": 100_000, "tpm": 10_000_000,
            "context_window": 32_000, "max_output_tokens": 64, "fallbacks": fallbacks}  # fmt: skip


def _single_lane(model: str) -> dict[str, object]:
    return {"default_lane": "single", "single": {"model": model}, "deadline_s": 60,
            "panel": {"members": [model], "quorum": 1, "agreement": {"rule": "exact"}, "arbiter": model}}  # fmt: skip


def write_policies(root: Path) -> Path:
    shipped = yaml.safe_load((Path(__file__).resolve().parents[2] / "policies" / "models.yaml").read_text())
    models = {name: _model([BACKUP]) for name in OUTAGES} | {BACKUP: _model([])}
    (root / "models.yaml").write_text(yaml.safe_dump({"providers": shipped["providers"], "models": models}))
    tasks = {"defaults": {"deadline_s": 60}, "task_classes": {name: _single_lane(name) for name in OUTAGES}}
    (root / "tasks.yaml").write_text(yaml.safe_dump(tasks))
    return root


@pytest.fixture(scope="module")
def drill_fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    policies = write_policies(tmp_path_factory.mktemp("drill-policies"))
    env = {"PANEL_POLICIES": str(policies), "PANEL_CALL_TIMEOUT_S": "1",
           "PANEL_BREAKER_WINDOW_S": str(BREAKER.window_s), "PANEL_BREAKER_MIN_CALLS": str(BREAKER.min_calls),
           "PANEL_BREAKER_FAILURE_RATE": str(BREAKER.failure_rate), "PANEL_BREAKER_OPEN_S": str(BREAKER.open_s)}  # fmt: skip
    workers = [WorkerSpec("control", "control", concurrency=8)]
    workers += [WorkerSpec(f"tier{i}", "llm.economy", concurrency=THREADS_PER_TIER) for i in range(TIERS)]
    fleet = Fleet(workers=workers, env=env)
    # Fleet.start, with more than its minute for workers to come up on a busy shared machine
    fleet.redis = RedisProcess().start()
    fleet.start_sim()
    for w in workers:
        fleet.start_worker(w)
    fleet.wait_ready(timeout=240)
    yield fleet
    fleet.stop()


def _requests(fleet: Fleet, model: str) -> list[int]:
    """Statuses of every request the provider saw for `model` (0: the client gave up waiting)."""
    rows = fleet.sim(f"/_sim/requests?model={model}")["requests"]
    return [int(r["status"]) for r in rows]  # type: ignore[index]


def _run(client: PanelClient, task_class: str, n: int) -> list[Result]:
    ids = [client.submit({"task_class": task_class, "prompt": f"{uuid.uuid4().hex}: is 7 prime?"}) for _ in range(n)]
    return [client.wait(jid, timeout=60) for jid in ids]


def _answered_by(result: Result) -> tuple[str, str | None]:
    assert result.status == "decided" and result.receipt is not None, (result.status, result.error)
    answered = [c for c in result.receipt.calls if c.status == "answered"]
    assert len(answered) == 1, result.receipt.calls
    return answered[0].model, answered[0].failed_over_from


@pytest.mark.parametrize("model", list(OUTAGES))
def test_an_outage_opens_the_breaker_fleet_wide_fails_over_and_a_probe_closes_it(
    drill_fleet: Fleet, model: str
) -> None:
    fleet, (broken, healed) = drill_fleet, OUTAGES[model]
    client = PanelClient(fleet.redis_url)
    breaker = CircuitBreaker(redis.Redis.from_url(fleet.redis_url), BREAKER)
    key = f"fireworks:{model}"
    fleet.sim("/_sim/config", {"models": {model: broken}})

    t0 = time.monotonic()
    outage = _run(client, model, JOBS)
    outage_s = time.monotonic() - t0
    # no job lost, every one answered by the fallback, and its receipt says it failed over
    assert len(outage) == JOBS and {_answered_by(r) for r in outage} == {(BACKUP, model)}
    assert breaker.state(key) != "closed"
    failed = _requests(fleet, model)
    assert failed and all(status != 200 for status in failed)
    spells = math.ceil(outage_s / OPEN_S)
    bound = MIN_CALLS - 1 + THREADS + spells * PROBES
    print(
        f"\n{model}: {len(failed)} calls reached the failing provider (bound {bound}: "
        f"{MIN_CALLS - 1} + {THREADS} threads + {spells} probe spells) while {JOBS} jobs failed over in {outage_s:.1f}s"
    )
    assert MIN_CALLS <= len(failed) <= bound

    # the provider returns: after open_s the first call is the probe; it succeeds and closes the breaker
    fleet.sim("/_sim/config", {"models": {model: healed}})
    time.sleep(max(0.0, breaker.snapshot(key)["retry_in_s"]) + 0.1)
    assert breaker.state(key) == "half_open"
    (probe,) = _run(client, model, 1)
    assert _answered_by(probe) == (model, None)
    assert breaker.state(key) == "closed"
    assert {_answered_by(r) for r in _run(client, model, 4)} == {(model, None)}
    assert _requests(fleet, model)[-5:] == [200] * 5
