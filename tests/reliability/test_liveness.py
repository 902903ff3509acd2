"""A worker whose consumer no longer fetches is not alive: the heartbeat file goes stale, the
liveness probe (`deploy/docker/panel-heartbeat-ok`) fails, and the worker leaves so its
supervisor starts a fresh one, which passes the probe and takes work again.

The consumer is broken from outside, the way an operator could: Celery's `cancel_consumer`
remote control for every queue leaves the process running, its timers ticking, and nothing
fetched (the same picture as kombu's reconnect crash in the Redis-stop drill).

    python3 -m pytest -q tests/reliability/test_liveness.py
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest
from celery import Celery

from producer.client import PanelClient
from producer.fleet import WorkerSpec
from producer.settings import Settings
from tests.reliability.conftest import running_fleet, uid
from tests.waiting import eventually

PROBE = Path(__file__).resolve().parents[2] / "deploy" / "docker" / "panel-heartbeat-ok"
TIERS = WorkerSpec("tiers", "control,llm.economy,llm.workhorse,llm.frontier,llm.batch", concurrency=4)
MAX_AGE_S = 3


def probe(heartbeat: Path) -> bool:
    env = {**os.environ, "PANEL_HEARTBEAT_FILE": str(heartbeat)}
    return subprocess.run(["sh", str(PROBE), str(MAX_AGE_S)], env=env, capture_output=True).returncode == 0


@pytest.mark.integration
def test_a_worker_whose_consumer_stops_fetching_fails_the_probe_and_is_replaced(tmp_path: Path) -> None:
    heartbeat = tmp_path / "heartbeat"
    env = {"PANEL_HEARTBEAT_FILE": str(heartbeat), "PANEL_HEARTBEAT_INTERVAL_S": "0.5",
           "PANEL_LIVENESS_STALE_S": "2", "PANEL_LIVENESS_EXIT_S": "6"}  # fmt: skip
    with running_fleet(env=env, workers=[TIERS]) as fleet:
        client = PanelClient(fleet.redis_url)
        fleet.sim("/_sim/config", {"models": {"qwen2.5-32b-coder-instruct": {"latency_ms": 10, "answer": "APPROVE"}}})
        eventually(lambda: probe(heartbeat), "the probe passes for a fetching worker")
        first = client.submit({"id": uid("live"), "task_class": "code_review", "prompt": "-teh\n+the"})
        assert client.wait(first, 60).status == "decided"
        time.sleep(MAX_AGE_S + 1)  # idle longer than the probe's max age: an idle worker still fetches
        assert probe(heartbeat), "an idle worker that fetches must stay alive"

        control = Celery(broker=fleet.redis_url)
        control.conf.broker_transport_options = Settings(redis_url=fleet.redis_url).transport_options()
        pid = fleet.procs[TIERS.name].pid
        for queue in TIERS.queues.split(","):
            control.control.cancel_consumer(queue, reply=False)
        eventually(lambda: not probe(heartbeat), "the probe fails once the consumer fetches nothing")
        assert fleet.procs[TIERS.name].poll() is None  # still running: alive but idle, caught by the probe
        eventually(lambda: fleet.procs[TIERS.name].poll() is not None, "the idle worker exits for its supervisor")
        control.close()

        fleet.start_worker(TIERS)  # what Kubernetes does after the exit
        assert fleet.procs[TIERS.name].pid != pid
        eventually(lambda: probe(heartbeat), "the replacement passes the probe")
        second = client.submit({"id": uid("live"), "task_class": "code_review", "prompt": "-teh\n+the"})
        assert client.wait(second, 60).status == "decided"
        client.close()
