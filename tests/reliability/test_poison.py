"""A poison job, one whose task fails every time, is dead-lettered with its reason after a
bounded number of attempts, never blocks the jobs queued behind it, and `panel status JOB`
shows the reason. Two kinds of poison: the task raises (retried with backoff), and the task
kills its worker process (what a segfault or the OOM killer does; acks_late brings the message
back each time). Both are armed through the test-only hook in `workers/tasks.py`.

    python3 -m pytest -q tests/reliability/test_poison.py
    PANEL_RELIABILITY_FULL=1 python3 -m pytest -q tests/reliability/test_poison.py   # + the worker-killing poison
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import orjson
import pytest

from producer import keys
from producer.client import PanelClient
from producer.fleet import Fleet, WorkerSpec
from tests.reliability.conftest import (
    CONTROL,
    TIERS,
    arm_park,
    assert_decided_once,
    ledger_counts,
    restart_worker,
    running_fleet,
    uid,
    wait_all,
    wait_parked,
)  # fmt: skip
from workers.jobs import DEAD_LETTER
from workers.panel.sweep import MAX_PANEL_FAILURES
from workers.tasks import MAX_ATTEMPTS

SINGLE_MODEL = "qwen2.5-32b-coder-instruct"  # code_review's single lane
# Two control workers, as a deployment would run them: a poison that kills one leaves the other.
CONTROL_B = WorkerSpec("control-b", "control", concurrency=16)


def normal_job(client: PanelClient, tag: str, n: int) -> str:
    return client.submit({"id": f"{tag}-{n}", "task_class": "code_review", "prompt": f"{tag} {n}:\n-teh\n+the"})


def panel_status(fleet: Fleet, job_id: str) -> str:
    """`panel status JOB` of a failed job: exit 1 (documented: 1 = failed / not done), the reason on stdout."""
    out = subprocess.run([sys.executable, "-m", "producer", "--redis-url", fleet.redis_url, "status", job_id],
                         capture_output=True, timeout=60)  # fmt: skip
    assert out.returncode == 1, out.stderr
    return out.stdout.decode().strip()


def dead_letters(client: PanelClient, job_id: str) -> list[dict[str, object]]:
    return [e for e in map(orjson.loads, client.redis.lrange(DEAD_LETTER, 0, -1)) if e["job_id"] == job_id]


def wait_final(client: PanelClient, fleet: Fleet, job_id: str, timeout: float, restart: list[WorkerSpec]) -> None:
    """Until `job_id` is final; restarts any of `restart` that died meanwhile (as Kubernetes would)."""
    end = time.monotonic() + timeout
    while client.redis.hget(keys.job(job_id), "status") not in (b"decided", b"failed"):
        assert time.monotonic() < end, f"{job_id} not final after {timeout}s"
        for spec in restart:
            if fleet.procs[spec.name].poll() is not None:
                restart_worker(fleet, spec)
        time.sleep(0.1)


def check_poison(client: PanelClient, fleet: Fleet, job_id: str, reason: str, normal_ids: list[str]) -> None:
    res = client.result(job_id)
    assert res is not None and res.status == "failed"
    assert res.error is not None and res.error.startswith(
        f"dead-letter: panel.run gave up after {MAX_ATTEMPTS} attempts"
    )
    assert reason in res.error, res.error
    assert int(client.redis.get(keys.test_poison_hits(job_id)) or 0) == MAX_ATTEMPTS  # bounded: ran 3 times
    assert client.redis.llen(keys.done_channel(job_id)) == 1
    (entry,) = dead_letters(client, job_id)
    assert entry["task"] == "panel.run" and entry["attempts"] == MAX_ATTEMPTS and reason in str(entry["reason"])
    assert panel_status(fleet, job_id) == f"failed: {res.error}"
    # Not blocked: the jobs submitted after the poison all decided, and before it was given up.
    ledger = ledger_counts(client)
    for jid in normal_ids:
        done = assert_decided_once(client, jid, ledger)
        assert done.receipt is not None
        submitted = float(client.redis.hget(keys.job(jid), "submitted_at") or 0)
        assert submitted + done.receipt.latency_ms / 1000 < float(entry["at"]), f"{jid} waited for the poison"  # type: ignore[arg-type]


@pytest.mark.integration
def test_poison_that_raises_is_dead_lettered_after_three_attempts_without_blocking(rel_fleet: Fleet,
                                                                                 rel_client: PanelClient) -> None:  # fmt: skip
    rel_fleet.sim("/_sim/config", {"models": {SINGLE_MODEL: {"latency_ms": 30, "answer": "APPROVE"}}})
    poison = uid("poison-raise")
    rel_client.redis.set(keys.test_poison(poison), "raise")
    rel_client.submit({"id": poison, "task_class": "code_review", "prompt": "poison:\n-a\n+b"})
    normal = [normal_job(rel_client, uid("after-raise"), n) for n in range(6)]
    wait_all(rel_client, normal, timeout=60)
    wait_final(rel_client, rel_fleet, poison, timeout=60, restart=[])
    check_poison(rel_client, rel_fleet, poison, "RuntimeError: poison job (test hook)", normal)


@pytest.mark.integration
@pytest.mark.skipif(
    os.environ.get("PANEL_RELIABILITY_FULL") != "1",
    reason="three worker crashes and restarts take ~40 s: PANEL_RELIABILITY_FULL=1 runs it",
)
def test_poison_that_kills_its_worker_is_dead_lettered_after_three_deliveries() -> None:
    with running_fleet(workers=[CONTROL, CONTROL_B, TIERS]) as fleet:
        client = PanelClient(fleet.redis_url)
        fleet.sim("/_sim/config", {"models": {SINGLE_MODEL: {"latency_ms": 30, "answer": "APPROVE"}}})
        poison = uid("poison-exit")
        client.redis.set(keys.test_poison(poison), "exit")
        client.submit({"id": poison, "task_class": "code_review", "prompt": "poison:\n-a\n+b"})
        end = time.monotonic() + 30
        while all(fleet.procs[w.name].poll() is None for w in (CONTROL, CONTROL_B)):  # the first crash
            assert time.monotonic() < end, "the poison never ran"
            time.sleep(0.05)
        normal = [normal_job(client, uid("after-exit"), n) for n in range(6)]
        wait_final(client, fleet, poison, timeout=90, restart=[CONTROL, CONTROL_B])
        wait_all(client, normal, timeout=60)
        check_poison(client, fleet, poison, f"its worker was lost mid-task {MAX_ATTEMPTS} times", normal)
        client.close()


@pytest.mark.integration
def test_unreadable_panel_never_stops_the_deadline_sweep(rel_fleet: Fleet, rel_client: PanelClient) -> None:
    """A panel whose stored spec cannot be parsed (written by an incompatible version, or damaged)
    makes the sweep raise on it; the sweep goes on deciding the other panels and, after
    MAX_PANEL_FAILURES ticks, dead-letters that job. Both jobs' late members are parked before
    their calls, so only the sweep can decide either panel."""
    rel_fleet.sim("/_sim/config", {"models": {"qwen2.5-72b-instruct": {"latency_ms": 20, "answer": "B"}}})
    deadline = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(time.time() + 3))
    bad, good = uid("bad-panel"), uid("good-panel")
    parks = [
        arm_park(rel_client.redis, "before_call", f"{jid}.1", m, every=True)
        for jid in (bad, good)
        for m in ("m1", "m2")
    ]
    for jid in (bad, good):
        rel_client.submit({"id": jid, "task_class": "multiple_choice", "lane": "panel", "prompt": f"{jid}: pick\nA) x\nB) y",
                           "deadline": deadline})  # fmt: skip
    for key in parks:
        wait_parked(rel_client.redis, key)
    rel_client.redis.hset(keys.panel(f"{bad}.1"), "spec", b"{not json")
    try:
        good_res = rel_client.wait(good, timeout=30)
        assert good_res.status == "decided" and good_res.answer == "B"
        assert good_res.receipt is not None and good_res.receipt.decision == "sweep"
        wait_final(rel_client, rel_fleet, bad, timeout=30, restart=[])
        res = rel_client.result(bad)
        assert res is not None and res.status == "failed" and res.error is not None
        assert res.error.startswith(
            f"dead-letter: panel.sweep gave up after {MAX_PANEL_FAILURES} attempts: JSONDecodeError"
        ), res.error
    finally:
        for key in parks:
            rel_client.redis.hset(key, "release", 1)
