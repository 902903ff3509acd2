"""A poison job, one whose task fails every time, is dead-lettered with its reason after a
bounded number of attempts, never blocks the jobs queued behind it, and `panel status JOB`
shows the reason. Two kinds of poison: the task raises (retried with backoff), and the task
kills its worker process (what a segfault or the OOM killer does; acks_late brings the message
back). Both are armed through the test-only hook in `workers/tasks.py`.

A poison that kills its worker takes the tasks running beside it down too. They must keep their
attempts: after the loss every one of them is a suspect that runs alone in a child process
(workers/census.py, workers/quarantine.py), where only the poison dies, and only its deaths
are charged.

    python3 -m pytest -q tests/reliability/test_poison.py
    PANEL_RELIABILITY_FULL=1 python3 -m pytest -q tests/reliability/test_poison.py   # + the poison panel.run
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
from tests.waiting import eventually
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


def check_poison(client: PanelClient, fleet: Fleet, job_id: str, reason: str, normal_ids: list[str],
                 hits: int = MAX_ATTEMPTS) -> None:  # fmt: skip
    res = client.result(job_id)
    assert res is not None and res.status == "failed"
    assert res.error is not None and res.error.startswith(
        f"dead-letter: panel.run gave up after {MAX_ATTEMPTS} attempts"
    )
    assert reason in res.error, res.error
    assert int(client.redis.get(keys.test_poison_hits(job_id)) or 0) == hits  # bounded
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
    reason="its own fleet of three workers, a crash and a restart: PANEL_RELIABILITY_FULL=1 runs it "
    "(the default suite proves the same on a member: test_poison_member_...)",
)
def test_poison_that_kills_its_worker_is_dead_lettered_after_three_deaths_alone() -> None:
    """The poison `panel.run` kills one control worker (restarted, as Kubernetes would); its
    redelivery runs alone, killing only its quarantine children: one worker lost, not three."""
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
        check_poison(client, fleet, poison, "panel.run killed the process running it alone (exit code 137)", normal,
                     hits=1 + MAX_ATTEMPTS)  # fmt: skip
        crashed = {w.name: fleet.log_dir.joinpath(f"worker-{w.name}.log").read_bytes().count(b" ready.") - 1
                   for w in (CONTROL, CONTROL_B)}  # fmt: skip
        assert sum(crashed.values()) == 1, f"worker restarts: {crashed}"
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


@pytest.mark.integration
def test_poison_member_costs_the_member_beside_it_no_attempt(rel_fleet: Fleet, rel_client: PanelClient) -> None:
    """An innocent member is running (parked before its call) in the tier worker when a poison
    member kills that worker. Both come back; the innocent parks again, alone in its child, the
    whole time the poison dies in its own children three times over. The poison is charged and
    dead-lettered (its vote given up; the job goes on to its next lane); the innocent is charged nothing and decides; the tier
    worker dies once, by the first delivery, not once per attempt."""
    rel_fleet.sim("/_sim/config", {"models": {SINGLE_MODEL: {"latency_ms": 30, "answer": "APPROVE"}}})
    r = rel_client.redis
    innocent, poison = uid("innocent"), uid("poison-member")
    park = arm_park(r, "before_call", f"{innocent}.1", "m0", every=True)  # parks on every delivery
    try:
        rel_client.submit({"id": innocent, "task_class": "code_review", "prompt": "innocent:\n-a\n+b"})
        tiers_pid = wait_parked(r, park)
        assert tiers_pid == rel_fleet.procs[TIERS.name].pid
        r.hdel(park, "parked_by")  # the next copy to park says where
        r.set(keys.test_poison(poison), f"exit:panel.member:{poison}.1")  # its first panel's member only
        rel_client.submit({"id": poison, "task_class": "code_review", "prompt": "poison:\n-a\n+b"})
        rel_fleet.procs[TIERS.name].wait(30)  # the poison's first delivery kills the worker, innocent and all
        restart_worker(rel_fleet, TIERS)
        restarted = rel_fleet.procs[TIERS.name].pid

        # The innocent is back, parked in a child of the restarted worker, not in the worker itself.
        child = wait_parked(r, park, timeout=60)
        assert child not in (tiers_pid, restarted)
        wait_final(rel_client, rel_fleet, poison, timeout=90, restart=[])
        got = rel_client.result(poison)
        assert got is not None and got.receipt is not None, got
        (gave_up,) = [c for c in got.receipt.calls if c.member == "1.m0"]  # its vote given up, the job went on
        assert gave_up.status == "failed" and "panel.member killed the process running it alone (exit code 137)" in (
            gave_up.error or ""
        ), gave_up
        assert int(r.get(keys.test_poison_hits(poison)) or 0) == 1 + MAX_ATTEMPTS  # once in the worker, 3 alone
        # The innocent shared the poison's crash and every one of its retries, and is charged nothing.
        # its own task's record: the fleet is shared with the suite's other drills (test_crash's
        # redelivered members run alone too), so a scan of every record finds theirs as well
        tid = r.hget(keys.panel(f"{innocent}.1"), "task:m0")
        assert tid is not None, "the innocent's member task id was not recorded"
        mine = keys.attempts(tid.decode())
        assert r.hget(mine, "alone"), r.hgetall(mine)
        assert r.hget(mine, "n") is None and r.hget(mine, "lost") == b"1", r.hgetall(mine)
        assert rel_fleet.procs[TIERS.name].poll() is None and rel_fleet.procs[TIERS.name].pid == restarted
    finally:
        r.hset(park, "release", 1)
    res = rel_client.wait(innocent, timeout=60)
    assert res.status == "decided" and res.answer is not None and "APPROVE" in res.answer
    assert not dead_letters(rel_client, innocent)
    eventually(lambda: not r.exists(mine), "the innocent's attempts record cleared once it ran alone to the end")
    print(f"\npoison member: dead-lettered after 1 worker death + {MAX_ATTEMPTS} deaths alone; innocent decided uncharged")
