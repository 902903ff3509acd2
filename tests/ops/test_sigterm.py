"""Stopping a worker mid-call, as Kubernetes and Compose do: SIGTERM, then SIGKILL when the grace
period runs out. Either way the job decides exactly once, and the simulator's own request counts
agree with the receipt.

SIGTERM is Celery's warm shutdown: stop consuming, let running tasks finish, exit. Celery's soft
shutdown (`worker_soft_shutdown_timeout`) only shortens a *cold* shutdown (SIGQUIT, or SIGTERM
with REMAP_SIGTERM=SIGQUIT), and on the threads pool a cold shutdown cannot cancel a running call
(`TaskPool.terminate_job` raises NotImplementedError), so the deployments leave SIGTERM warm and
bound it with the grace period (tests/deploy checks both).

    python3 -m pytest -q tests/ops/test_sigterm.py    # SIGTERM: the call finishes; SIGKILL: it is redelivered
"""

from __future__ import annotations

import signal
import subprocess
import time
import uuid
from collections.abc import Iterator

import pytest
import redis

from producer import keys
from producer.client import PanelClient
from producer.fleet import Fleet, WorkerSpec
from tests.ops.conftest import EventMessages, start_worker_with
from tests.waiting import eventually, settled

pytestmark = pytest.mark.integration

MODEL = "qwen2.5-32b-coder-instruct"  # code_review's single lane (workhorse tier)
CALL_S = 3.0
TIERS = "llm.economy,llm.workhorse,llm.frontier"


@pytest.fixture(scope="module")
def fleet() -> Iterator[Fleet]:
    f = Fleet(workers=[WorkerSpec("control", "control", concurrency=4)])
    f.start()
    yield f
    f.stop()


@pytest.fixture
def client(fleet: Fleet) -> Iterator[PanelClient]:
    fleet.sim("/_sim/reset", {})
    fleet.sim("/_sim/config", {"models": {MODEL: {"latency_ms": CALL_S * 1000, "answer": "APPROVE: typo fix"}}})
    c = PanelClient(fleet.redis_url)
    yield c
    c.close()


def start_tier_worker(fleet: Fleet, name: str, **env: str) -> subprocess.Popen[bytes]:
    proc = start_worker_with(fleet, WorkerSpec(name, TIERS, concurrency=4), **env)
    fleet.wait_ready(timeout=120)
    return proc


def forget(fleet: Fleet, name: str) -> None:
    """Drop a worker this test stopped, so `wait_ready` does not report it as exited."""
    fleet.procs.pop(name)


def submit_and_wait_in_flight(fleet: Fleet, client: PanelClient) -> str:
    job_id = client.submit({"task_class": "code_review", "prompt": f"--- a/README.md\n-teh\n+the {uuid.uuid4().hex}"})
    end = time.monotonic() + 30
    while fleet.sim("/_sim/stats")["totals"]["in_flight"] < 1:
        assert time.monotonic() < end, "the provider call never started"
        time.sleep(0.02)
    return job_id


def assert_decided_once(fleet: Fleet, client: PanelClient, job_id: str, sim_statuses: dict[str, int]) -> None:
    """One decision, one ledger entry, one answered call in the receipt, and the simulator saw
    exactly `sim_statuses` (499: the client hung up) with one delivered answer, the receipt's."""
    result = client.wait(job_id, timeout=60)
    assert result.status == "decided" and result.receipt is not None
    (call,) = [c for c in result.receipt.calls if c.status == "answered"]
    # every request the provider saw is in the receipt: the call cut off with its worker as "lost"
    assert len(result.receipt.calls) == sum(sim_statuses.values())
    assert len([c for c in result.receipt.calls if c.status == "lost"]) == sim_statuses.get("499", 0)
    r = redis.Redis.from_url(fleet.redis_url)
    done = settled(lambda: r.lrange(keys.done_channel(job_id), 0, -1), "the job's done signals stop changing")
    assert done == [b"decided"], "the job was decided more than once"
    assert len([e for e in client.ledger() if e["job_id"] == job_id]) == 1
    stats = fleet.sim("/_sim/stats")["models"][MODEL]
    assert stats["by_status"] == sim_statuses and stats["in_flight"] == 0
    assert stats["answered"] == 1 and (call.tokens_in, call.tokens_out) == (stats["tokens_in"], stats["tokens_out"])


def test_sigterm_during_a_slow_call_lets_the_call_finish_before_the_worker_exits(fleet: Fleet, client: PanelClient) -> None:
    worker = start_tier_worker(fleet, "tier-warm")
    with EventMessages(fleet.redis_url) as seen:
        job_id = submit_and_wait_in_flight(fleet, client)
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=60) == 0
        exited = time.time()
        forget(fleet, "tier-warm")
        # the task that finished while its worker stopped still tells Flower so: its events are
        # batched (workers/task_events.py), and the last batch is sent before the process exits
        def types_sent() -> set[str]:
            return {e["type"] for m in seen.messages for e in m if str(e.get("hostname", "")).startswith("tier-warm@")}

        eventually(lambda: types_sent() >= {"task-received", "task-succeeded", "task-panel-decided"},
                   "the stopping worker's task events: received, succeeded, decided", timeout=10)  # fmt: skip
    (req,) = fleet.sim(f"/_sim/requests?model={MODEL}")["requests"]  # type: ignore[misc]
    assert req["status"] == 200 and req["ended"] - req["started"] >= CALL_S * 0.9
    assert req["ended"] <= exited, "the worker exited before its call finished"
    assert client.status(job_id) == "decided"  # decided by the stopping worker, no one else is running
    assert_decided_once(fleet, client, job_id, sim_statuses={"200": 1})


# The cheapest of the opt-in drills (~30 s: two worker starts and the unacked-restore sweep), so it
# runs in the default suite; tests/reliability/nightly.py runs the rest.
def test_a_worker_killed_after_the_grace_period_has_its_call_redelivered(fleet: Fleet, client: PanelClient) -> None:
    # Its member lease (workers/panel/lease.py) is as short as the heir's, as it is when the whole
    # fleet shares one visibility timeout: with the default 15 s the heir's copy would wait out the
    # dead holder's lease past the heir's 6 s visibility timeout and be delivered again meanwhile.
    worker = start_tier_worker(fleet, "tier-killed", PANEL_MEMBER_LEASE_S="2")
    job_id = submit_and_wait_in_flight(fleet, client)
    worker.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    worker.kill()  # the grace period ran out mid-call
    worker.wait(timeout=10)
    forget(fleet, "tier-killed")
    assert client.status(job_id) != "decided"
    # acks_late: the message stays unacked in Redis; a live worker restores it once it is older
    # than the visibility timeout (an hour in production; here a few seconds, on the restoring
    # worker only, and still above the call: a shorter one redelivers the heir's own running call).
    start_tier_worker(fleet, "tier-heir", PANEL_VISIBILITY_TIMEOUT_S=str(int(CALL_S * 2)))
    assert_decided_once(fleet, client, job_id, sim_statuses={"499": 1, "200": 1})
    cut, redone = fleet.sim(f"/_sim/requests?model={MODEL}")["requests"]  # type: ignore[misc]
    assert cut["fault"] == "disconnected" and cut["messages_sha"] == redone["messages_sha"]  # the same call, again
