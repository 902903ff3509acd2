"""Flower lists every task of a burst of panels with its final state, though workers publish their
task events in batches (workers/task_events.py: one `task.multi` message per ~100 ms per process).

A fleet of its own (the package's fleet runs an exact set of jobs the metrics tests count), real
Flower beside it, and a plain subscriber on the events' Redis channels that sees the messages
themselves: the batches are real, and none of their events is lost on the way to Flower.

    python3 -m pytest -q tests/ops/test_flower_every_task.py
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import httpx
import orjson
import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from producer import keys
from producer.client import PanelClient
from producer.embedded import stop_process
from producer.fleet import Fleet, WorkerSpec
from tests.ops.conftest import EventMessages, Flower, start_flower
from tests.waiting import eventually

pytestmark = pytest.mark.integration

JOBS = 24
# multiple_choice: two agree at once, the slow third is cut off in flight (its task still settles)
ANSWERS = {"qwen2.5-72b-instruct": "B", "qwen2.5-32b-coder-instruct": "B", "llama3.1-70b": "B"}
LATENCY_MS = {"qwen2.5-72b-instruct": 150, "qwen2.5-32b-coder-instruct": 150, "llama3.1-70b": 1500}


@pytest.fixture(scope="module")
def fleet() -> Iterator[Fleet]:
    f = Fleet(workers=[WorkerSpec("control", "control", concurrency=8),
                       WorkerSpec("tiers", "llm.economy,llm.workhorse,llm.frontier", concurrency=64)])  # fmt: skip
    f.start()
    yield f
    f.stop()


@pytest.fixture(scope="module")
def flower(fleet: Fleet) -> Iterator[Flower]:
    fl = start_flower(fleet)
    yield fl
    stop_process(fl.proc, timeout=10)


def task_ids_of(r: redis.Redis, job_id: str) -> set[str]:
    """Every task the job ran: its `panel.run` and each member task its panels sent."""
    ids = {f"run-{job_id}"}
    for raw in r.lrange(keys.job_panels(job_id), 0, -1):
        panel_id = orjson.loads(raw)["panel_id"]
        ids |= {v.decode() for k, v in r.hgetall(keys.panel(panel_id)).items() if k.startswith(b"task:")}
    return ids


def flower_states(flower: Flower, task_ids: set[str]) -> dict[str, str]:
    listed = flower.api("/api/tasks", limit=5000).raise_for_status().json()
    return {tid: str(t.get("state")) for tid, t in listed.items() if tid in task_ids}


def decided_events_counted(flower: Flower) -> float:
    text = httpx.get(f"{flower.url}/metrics", timeout=5).raise_for_status().text
    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples
               if s.name == "flower_events_total" and s.labels.get("type") == "task-panel-decided")  # fmt: skip


def test_flower_lists_every_task_of_a_burst_of_panels_as_succeeded(fleet: Fleet, flower: Flower) -> None:
    fleet.sim("/_sim/config", {"models": {m: {"latency_ms": LATENCY_MS[m], "answer": a} for m, a in ANSWERS.items()}})
    client = PanelClient(fleet.redis_url)
    r = redis.Redis.from_url(fleet.redis_url)
    with EventMessages(fleet.redis_url) as seen:
        tag = uuid.uuid4().hex[:8]
        job_ids = [client.submit({"task_class": "multiple_choice", "lane": "panel",
                                  "prompt": f"burst {tag} {i}: pick one\nA) w\nB) x\nC) y"}) for i in range(JOBS)]  # fmt: skip
        results = [client.wait(j, timeout=120) for j in job_ids]
        assert [res.status for res in results] == ["decided"] * JOBS
        expected: set[str] = set().union(*(task_ids_of(r, j) for j in job_ids))
        assert len(expected) >= JOBS * 3, expected  # a run and at least two members per job

        def all_succeeded() -> bool:
            states = flower_states(flower, expected)
            return len(states) == len(expected) and set(states.values()) == {"SUCCESS"}

        try:
            eventually(all_succeeded, "Flower lists every task of the burst as SUCCESS", timeout=60, every=0.5)
        except AssertionError:
            states = flower_states(flower, expected)
            missing = sorted(expected - set(states))
            unsettled = {t: s for t, s in states.items() if s != "SUCCESS"}
            raise AssertionError(f"{len(missing)} of {len(expected)} tasks missing from Flower ({missing[:5]}...), "
                                 f"not SUCCESS: {unsettled}") from None  # fmt: skip
        eventually(lambda: decided_events_counted(flower) >= JOBS, "Flower counts a decision event per job", timeout=30)
        assert decided_events_counted(flower) == JOBS
        # the events of the burst's worker tasks came in batches (panel.run's task-sent comes from
        # the producer, one message each): Celery's per-turn flush sent ~one message per event here
        worker_events = [e for e in seen.events(expected) if e["type"] != "task-sent"]
        batches = [m for m in seen.messages if any(e.get("uuid") in expected and e["type"] != "task-sent" for e in m)]
    received = {e["uuid"] for e in worker_events if e["type"] == "task-received"}
    succeeded = {e["uuid"] for e in worker_events if e["type"] == "task-succeeded"}
    assert received == succeeded == expected
    assert sum(e["type"] == "task-panel-decided" for e in worker_events) == JOBS
    assert len(worker_events) >= 2 * len(batches), f"{len(worker_events)} events in {len(batches)} messages"
    client.close()
