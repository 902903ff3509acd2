"""Fleet fixtures for the reliability suite: real redis-server (AOF on), the simulator and real
Celery worker processes, tuned so faults resolve in seconds rather than the production hour.

- `PANEL_VISIBILITY_TIMEOUT_S=4`: a message whose worker died is delivered again ~4-5 s later
  (kombu restores unacked messages older than the timeout on its periodic scan; see FIELD-NOTES
  and `producer/settings.py`). Every simulated call here is far shorter than 4 s.
- `PANEL_TEST_HOOKS=1`: turns on the test-only fault points (`workers/panel/chord.py`
  `fault_point`, `workers/tasks.py` `_test_poison`); they are inert in any other process.

Part B of the suite imports `rel_fleet`/`rel_client` and the helpers below.
"""

from __future__ import annotations

import signal
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import redis

from producer import keys
from producer.client import PanelClient
from producer.contract import Result
from producer.fleet import Fleet, WorkerSpec
from tests.waiting import eventually, settled

VISIBILITY_TIMEOUT_S = 4
RELIABILITY_ENV = {
    "PANEL_TEST_HOOKS": "1",
    "PANEL_VISIBILITY_TIMEOUT_S": str(VISIBILITY_TIMEOUT_S),
    "PANEL_SWEEP_INTERVAL_S": "0.5",
}
CONTROL = WorkerSpec("control", "control", concurrency=16)
TIERS = WorkerSpec("tiers", "llm.economy,llm.workhorse,llm.frontier,llm.batch", concurrency=32)


def uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


@contextmanager
def running_fleet(env: dict[str, str] | None = None, workers: list[WorkerSpec] | None = None,
                  sim_args: list[str] | None = None) -> Iterator[Fleet]:  # fmt: skip
    """A started fleet with the reliability settings (plus `env`), stopped on exit."""
    fleet = Fleet(workers=list(workers or [CONTROL, TIERS]), sim_args=list(sim_args or []),
                  env={**RELIABILITY_ENV, **(env or {})})  # fmt: skip
    fleet.start()
    try:
        yield fleet
    finally:
        fleet.stop()


@pytest.fixture(scope="session")
def rel_fleet() -> Iterator[Fleet]:
    """One fleet for the suite's modules (a start costs seconds); tests use their own job ids."""
    with running_fleet() as fleet:
        yield fleet


@pytest.fixture
def rel_client(rel_fleet: Fleet) -> Iterator[PanelClient]:
    client = PanelClient(rel_fleet.redis_url)
    rel_fleet.sim("/_sim/reset", {})
    yield client
    client.close()


# --- processes
def kill9(fleet: Fleet, name: str) -> int:
    """SIGKILL worker `name`: no warm shutdown, no ack, its sockets closed by the kernel (a crash,
    the OOM killer). Returns the dead pid."""
    proc = fleet.procs[name]
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    return proc.pid


def restart_worker(fleet: Fleet, spec: WorkerSpec) -> None:
    """Start `spec` again after a crash (what Kubernetes does for a dead pod), waiting until its
    consumer is attached: the fleet's log marks readiness, so count the marks."""
    log = fleet.log_dir / f"worker-{spec.name}.log"
    before = log.read_bytes().count(b" ready.") if log.exists() else 0
    fleet.start_worker(spec)
    end = time.monotonic() + 60
    while log.read_bytes().count(b" ready.") <= before:
        if fleet.procs[spec.name].poll() is not None:
            raise RuntimeError(f"worker {spec.name} exited; log: {log}")
        if time.monotonic() > end:
            raise TimeoutError(f"worker {spec.name} not ready after 60 s; log: {log}")
        time.sleep(0.1)


