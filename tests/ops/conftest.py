"""Operations on real parts: a fleet shaped like the deployment (one worker process per tier,
each with its own Prometheus port, as each pod has), and real Flower beside it.

One fleet per test package: Flower and the metrics tests read the same finished panels.
"""

from __future__ import annotations

import base64
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import redis
from celery import Celery

from producer.client import PanelClient
from producer.contract import Result
from producer.embedded import child_env, free_port, stop_process
from producer.fleet import Fleet, WorkerSpec

OPS_WORKERS = [
    WorkerSpec("control", "control", concurrency=8),
    WorkerSpec("economy", "llm.economy", concurrency=16),
    WorkerSpec("workhorse", "llm.workhorse", concurrency=16),
    WorkerSpec("frontier", "llm.frontier,llm.batch", concurrency=8),
]
FLOWER_USER, FLOWER_PASSWORD = "ops", "flower-test-only"


def start_worker_with(fleet: Fleet, w: WorkerSpec, start: Callable[[WorkerSpec], subprocess.Popen[bytes]] | None = None,
                      **env: str) -> subprocess.Popen[bytes]:  # fmt: skip
    """Start one worker with extra environment (Fleet.env applies to every worker it starts)."""
    saved = fleet.env
    fleet.env = {**saved, **env}
    try:
        return (start or fleet.start_worker)(w)
    finally:
        fleet.env = saved


@dataclass
class MeteredFleet(Fleet):
    """A Fleet whose every worker serves Prometheus metrics on a port of its own."""

    metrics_ports: dict[str, int] = field(default_factory=dict)

    def start_worker(self, w: WorkerSpec) -> subprocess.Popen[bytes]:
        port = self.metrics_ports.setdefault(w.name, free_port())
        return start_worker_with(self, w, PANEL_METRICS_PORT=str(port), start=super().start_worker)

    def wait_ready(self, timeout: float = 120.0) -> None:
        # five worker imports at once on two cores shared with other test runs
        super().wait_ready(timeout)

    def scrape(self, name: str) -> str:
        return httpx.get(f"http://127.0.0.1:{self.metrics_ports[name]}/metrics", timeout=5).text


@dataclass
class Flower:
    """`celery -A workers.app flower` as compose and k8s run it: basic auth from FLOWER_BASIC_AUTH."""

    url: str
    proc: subprocess.Popen[bytes]
    log: Path

    @property
    def auth(self) -> tuple[str, str]:
        return (FLOWER_USER, FLOWER_PASSWORD)

    def api(self, path: str, **params: object) -> httpx.Response:
        return httpx.get(f"{self.url}{path}", params=params, auth=self.auth, timeout=15)


def start_flower(fleet: Fleet, timeout: float = 60.0) -> Flower:
    port = free_port()
    log = fleet.log_dir / "flower.log"
    env = child_env({"PANEL_REDIS_URL": fleet.redis_url, "FLOWER_BASIC_AUTH": f"{FLOWER_USER}:{FLOWER_PASSWORD}"})
    env.pop("FLOWER_UNAUTHENTICATED_API", None)  # would open /api without credentials
    args = [sys.executable, "-m", "celery", "-A", "workers.app", "flower", "--address=127.0.0.1", f"--port={port}"]
    proc = subprocess.Popen(args, stdout=open(log, "wb"), stderr=subprocess.STDOUT, env=env)
    flower = Flower(f"http://127.0.0.1:{port}", proc, log)
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"flower exited ({proc.returncode}); log: {log}")
        try:
            if httpx.get(f"{flower.url}/healthcheck", timeout=1).status_code == 200:
                return flower
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    stop_process(proc, timeout=5)
    raise TimeoutError(f"flower not healthy after {timeout}s; log: {log}")


@pytest.fixture(scope="package")
def ops_fleet() -> Iterator[MeteredFleet]:
    fleet = MeteredFleet(workers=list(OPS_WORKERS))
    fleet.start()
    yield fleet
    fleet.stop()


@pytest.fixture(scope="package")
def flower(ops_fleet: MeteredFleet) -> Iterator[Flower]:
    f = start_flower(ops_fleet)
    yield f
    stop_process(f.proc, timeout=10)


@pytest.fixture(scope="package")
def ops_client(ops_fleet: MeteredFleet) -> Iterator[PanelClient]:
    c = PanelClient(ops_fleet.redis_url)
    yield c
    c.close()


def scripted_answers(fleet: Fleet, answers: dict[str, str], latency_ms: int = 50) -> None:
    fleet.sim("/_sim/config", {"models": {m: {"latency_ms": latency_ms, "answer": a} for m, a in answers.items()}})


