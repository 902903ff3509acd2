"""Which Celery pool for I/O-bound provider calls: `threads` or `gevent`, side by side in one run.

    python3 -m bench.pool [--levels 16,64,256] [--waves 4] [--latency-ms 500]

One redis-server, one simulator answering every call in `--latency-ms`, one control worker; then,
per concurrency level, a tier worker with each pool in turn (the order alternates between levels
so a drifting machine favours neither), fed `--waves` x concurrency single-lane jobs at once.
Each job is one member call; the tier worker's task also votes, finalises and writes the ledger.

Measured per run: member calls/s at the simulator (its request log: answered calls over first
start to last end), calls in flight at the simulator (max), CPU seconds of the tier worker per
call (/proc, whole process: all its threads or greenlets) and its RSS after the run. The ideal is
Little's law: concurrency / latency. Figures are printed as gevent/threads ratios.

gevent and our runtime: workers/runtime.py keeps one asyncio loop in a background thread per
process. Under `--pool gevent` Celery monkey-patches `threading`, so that "thread" is a greenlet
and the loop's selector waits cooperatively; task greenlets block on a patched Condition in
`Future.result`. It works, with one catch found here: httpcore imports `trio` when it is
installed, and trio's import fails under gevent's patched `select` (no `epoll`). The project does
not depend on trio (the image has none); where it is installed this bench hides it from the
gevent worker only, and says so. At 256 greenlets a run here also lost acks: kombu's ack raised
redis `MaxConnectionsError: Too many connections` (~100 times), and those jobs stay unacked until
the visibility timeout; a run that leaves jobs undecided says how many instead of stopping.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import shutil
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import yaml

from producer.client import PanelClient
from producer.embedded import stop_process
from producer.errors import JobTimeout
from producer.fleet import Fleet, WorkerSpec

POOLS = ("threads", "gevent")
TIERS = "llm.economy,llm.workhorse,llm.frontier"
SHIPPED = Path(__file__).resolve().parent.parent / "policies"


@dataclass(frozen=True)
class Run:
    pool: str
    concurrency: int
    calls: int
    calls_per_s: float
    max_in_flight: int
    cpu_ms_per_call: float
    rss_mb: float
    wall_s: float
    undone: int = 0


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def unlimited_policies(tmp: Path) -> Path:
    """The shipped registry with quotas lifted: the fleet-wide limiter must not be what is measured."""
    reg = yaml.safe_load((SHIPPED / "models.yaml").read_text())
    for m in reg["models"].values():
        m["rpm"], m["tpm"] = 1_000_000, 1_000_000_000
    (tmp / "models.yaml").write_text(yaml.safe_dump(reg))
    shutil.copy(SHIPPED / "tasks.yaml", tmp / "tasks.yaml")
    return tmp


def trio_shim(tmp: Path) -> str | None:
    """A path that makes `import trio` fail cleanly (httpcore then skips it), or None if absent."""
    if importlib.util.find_spec("trio") is None:
        return None
    shim = tmp / "no-trio"
    shim.mkdir(exist_ok=True)
    (shim / "trio.py").write_text('raise ImportError("hidden by bench.pool: trio fails to import under gevent")\n')
    return str(shim)


def start_tier(fleet: Fleet, pool: str, concurrency: int, shim: str | None) -> int:
    name = f"tier-{pool}-{concurrency}"
    saved = fleet.env
    if pool == "gevent" and shim:
        fleet.env = {**saved, "PYTHONPATH": os.pathsep.join(filter(None, [shim, os.environ.get("PYTHONPATH")]))}
    try:
        proc = fleet.start_worker(WorkerSpec(name, TIERS, concurrency=concurrency, pool=pool))
    finally:
        fleet.env = saved
    fleet.wait_ready(timeout=120)
    return proc.pid


def unfinished(client: PanelClient, ids: list[str], deadline: float) -> int:
    """How many jobs are not decided by `deadline`."""
    undone = 0
    for job_id in ids:
        try:
            if client.wait(job_id, timeout=max(0.01, deadline - time.monotonic())).status != "decided":
                undone += 1
        except JobTimeout:
            undone += 1
    return undone


def measure(fleet: Fleet, client: PanelClient, pool: str, concurrency: int, waves: int, shim: str | None,
            latency_s: float) -> Run:  # fmt: skip
    pid = start_tier(fleet, pool, concurrency, shim)
    name = f"tier-{pool}-{concurrency}"
    try:
        fleet.sim("/_sim/reset", {})
        cpu0, t0 = cpu_seconds(pid), time.monotonic()
        tag = uuid.uuid4().hex[:8]
        ids = [client.submit({"task_class": "code_review", "prompt": f"--- a/README.md\n-teh\n+the {tag} {i}"})
               for i in range(waves * concurrency)]  # fmt: skip
        undone = unfinished(client, ids, deadline=time.monotonic() + max(120.0, 2 * len(ids) * latency_s))
        wall, cpu = time.monotonic() - t0, cpu_seconds(pid) - cpu0
        if undone:  # reported, not raised: a pool that loses jobs is a finding (see the worker log)
            print(f"  {name}: {undone} of {len(ids)} jobs not decided; log: {fleet.log_dir}/worker-{name}.log",
                  file=sys.stderr, flush=True)  # fmt: skip
        log = [r for r in fleet.sim("/_sim/requests")["requests"] if r["status"] == 200]  # type: ignore[index]
        span = max(r["ended"] for r in log) - min(r["started"] for r in log)
        stats = fleet.sim("/_sim/stats")["totals"]  # type: ignore[index]
        return Run(pool, concurrency, len(log), len(log) / span, int(stats["max_in_flight"]),
                   1000 * cpu / len(log), rss_mb(pid), wall, undone)  # fmt: skip
    finally:
        stop_process(fleet.procs.pop(name), timeout=30)


def report(runs: list[Run], args: argparse.Namespace, shim: str | None) -> None:
    print(f"\n$ python3 -m bench.pool --levels {args.levels} --waves {args.waves} --latency-ms {args.latency_ms}")
    print(f"{platform.python_implementation()} {platform.python_version()}, {os.cpu_count()} cores, "
          f"load average at start {args.load_at_start}; simulator latency {args.latency_ms} ms; "
          f"each run: waves x concurrency single-lane jobs, one member call each")  # fmt: skip
    if shim:
        print("note: trio is installed here and breaks under gevent's patching; hidden from the gevent worker")
    head = (f"{'conc':>5} {'pool':>8} {'calls':>6} {'calls/s':>8} {'ideal':>7} {'in flight':>9} {'CPU ms/call':>11} "
            f"{'RSS MB':>7} {'wall s':>7} {'undecided':>9}")  # fmt: skip
    print(head)
    ideal = 1000 / args.latency_ms
    for r in runs:
        print(f"{r.concurrency:>5} {r.pool:>8} {r.calls:>6} {r.calls_per_s:>8.1f} {r.concurrency * ideal:>7.0f} "
              f"{r.max_in_flight:>9} {r.cpu_ms_per_call:>11.2f} {r.rss_mb:>7.0f} {r.wall_s:>7.1f} {r.undone:>9}")  # fmt: skip
    print("\ngevent / threads, same level:")
    print(f"{'conc':>5} {'calls/s':>8} {'CPU/call':>9} {'RSS':>6}")
    by = {(r.pool, r.concurrency): r for r in runs}
    for c in sorted({r.concurrency for r in runs}):
        t, g = by.get(("threads", c)), by.get(("gevent", c))
        if t and g:
            print(f"{c:>5} {g.calls_per_s / t.calls_per_s:>8.2f} {g.cpu_ms_per_call / t.cpu_ms_per_call:>9.2f} "
                  f"{g.rss_mb / t.rss_mb:>6.2f}")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python3 -m bench.pool", description=__doc__.splitlines()[0])
    ap.add_argument("--levels", default="16,64,256", help="tier worker concurrency levels, comma-separated")
    ap.add_argument("--waves", type=int, default=4, help="jobs per run = waves x concurrency")
    ap.add_argument("--latency-ms", type=int, default=500)
    args = ap.parse_args(argv)
    levels = [int(x) for x in args.levels.split(",")]
    args.load_at_start = " ".join(f"{x:.1f}" for x in os.getloadavg())
    tmp = Path(tempfile.mkdtemp(prefix="bench-pool-"))
    shim = trio_shim(tmp)
    fleet = Fleet(
        workers=[WorkerSpec("control", "control", concurrency=64)],
        sim_args=["--latency-ms", str(args.latency_ms)],
        env={"PANEL_POLICIES": str(unlimited_policies(tmp))},
    )
    fleet.start()
    client = PanelClient(fleet.redis_url)
    runs: list[Run] = []
    try:
        for i, c in enumerate(levels):
            for pool in POOLS if i % 2 == 0 else tuple(reversed(POOLS)):
                run = measure(fleet, client, pool, c, args.waves, shim, args.latency_ms / 1000)
                print(f"  {pool:>8} x{c:<4} {run.calls_per_s:7.1f} calls/s  {run.cpu_ms_per_call:6.2f} ms CPU/call",
                      file=sys.stderr, flush=True)  # fmt: skip
                runs.append(run)
    finally:
        client.close()
        fleet.stop()
    report(runs, args, shim)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
