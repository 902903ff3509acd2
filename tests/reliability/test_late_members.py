"""Stuck and late members: the deadline sweep decides a panel with what has arrived; a member
that answers after the decision changes nothing, is recorded as `late` in the receipt (its cost
included), and the job is still finalised once.

A stuck member is one parked by the test-only fault point before its call (its worker hung);
a late one is parked after its answer and before its vote (the answer came back, the vote did
not make it in time), then let go once the panel is decided.

    python3 -m pytest -q tests/reliability/test_late_members.py
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest

from producer import keys
from producer.client import PanelClient
from producer.contract import Result
from producer.fleet import Fleet
from tests.reliability.conftest import (
    arm_park,
    assert_decided_once,
    receipt_calls,
    sim_answered,
    sim_models,
    sim_settled,
    uid,
    wait_parked,
)  # fmt: skip
from workers.registry import Registry

REG = Registry.load()
M0, M1, M2 = "qwen2.5-72b-instruct", "qwen2.5-32b-coder-instruct", "llama3.1-70b"  # multiple_choice
DEADLINE_S = 6


def in_seconds(s: float) -> str:
    return (datetime.now(UTC) + timedelta(seconds=s)).isoformat()


def submit_panel(client: PanelClient, job_id: str) -> None:
    client.submit({"id": job_id, "task_class": "multiple_choice", "lane": "panel", "prompt": f"{job_id}: pick\nA) w\nB) x\nC) y",
                   "deadline": in_seconds(DEADLINE_S)})  # fmt: skip


def wait_receipt(client: PanelClient, job_id: str, member: str, status: str, timeout: float = 15.0) -> Result:
    """The job's stored result once `member`'s call in its receipt has `status` (a re-render)."""
    end = time.monotonic() + timeout
    while True:
        res = client.result(job_id)
        calls = {c.member: c.status for c in res.receipt.calls} if res and res.receipt else {}
        if calls.get(member) == status:
            return res  # type: ignore[return-value]
        assert time.monotonic() < end, f"{job_id}: {member} is {calls.get(member)!r}, not {status!r}, after {timeout}s"
        time.sleep(0.05)


@pytest.mark.integration
def test_stuck_members_leave_the_decision_to_the_sweep_and_a_late_answer_changes_nothing(
        rel_fleet: Fleet, rel_client: PanelClient) -> None:  # fmt: skip
    rel_fleet.sim("/_sim/config", {"models": {M0: {"latency_ms": 20, "answer": "B"},
                                              M2: {"latency_ms": 20, "answer": "C"}}})  # fmt: skip
    job_id = uid("late")
    pid = f"{job_id}.1"
    stuck = arm_park(rel_client.redis, "before_call", pid, "m1", every=True)  # its worker hangs before calling
    late = arm_park(rel_client.redis, "after_answer", pid, "m2", every=True)  # answers "C", votes too late
    t0 = time.monotonic()
    submit_panel(rel_client, job_id)
    wait_parked(rel_client.redis, stuck)
    wait_parked(rel_client.redis, late)

    res = rel_client.wait(job_id, timeout=DEADLINE_S + 20)
    decided_after = time.monotonic() - t0
    assert res.status == "decided" and res.answer == "B" and res.receipt is not None
    assert res.receipt.decision == "sweep" and decided_after >= DEADLINE_S - 0.5

    rel_client.redis.hset(late, "release", 1)
    rel_client.redis.hset(stuck, "release", 1)
    res = wait_receipt(rel_client, job_id, "1.m2", "late")
    res = wait_receipt(rel_client, job_id, "1.m1", "cancelled")
    assert res.answer == "B" and res.receipt is not None and res.receipt.decision == "sweep"  # unchanged
    assert rel_client.redis.hget(keys.panel(pid), "answer") == rel_client.redis.hget(keys.votes(pid), "m0")
    calls = {c.member: c for c in res.receipt.calls}
    m2 = calls["1.m2"]
    assert m2.answer_key is not None and m2.tokens_out > 0
    assert m2.cost_usd == pytest.approx(REG.cost(M2, m2.tokens_in, m2.tokens_out))
    assert res.receipt.total_cost_usd == pytest.approx(calls["1.m0"].cost_usd + m2.cost_usd), [
        (c.member, c.status, c.cost_usd, c.error) for c in res.receipt.calls
    ]  # the late call is paid and shown
    assert_decided_once(rel_client, job_id)
    sim_settled(rel_fleet)
    assert receipt_calls([res]) == sim_answered(rel_fleet)  # m0 and the late m2: each answer charged once
    assert sim_models(rel_fleet).get(M1, {}).get("requests", 0) == 0  # the stuck member never called


@pytest.mark.integration
def test_member_answering_after_a_quorum_is_recorded_late_and_changes_nothing(rel_fleet: Fleet,
                                                                             rel_client: PanelClient) -> None:  # fmt: skip
    # m2 answers first and is parked before its vote; m0 and m1 then agree (an in-flight call
    # would be cancelled by the quorum, so the late answer must already be back)
    rel_fleet.sim("/_sim/config", {"models": {M0: {"latency_ms": 400, "answer": "B"}, M1: {"latency_ms": 400, "answer": "B"},
                                              M2: {"latency_ms": 20, "answer": "C"}}})  # fmt: skip
    job_id = uid("late-quorum")
    late = arm_park(rel_client.redis, "after_answer", f"{job_id}.1", "m2", every=True)
    submit_panel(rel_client, job_id)
    wait_parked(rel_client.redis, late)
    res = rel_client.wait(job_id, timeout=20)
    assert res.answer == "B" and res.receipt is not None and res.receipt.decision == "quorum"
    rel_client.redis.hset(late, "release", 1)
    res = wait_receipt(rel_client, job_id, "1.m2", "late")
    assert res.answer == "B" and res.receipt is not None and res.receipt.decision == "quorum"
    assert not any(c.role == "arbiter" for c in res.receipt.calls)  # the dissent arrived too late to matter
    assert_decided_once(rel_client, job_id)
    sim_settled(rel_fleet)
    assert receipt_calls([res]) == sim_answered(rel_fleet)


@pytest.mark.integration
def test_panel_with_every_member_stuck_fails_at_its_deadline_with_the_reason(rel_fleet: Fleet,
                                                                              rel_client: PanelClient) -> None:  # fmt: skip
    job_id = uid("all-stuck")
    parks = [arm_park(rel_client.redis, "before_call", f"{job_id}.1", m, every=True) for m in ("m0", "m1", "m2")]
    submit_panel(rel_client, job_id)
    try:
        res = rel_client.wait(job_id, timeout=DEADLINE_S + 20)
        assert res.status == "failed" and res.receipt is not None and res.receipt.decision == "failed"
        assert res.error == "no member answered before the deadline or all calls failed"
        assert rel_client.redis.llen(keys.done_channel(job_id)) == 1
    finally:
        for key in parks:
            rel_client.redis.hset(key, "release", 1)
    res = wait_receipt(rel_client, job_id, "1.m0", "cancelled")
    assert sim_models(rel_fleet) == {}  # nobody called a provider for it
