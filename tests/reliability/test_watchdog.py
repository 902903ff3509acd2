"""A member message deleted from the broker: the watchdog sends it again, so the panel decides
within the watchdog bound, not at its deadline, and each answer is paid once.

The tier worker starts only after the deletion, so the message is surely still in its list
(`llm.workhorse`) when the test removes it, as a Redis stop between kombu's BRPOP and its
unacked write would. The remaining two members disagree, so the deleted one decides the panel.

    python3 -m pytest -q -s tests/reliability/test_watchdog.py
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import orjson
import pytest

from producer import keys
from producer.client import PanelClient
from producer.fleet import WorkerSpec
from tests.reliability.conftest import (
    CONTROL,
    assert_decided_once,
    receipt_calls,
    running_fleet,
    sim_answered,
    sim_settled,
    uid,
)  # fmt: skip
from tests.waiting import eventually

TIERS = WorkerSpec("tiers", "llm.economy,llm.workhorse,llm.frontier,llm.batch", concurrency=8)
M0, M1, M2 = "qwen2.5-72b-instruct", "qwen2.5-32b-coder-instruct", "llama3.1-70b"
WATCHDOG_S = 3.0
DEADLINE_S = 300  # the panel would wait this long for the lost member without the watchdog


def member_messages(client: PanelClient, queue: str) -> list[bytes]:
    return [raw for raw in client.redis.lrange(queue, 0, -1) if orjson.loads(raw)["headers"]["task"] == "panel.member"]


@pytest.mark.integration
def test_a_member_message_deleted_from_the_broker_is_sent_again_within_the_watchdog_bound() -> None:
    env = {"PANEL_WATCHDOG_S": str(WATCHDOG_S)}
    with running_fleet(env=env, workers=[CONTROL]) as fleet:
        fleet.sim("/_sim/config", {"models": {M0: {"latency_ms": 30, "answer": "B"}, M1: {"latency_ms": 30, "answer": "C"},
                                              M2: {"latency_ms": 30, "answer": "B"}}})  # fmt: skip
        client = PanelClient(fleet.redis_url)
        job_id = uid("lost-member")
        deadline = datetime.now(UTC) + timedelta(seconds=DEADLINE_S)
        client.submit({"id": job_id, "task_class": "multiple_choice", "lane": "panel", "deadline": deadline.isoformat(),
                       "prompt": f"{job_id}: pick one\nA) w\nB) x\nC) y"})  # fmt: skip
        pid = f"{job_id}.1"
        eventually(lambda: len(member_messages(client, "llm.workhorse")) == 3, "three member messages queued")
        lost_task = eventually(lambda: client.redis.hget(keys.panel(pid), "task:m2"), "m2's task id stored").decode()
        (lost,) = [raw for raw in member_messages(client, "llm.workhorse") if orjson.loads(raw)["headers"]["id"] == lost_task]
        assert client.redis.lrem("llm.workhorse", 1, lost) == 1
        t_lost = time.monotonic()

        fleet.start_worker(TIERS)
        res = client.wait(job_id, timeout=DEADLINE_S / 2)
        to_decision = time.monotonic() - t_lost
        assert res.status == "decided" and res.answer == "B" and res.receipt is not None
        assert res.receipt.decision == "quorum"  # decided by the re-sent member's vote, not the deadline sweep
        assert {c.member: c.status for c in res.receipt.calls} == {"1.m0": "answered", "1.m1": "answered", "1.m2": "answered"}
        assert client.redis.hget(keys.panel(pid), "task:m2").decode() != lost_task  # type: ignore[union-attr]
        assert_decided_once(client, job_id)
        models = sim_settled(fleet)
        assert receipt_calls([res]) == sim_answered(fleet)  # one payment each
        assert all(models[m]["requests"] == 1 for m in (M0, M1, M2)), models
        print(f"\nmember message deleted from the broker: decided {to_decision:.1f} s later "
              f"(watchdog bound {WATCHDOG_S:.0f} s after sending + worker start; deadline {DEADLINE_S} s)")
        client.close()


@pytest.mark.integration
def test_a_run_message_deleted_from_the_broker_is_sent_again_and_the_job_decides() -> None:
    # the Redis-stop drill lost a `panel.run` this way: the job stayed `queued` with no panel, so
    # not even the deadline sweep could see it
    with running_fleet(env={"PANEL_WATCHDOG_S": str(WATCHDOG_S)}, workers=[TIERS]) as fleet:
        fleet.sim("/_sim/config", {"models": {"qwen2.5-32b-coder-instruct": {"latency_ms": 30, "answer": "APPROVE"}}})
        client = PanelClient(fleet.redis_url)
        job_id = uid("lost-run")
        client.submit({"id": job_id, "task_class": "code_review", "prompt": f"{job_id}:\n-teh\n+the"})
        (run,) = eventually(lambda: client.redis.lrange("control", 0, -1), "the panel.run message queued")
        assert orjson.loads(run)["headers"]["id"] == f"run-{job_id}"
        assert client.redis.lrem("control", 1, run) == 1
        t_lost = time.monotonic()
        fleet.start_worker(CONTROL)
        res = client.wait(job_id, timeout=120)
        assert res.status == "decided" and res.answer == "APPROVE"
        assert_decided_once(client, job_id)
        eventually(lambda: client.redis.zscore(keys.JOB_WATCH, job_id) is None, "the watchdog forgets a job that ran")
        print(f"\npanel.run deleted from the broker: decided {time.monotonic() - t_lost:.1f} s later "
              f"(watchdog bound {WATCHDOG_S:.0f} s)")
        client.close()