def rss_kib(pid: int) -> tuple[int, int]:
    """(current RSS, peak RSS) of a process in KiB, from /proc (VmRSS, VmHWM)."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]), int(fields["VmHWM"].split()[0])


# --- test-only fault points (inert unless PANEL_TEST_HOOKS=1)
def park_key(point: str, panel_id: str, member: str) -> str:
    return keys.test_park(point, panel_id, member)


def arm_park(r: redis.Redis, point: str, panel_id: str, member: str, every: bool = False) -> str:
    """The first task of `member` to reach `point` ('before_call' | 'after_answer') parks there
    until released; with `every`, so does each redelivered copy (a park longer than the
    visibility timeout brings the message back, and that copy must not run ahead)."""
    key = park_key(point, panel_id, member)
    r.hset(key, mapping={"armed": 1, **({"every": 1} if every else {})})
    return key


def wait_parked(r: redis.Redis, key: str, timeout: float = 30.0) -> int:
    """The pid of the worker process parked at `key`."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        pid = r.hget(key, "parked_by")
        if pid:
            return int(pid)
        time.sleep(0.02)
    raise TimeoutError(f"nothing parked at {key} after {timeout}s")


# --- outcomes
def wait_all(client: PanelClient, job_ids: list[str], timeout: float) -> dict[str, Result]:
    end = time.monotonic() + timeout
    return {jid: client.wait(jid, timeout=max(0.1, end - time.monotonic())) for jid in job_ids}


def ledger_counts(client: PanelClient) -> Counter[str]:
    """Receipts in the ledger per job id: exactly one per finished job."""
    return Counter(r["job_id"] for r in client.ledger())


def assert_decided_once(client: PanelClient, job_id: str, ledger: Counter[str] | None = None) -> Result:
    """Decided, and finalised exactly once: one done signal, one ledger receipt."""
    res = client.result(job_id)
    assert res is not None and res.status == "decided", f"{job_id}: {res}"
    assert client.redis.llen(keys.done_channel(job_id)) == 1, f"{job_id} signalled done more than once"
    counts = ledger if ledger is not None else ledger_counts(client)
    assert counts[job_id] == 1, f"{job_id} has {counts[job_id]} receipts in the ledger"
    return res


def receipt_calls(results: list[Result], status: tuple[str, ...] = ("answered", "late")) -> Counter[str]:
    """Calls per model with one of `status` across the receipts: what the fleet says it paid for."""
    return Counter(c.model for r in results if r.receipt for c in r.receipt.calls if c.status in status)


def receipt_requests(results: list[Result]) -> Counter[str]:
    """Calls per model that reached the provider, by the receipts: answered, late, failed after a
    request, lost in flight, and cancelled after sending (input tokens charged, or cut off in
    flight with its charge still to land)."""
    return Counter(c.model for r in results if r.receipt for c in r.receipt.calls
                   if c.status in ("answered", "late", "lost") or (c.status == "failed" and c.latency_ms > 0)
                   or (c.status == "cancelled" and (c.tokens_in > 0 or "in flight" in (c.error or ""))))  # fmt: skip


def sim_models(fleet: Fleet) -> dict[str, Any]:
    """The simulator's own per-model counts (requests, answered, by_status)."""
    return dict(fleet.sim("/_sim/stats")["models"])  # type: ignore[arg-type]


def sim_answered(fleet: Fleet) -> Counter[str]:
    return Counter({m: s["answered"] for m, s in sim_models(fleet).items() if s["answered"]})


def sim_settled(fleet: Fleet, timeout: float = 60.0) -> dict[str, Any]:
    """The simulator's per-model counts once nothing is in flight and the counts stop moving: what
    a "no answer paid twice" check compares against (a call still running would be missed)."""
    def read() -> tuple[str, dict[str, Any]] | None:
        models = sim_models(fleet)
        if any(s["in_flight"] for s in models.values()):
            return None
        return repr(sorted((m, s["requests"], s["answered"]) for m, s in models.items())), models

    eventually(read, "no call in flight at the simulator", timeout)
    last = settled(read, "the simulator's counts stop moving", timeout)
    assert last is not None, "calls kept starting at the simulator"
    return last[1]


def queue_depth(
    r: redis.Redis, queues: tuple[str, ...] = ("control", "llm.economy", "llm.workhorse", "llm.frontier", "llm.batch")
) -> int:
    """Messages waiting in the broker lists (every priority list of every queue)."""
    pipe = r.pipeline()
    for q in queues:
        for suffix in ("", ":3", ":6", ":9"):
            pipe.llen(q + suffix)
    return sum(pipe.execute())
