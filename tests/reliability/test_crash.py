"""kill -9 of a worker during a member's provider call, at three points: before the call, while
it is in flight, and after the answer is recorded but before the vote. Each time the message
comes back (acks_late; kombu restores it after the visibility timeout), a restarted worker runs
it again, and the job decides exactly once with no answer paid for twice: the receipt's
answered calls equal the simulator's own count of answers it delivered.

    python3 -m pytest -q tests/reliability/test_crash.py
"""

from __future__ import annotations

import time
from collections import Counter

import pytest

from producer import keys
from producer.client import PanelClient
from producer.fleet import Fleet
from tests.reliability.conftest import (
    TIERS,
    arm_park,
    assert_decided_once,
    kill9,
    receipt_calls,
    receipt_requests,
    restart_worker,
    sim_answered,
    sim_models,
    sim_settled,
    uid,
    wait_parked,
)  # fmt: skip
from workers.registry import Registry

REG = Registry.load()
# multiple_choice: three members, quorum 2. m0 and m1 disagree, so the decision needs m2's vote:
# the member whose worker is killed is the one that decides the panel.
M0, M1, M2 = "qwen2.5-72b-instruct", "qwen2.5-32b-coder-instruct", "llama3.1-70b"
IN_FLIGHT_MS = 2500


def configure(fleet: Fleet, m2_latency_ms: float) -> None:
    fleet.sim("/_sim/config", {"models": {
        M0: {"latency_ms": 30, "answer": "B"},
        M1: {"latency_ms": 30, "answer": "C"},
        M2: {"latency_ms": m2_latency_ms, "answer": "B"},
    }})  # fmt: skip


def submit(client: PanelClient, job_id: str) -> str:
    return client.submit(
        {"id": job_id, "task_class": "multiple_choice", "lane": "panel", "prompt": f"{job_id}: pick one\nA) w\nB) x\nC) y"}
    )


def wait_votes(client: PanelClient, panel_id: str, n: int, timeout: float = 20.0) -> None:
    end = time.monotonic() + timeout
    while client.redis.hlen(keys.votes(panel_id)) < n:
        assert time.monotonic() < end, f"{panel_id}: fewer than {n} votes after {timeout}s"
        time.sleep(0.02)


def wait_in_flight(fleet: Fleet, model: str, timeout: float = 20.0) -> None:
    end = time.monotonic() + timeout
    while sim_models(fleet).get(model, {}).get("in_flight", 0) < 1:
        assert time.monotonic() < end, f"no call to {model} in flight after {timeout}s"
        time.sleep(0.02)


@pytest.mark.integration
@pytest.mark.parametrize("point", ["before_call", "during_call", "after_answer"])
def test_worker_killed_mid_member_decides_once_and_pays_each_answer_once(rel_fleet: Fleet, rel_client: PanelClient,
                                                                         point: str) -> None:  # fmt: skip
    configure(rel_fleet, IN_FLIGHT_MS if point == "during_call" else 30)
    job_id = uid(f"crash-{point}")
    panel_id = f"{job_id}.1"
    park = arm_park(rel_client.redis, point, panel_id, "m2") if point != "during_call" else None
    submit(rel_client, job_id)
    wait_votes(rel_client, panel_id, 2)  # m0 and m1 are in: only m2 is on the worker we kill
    if park is not None:
        assert wait_parked(rel_client.redis, park) == rel_fleet.procs[TIERS.name].pid
    else:
        wait_in_flight(rel_fleet, M2)
    t_kill = time.monotonic()
    kill9(rel_fleet, TIERS.name)
    restart_worker(rel_fleet, TIERS)

    res = rel_client.wait(job_id, timeout=60)
    recovered_s = time.monotonic() - t_kill
    assert_decided_once(rel_client, job_id)
    assert res.answer == "B" and res.receipt is not None and res.receipt.decision == "quorum"
    by_member = {c.member: c for c in res.receipt.calls}
    assert [by_member[m].status for m in ("1.m0", "1.m1", "1.m2")] == ["answered", "answered", "answered"]
    assert res.receipt.total_cost_usd == pytest.approx(
        sum(REG.cost(c.model, c.tokens_in, c.tokens_out) for c in res.receipt.calls)
    )

    # No answer paid twice: what the provider delivered is exactly what the receipt charges.
    m2 = sim_settled(rel_fleet)[M2]
    assert receipt_calls([res]) == sim_answered(rel_fleet)
    # Every request the provider saw is a call in the receipt, call for call (the lost one too),
    # and the ledger holds that same receipt (re-rendered together when a late record lands).
    res = rel_client.wait(job_id, timeout=5)
    assert res.receipt is not None
    assert [r for r in rel_client.ledger() if r["job_id"] == job_id] == [res.receipt.model_dump(mode="json")]
    assert receipt_requests([res]) == Counter({m: s["requests"] for m, s in sim_models(rel_fleet).items() if s["requests"]})
    if point == "during_call":  # the call lost with the worker was cut off, unanswered, and made again
        assert m2["requests"] == 2 and m2["answered"] == 1 and m2["by_status"].get("499") == 1, m2
        (lost,) = [c for c in res.receipt.calls if c.status == "lost"]
        assert lost.member == "1.m2" and lost.tokens_in > 0 and "may bill" in (lost.error or "")
        assert lost.cost_usd == pytest.approx(REG.cost(M2, lost.tokens_in, 0))  # its prompt, estimated
    else:  # parked before the call (none made) or after its answer (re-used on redelivery)
        assert m2["requests"] == 1 and m2["answered"] == 1, m2
    print(
        f"\n{point}: redelivered and decided {recovered_s:.1f} s after kill -9 "
        f"(visibility timeout {rel_fleet.env['PANEL_VISIBILITY_TIMEOUT_S']} s)"
    )