class DecisionEvents:
    """A plain Celery event consumer (what any monitor is) that keeps every `task-panel-decided`.

    It imports nothing from `workers`: the event type and its fields are the public surface.
    """

    EVENT = "task-panel-decided"

    def __init__(self, redis_url: str):
        self.redis_url = redis_url
        self.app = Celery("ops-monitor", broker=redis_url, set_as_current=False)
        self.events: list[dict[str, object]] = []
        self._receiver: object = None
        self._thread = threading.Thread(target=self._run, name="decision-events", daemon=True)

    def _run(self) -> None:
        with self.app.connection_for_read() as conn:
            self._receiver = recv = self.app.events.Receiver(conn, handlers={self.EVENT: self.events.append})
            for _ in recv.consume(safety_interval=0.2, wakeup=False):
                pass

    def start(self, timeout: float = 10.0) -> DecisionEvents:
        """Returns once the consumer's pattern subscription is live (events sent before it are lost)."""
        r = redis.Redis.from_url(self.redis_url)

        def pattern_subscriptions() -> int:  # NUMPAT counts distinct patterns, and Flower has ours
            return sum(int(c.get("psub", 0)) for c in r.client_list())

        before = pattern_subscriptions()
        self._thread.start()
        end = time.monotonic() + timeout
        while pattern_subscriptions() <= before:
            if time.monotonic() > end:
                raise TimeoutError("event consumer did not subscribe")
            time.sleep(0.05)
        r.close()
        return self

    def stop(self) -> None:
        if self._receiver is not None:
            self._receiver.should_stop = True  # type: ignore[attr-defined]
        self._thread.join(timeout=5)

    def wait_for(self, job_ids: set[str], timeout: float = 10.0) -> list[dict[str, object]]:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if job_ids <= {str(e.get("job_id")) for e in self.events}:
                break
            time.sleep(0.05)
        return [e for e in self.events if e.get("job_id") in job_ids]


@dataclass
class FinishedPanels:
    """Two finished jobs that touch every tier: a staged economy panel that exits early and a
    workhorse panel whose members disagree, so the frontier arbiter runs."""

    early: Result
    arbitrated: Result
    prompts: list[str]
    events: list[dict[str, object]]

    @property
    def results(self) -> list[Result]:
        return [self.early, self.arbitrated]


@pytest.fixture(scope="package")
def finished_panels(ops_fleet: MeteredFleet, flower: Flower, ops_client: PanelClient) -> Iterator[FinishedPanels]:
    """The only jobs this package's fleet runs (the metrics test counts them exactly)."""
    consumer = DecisionEvents(ops_fleet.redis_url).start()
    scripted_answers(ops_fleet, {
        "llama3.2-3b": "42", "llama3.1-8b": "42", "llama3.1-70b": "41",  # staged: the 70b is never sent
        "qwen2.5-72b-instruct": "B", "qwen2.5-32b-coder-instruct": "C",
    })  # fmt: skip
    tag = uuid.uuid4().hex[:10]
    prompts = [f"ops-secret-prompt-{tag}-math: 6 boxes of 7 eggs, how many eggs?",
               f"ops-secret-prompt-{tag}-mc: pick one\nA) w\nB) x\nC) y\nD) z"]  # fmt: skip
    early_id = ops_client.submit({"task_class": "math_word_problem", "lane": "panel", "prompt": prompts[0]})
    arb_id = ops_client.submit({"task_class": "multiple_choice", "lane": "panel", "prompt": prompts[1]})
    early, arbitrated = ops_client.wait(early_id, timeout=60), ops_client.wait(arb_id, timeout=60)
    events = consumer.wait_for({early_id, arb_id})
    consumer.stop()
    yield FinishedPanels(early, arbitrated, prompts, events)


class EventMessages:
    """Every message on the task events' channels (`celeryev` fanout: `/<db>.celeryev/task.*`),
    decoded to the list of events it carries."""

    def __init__(self, redis_url: str) -> None:
        self.r = redis.Redis.from_url(redis_url)
        self.messages: list[list[dict[str, Any]]] = []
        self._pubsub = self.r.pubsub(ignore_subscribe_messages=True)
        self._pubsub.psubscribe("*celeryev/task.*")
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._stop = threading.Event()

    def _run(self) -> None:
        while not self._stop.is_set():
            m = self._pubsub.get_message(timeout=0.2)
            if m is None:
                continue
            envelope = orjson.loads(m["data"])
            body = envelope["body"]
            if envelope.get("properties", {}).get("body_encoding") == "base64":
                body = base64.b64decode(body)
            events = orjson.loads(body)
            self.messages.append(events if isinstance(events, list) else [events])

    def __enter__(self) -> EventMessages:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self._pubsub.close()
        self.r.close()

    def events(self, of_tasks: set[str]) -> list[dict[str, Any]]:
        return [e for m in self.messages for e in m if e.get("uuid") in of_tasks]
