"""Concurrency: provider calls in flight per worker process and member calls/s for the whole fleet
against a simulator that answers every call in 0.5 s; CPU per call; where it saturates and why.

    python3 -m bench.concurrency [--rates 10,25,50,100] [--seconds 12] [--threads 128] [--processes 1]

One fleet: a control worker and `--processes` tier workers (threads pool, `--threads` each), a
redis-server, the simulator at a fixed 500 ms. Panels of three members that always agree with a
quorum of three, so every member is a provider call that runs to the end. Load is open-loop: the
producer submits panels at each offered rate for `--seconds`, then waits for them to finish.

Measured per rate: member calls/s answered by the simulator while load was offered (its request
log; the first second and the drain excluded); calls in flight at the simulator (sampled every
50 ms: mean and max; divided by the tier processes it is the per-process figure); p50/p95 panel
latency beside the p50 of each panel's slowest member call as the worker timed it (the gap is
queueing and overhead); CPU ms per member call of every process (/proc); redis-server commands
per member call (INFO commandstats: broker traffic and panel state together). Little's law
gives the ideal: in flight = calls/s x 0.5 s, capped by threads x processes.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import redis
import yaml

from producer.client import PanelClient
from producer.fleet import Fleet, WorkerSpec

LATENCY_MS = 500
MEMBERS = ["qwen2.5-72b-instruct", "qwen2.5-32b-coder-instruct", "llama3.1-70b"]
SHIPPED = Path(__file__).resolve().parent.parent / "policies"


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def write_policies(dest: Path) -> None:
    """The shipped registry with quotas lifted (this measures the fleet, not a provider's rpm), and
    one task class: a parallel panel of three that must all answer."""
    registry = yaml.safe_load((SHIPPED / "models.yaml").read_text())
    for spec in registry["models"].values():
        spec.update(rpm=1_000_000, tpm=1_000_000_000)
    (dest / "models.yaml").write_text(yaml.safe_dump(registry, sort_keys=False))
    tasks = {"task_classes": {"bench_concurrency": {
        "default_lane": "panel", "single": {"model": MEMBERS[0]},
        "panel": {"members": MEMBERS, "quorum": 3, "dispatch": "parallel", "agreement": {"rule": "exact"},
                  "arbiter": "llama3.1-405b"}}}}  # fmt: skip
    (dest / "tasks.yaml").write_text(yaml.safe_dump(tasks, sort_keys=False))
    (dest / "sim.yaml").write_text(yaml.safe_dump({"default": {"latency_ms": LATENCY_MS, "answer": "APPROVE"}}))


class InFlightSampler(threading.Thread):
    """Samples the simulator's calls in flight every 50 ms."""

    def __init__(self, fleet: Fleet) -> None:
        super().__init__(daemon=True)
        self.fleet, self.samples, self.stop_flag = fleet, [], threading.Event()

    def run(self) -> None:
        while not self.stop_flag.is_set():
            self.samples.append(int(self.fleet.sim("/_sim/stats")["totals"]["in_flight"]))  # type: ignore[index]
            time.sleep(0.05)


def pids(fleet: Fleet) -> dict[str, int]:
    assert fleet.redis is not None and fleet.sim_proc is not None
    return {**{n: p.pid for n, p in fleet.procs.items()}, "redis": fleet.redis.proc.pid, "sim": fleet.sim_proc.pid,
            "producer": os.getpid()}  # fmt: skip


def redis_commands(url: str) -> int:
    """Commands the redis-server has run so far (broker traffic and panel state together)."""
    r = redis.Redis.from_url(url)
    try:
        return sum(int(v["calls"]) for v in r.info("commandstats").values())
    finally:
        r.close()


def step(fleet: Fleet, client: PanelClient, rate: float, seconds: float) -> dict[str, object]:
    fleet.sim("/_sim/reset", {})
    commands0 = redis_commands(fleet.redis_url)
    procs = pids(fleet)
    cpu0 = {n: cpu_seconds(p) for n, p in procs.items()}
    sampler = InFlightSampler(fleet)
    sampler.start()
    ids, t0, wall0 = [], time.monotonic(), time.time()
    total = int(rate * seconds)
    for i in range(total):  # open loop: the i-th panel goes at t0 + i/rate, late or not
        delay = t0 + i / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        ids.append(client.submit({"task_class": "bench_concurrency", "prompt": f"bench {uuid.uuid4().hex}", "lane": "panel"}))
    submitted_s = time.monotonic() - t0
    receipts = [r.receipt for r in client.wait_many(ids, timeout=300) if r.receipt is not None]
    elapsed = time.monotonic() - t0
    lat = [rc.latency_ms for rc in receipts]
    # the worker's view of its slowest call: what the panel latency would be with no fleet overhead
    slowest_call = [max(c.latency_ms for c in rc.calls if c.role == "member") for rc in receipts]
    log = fleet.sim("/_sim/requests")["requests"]  # type: ignore[index]
    # steady state: answers delivered while panels were still being offered (the drain excluded)
    steady = [e for e in log if e["status"] == 200 and wall0 + 1.0 <= e["ended"] <= wall0 + submitted_s]
    sampler.stop_flag.set()
    sampler.join()
    stats = fleet.sim("/_sim/stats")["totals"]  # type: ignore[index]
    calls = int(stats["answered"])
    commands = redis_commands(fleet.redis_url) - commands0
    cpu = {n: cpu_seconds(p) - cpu0[n] for n, p in procs.items()}
    busy = [s for s in sampler.samples if s > 0] or [0]
    return {"rate": rate, "offered_calls_s": rate * 3, "submit_rate": total / submitted_s, "calls": calls,
            "calls_s": len(steady) / max(submitted_s - 1.0, 1e-9), "elapsed": elapsed,
            "slowest_call_p50": statistics.median(slowest_call), "redis_per_call": commands / max(calls, 1), "in_flight_mean": statistics.fmean(busy),
            "in_flight_max": int(stats["max_in_flight"]), "p50": statistics.median(lat),
            "p95": sorted(lat)[int(0.95 * (len(lat) - 1))], "decided": len(lat), "panels": total,
            "cpu": cpu, "cpu_ms_per_call": {n: 1000 * c / max(calls, 1) for n, c in cpu.items()}}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python3 -m bench.concurrency", description=__doc__.split("\n")[0])
    ap.add_argument("--rates", default="10,25,50,100", help="offered panels/s (3 member calls each)")
    ap.add_argument("--seconds", type=float, default=12.0)
    ap.add_argument("--threads", type=int, default=128, help="threads per tier worker process")
    ap.add_argument("--processes", type=int, default=1, help="tier worker processes")
    args = ap.parse_args(argv)
    print(f"command: python3 -m bench.concurrency {' '.join(argv if argv is not None else sys.argv[1:])}".rstrip())
    print(f"machine: {platform.node()} {platform.machine()} cpus={os.cpu_count()} python {platform.python_version()}; "
          f"load average at start {os.getloadavg()[0]:.1f}")  # fmt: skip
    tmp = Path(tempfile.mkdtemp(prefix="bench-conc-"))
    write_policies(tmp)
    workers = [WorkerSpec("control", "control", concurrency=32),
               *[WorkerSpec(f"tiers{i}", "llm.economy,llm.workhorse,llm.frontier", concurrency=args.threads)
                 for i in range(args.processes)]]  # fmt: skip
    fleet = Fleet(workers=workers, sim_args=["--config", str(tmp / "sim.yaml")], env={"PANEL_POLICIES": str(tmp)})
    try:
        fleet.start()
        client = PanelClient(fleet.redis_url)
        print(f"simulator {LATENCY_MS} ms per call; {args.processes} tier process(es) x {args.threads} threads; "
              f"ideal in flight = calls/s x {LATENCY_MS / 1000} s, capped at {args.processes * args.threads}")  # fmt: skip
        for rate in [float(r) for r in args.rates.split(",")]:
            r = step(fleet, client, rate, args.seconds)
            cpu = r["cpu_ms_per_call"]
            assert isinstance(cpu, dict)
            tiers = sum(v for k, v in cpu.items() if k.startswith("tiers"))
            busy = {k: v / r["elapsed"] for k, v in r["cpu"].items()}  # type: ignore[attr-defined,operator]
            print(f"offered {r['offered_calls_s']:5.0f} calls/s (submitted {3 * r['submit_rate']:5.0f}): "  # type: ignore[operator]
                  f"answered {r['calls_s']:6.1f} calls/s; in flight mean {r['in_flight_mean']:5.1f} max {r['in_flight_max']:4d} "
                  f"(ideal {min(float(r['calls_s']) * LATENCY_MS / 1000, args.processes * args.threads):5.1f}); "  # type: ignore[arg-type]
                  f"panel p50 {r['p50']:6.0f} ms p95 {r['p95']:6.0f} ms (slowest member call p50 {r['slowest_call_p50']:5.0f} ms); "
                  f"{r['decided']}/{r['panels']} decided")
            print("    CPU ms per member call: " + ", ".join(f"{k} {v:.2f}" for k, v in cpu.items()) + f" (tier workers {tiers:.2f})")
            print("    CPU busy (cores): " + ", ".join(f"{k} {v:.2f}" for k, v in busy.items())
                  + f"; redis commands per member call {r['redis_per_call']:.0f} (broker + panel state)", flush=True)
    finally:
        fleet.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
