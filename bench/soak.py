"""Soak: a steady rate of panels for a long time; every interval, worker RSS, broker queue depth,
Redis memory and decision latency; at the end a verdict on their slopes.

    python3 -m bench.soak --rate 5 --minutes 60            # the documented hour (not in CI)
    python3 -m bench.soak --rate 5 --minutes 5             # a short look
    python3 -m bench.soak --rate 5 --minutes 5 --interval-s 30

One fleet (control + one tier process, threads pool), a redis-server, the simulator answering
each member in `--latency-ms`. Panels of three members that all answer (quorum 3): three provider
calls each. Open-loop: panel i goes at t0 + i/rate whether or not the fleet keeps up. Results
expire after `--result-ttl-s` (default 120 s) so Redis memory reaches its steady state inside the
run; with the shipped 7-day TTL it grows with every job by design (see the per-job figure).

Verdict (slopes by least squares over the settled intervals): flat when each tier/control
process grows < 8 MiB per hour, queue depth < rate x 2 s of work per hour, Redis memory without
the ledger stream < 2 MiB per hour, and p99 decision latency < 20% of its mean per hour. Each
bound is printed beside the measured slope. The settled part starts after the longer of the result
TTL (keys reach their plateau) and the fill time of the workers' two per-process spec caches
(workers/jobstore.py JOB_CACHE and workers/panel/state.py SPEC_CACHE, 4,096 entries each, ~11 MiB
together: at 5 panels/s they fill in ~14 minutes, which a 5-minute run read as a leak), or at
`--settle-min`. The ledger stream grows by design until its XADD MAXLEN (200,000 receipts, ~11 h
at 5/s), so it is its own column and left out of the Redis verdict. Load averages are printed
each interval: other jobs on the machine move latency.
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
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import redis
import yaml

from bench.concurrency import write_policies
from producer import keys
from producer.client import PanelClient
from producer.fleet import Fleet, WorkerSpec
from workers.jobstore import JOB_CACHE
from workers.ledger import LEDGER_MAXLEN
from workers.panel.state import SPEC_CACHE

QUEUES = ("control", "llm.economy", "llm.workhorse", "llm.frontier", "llm.batch")
MIB = 1024 * 1024


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def queue_depth(r: redis.Redis) -> int:
    pipe = r.pipeline(transaction=False)
    for q in QUEUES:
        for suffix in ("", ":3", ":6", ":9"):
            pipe.llen(q + suffix)
    return int(sum(pipe.execute()))


def slope(xs: list[float], ys: list[float]) -> float:
    """Least-squares slope of ys over xs (0 with fewer than two points)."""
    if len(xs) < 2:
        return 0.0
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    den = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / den if den else 0.0


@dataclass
class Window:
    latencies_ms: list[float] = field(default_factory=list)
    failed: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def take(self) -> tuple[list[float], int]:
        with self.lock:
            lat, failed = self.latencies_ms, self.failed
            self.latencies_ms, self.failed = [], 0
        return lat, failed


def pct(values: list[float], q: float) -> float:
    return sorted(values)[min(len(values) - 1, int(q * len(values)))] if values else float("nan")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python3 -m bench.soak", description=__doc__.split("\n")[0])
    ap.add_argument("--rate", type=float, default=5.0, help="panels per second (3 member calls each)")
    ap.add_argument("--minutes", type=float, default=60.0)
    ap.add_argument("--interval-s", type=float, default=60.0, help="one report line per interval")
    ap.add_argument("--latency-ms", type=int, default=300, help="simulator latency per member call")
    ap.add_argument("--threads", type=int, default=64, help="threads of the tier process")
    ap.add_argument("--result-ttl-s", type=int, default=120)
    ap.add_argument("--settle-min", type=float, default=None,
                    help="slopes from this minute on (default: after the result TTL and the spec caches' fill time)")
    args = ap.parse_args(argv)
    print(f"command: python3 -m bench.soak {' '.join(argv if argv is not None else sys.argv[1:])}".rstrip())
    print(f"machine: {platform.node()} cpus={os.cpu_count()} python {platform.python_version()}; "
          f"load average at start {os.getloadavg()[0]:.1f}", flush=True)  # fmt: skip
    tmp = Path(tempfile.mkdtemp(prefix="bench-soak-"))
    write_policies(tmp)
    (tmp / "sim.yaml").write_text(yaml.safe_dump({"default": {"latency_ms": args.latency_ms, "answer": "APPROVE"}}))
    workers = [WorkerSpec("control", "control", concurrency=32),
               WorkerSpec("tiers", "llm.economy,llm.workhorse,llm.frontier", concurrency=args.threads)]  # fmt: skip
    fleet = Fleet(workers=workers, sim_args=["--config", str(tmp / "sim.yaml")],
                  env={"PANEL_POLICIES": str(tmp), "PANEL_RESULT_TTL": str(args.result_ttl_s)})  # fmt: skip
    window, stop = Window(), threading.Event()
    rows: list[dict[str, float]] = []
    try:
        fleet.start()
        client = PanelClient(fleet.redis_url)
        broker = redis.Redis.from_url(fleet.redis_url)
        pool = ThreadPoolExecutor(max_workers=64)

        def wait_one(job_id: str) -> None:
            try:
                res = client.wait(job_id, timeout=600)
                with window.lock:
                    if res.status == "decided" and res.receipt is not None:
                        window.latencies_ms.append(res.receipt.latency_ms)
                    else:
                        window.failed += 1
            except Exception:
                with window.lock:
                    window.failed += 1

        def produce() -> None:
            t0, i = time.monotonic(), 0
            while not stop.is_set():
                delay = t0 + i / args.rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                job_id = client.submit({"task_class": "bench_concurrency", "lane": "panel",
                                        "prompt": f"soak {uuid.uuid4().hex}"})  # fmt: skip
                pool.submit(wait_one, job_id)
                i += 1

        producer = threading.Thread(target=produce, daemon=True)
        t_start = time.monotonic()
        producer.start()
        procs = {n: p.pid for n, p in fleet.procs.items()}
        print(
            "min   " + "  ".join(f"{n} RSS MiB" for n in procs)
            + "  queue  redis MiB  ledger MiB   keys  decided  failed  p50 ms  p99 ms  load 1/5 min"
        )
        end = t_start + args.minutes * 60
        while time.monotonic() < end:
            time.sleep(min(args.interval_s, max(0.0, end - time.monotonic())))
            lat, failed = window.take()
            row = {"min": (time.monotonic() - t_start) / 60, "queue": float(queue_depth(broker)),
                   "redis_mib": int(broker.info("memory")["used_memory"]) / MIB,
                   "ledger_mib": (broker.memory_usage(keys.LEDGER_STREAM) or 0) / MIB, "keys": float(broker.dbsize()),
                   "load1": os.getloadavg()[0], "load5": os.getloadavg()[1], "decided": float(len(lat)),
                   "failed": float(failed), "p50": pct(lat, 0.5), "p99": pct(lat, 0.99),
                   **{f"rss_{n}": rss_mib(pid) for n, pid in procs.items()}}  # fmt: skip
            rows.append(row)
            print(f"{row['min']:5.1f} " + "  ".join(f"{row[f'rss_{n}']:12.1f}" for n in procs)
                  + f"  {row['queue']:5.0f}  {row['redis_mib']:9.1f}  {row['ledger_mib']:10.1f}  {row['keys']:5.0f}"
                  f"  {row['decided']:7.0f}  {row['failed']:6.0f}  {row['p50']:6.0f}  {row['p99']:6.0f}"
                  f"  {row['load1']:4.1f} {row['load5']:4.1f}", flush=True)  # fmt: skip
        stop.set()
        producer.join(10)
        pool.shutdown(wait=True, cancel_futures=False)
        verdict(rows, procs, args)
        ledger = broker.memory_usage(keys.LEDGER_STREAM) or 0
        print(f"ledger stream: {broker.xlen(keys.LEDGER_STREAM)} receipts, {ledger / MIB:.1f} MiB of the Redis memory "
              f"(capped by XADD MAXLEN ~{LEDGER_MAXLEN:,}, not by the result TTL)")  # fmt: skip
        client.close()
    finally:
        stop.set()
        fleet.stop()
    return 0


def verdict(rows: list[dict[str, float]], procs: dict[str, int], args: argparse.Namespace) -> None:
    settle_min = args.settle_min
    if settle_min is None:  # keys past their TTL, and both spec caches full (JOB_CACHE jobs seen)
        settle_min = max(args.result_ttl_s, max(JOB_CACHE, SPEC_CACHE) / args.rate + 60) / 60
    settled = [r for r in rows if r["min"] >= settle_min] or rows
    xs = [r["min"] for r in settled]
    checks: list[tuple[str, float, float, str]] = []  # name, slope per hour, bound per hour, unit
    for n in procs:
        checks.append((f"{n} RSS", 60 * slope(xs, [r[f"rss_{n}"] for r in settled]), 8.0, "MiB/h"))
    checks.append(("queue depth", 60 * slope(xs, [r["queue"] for r in settled]), args.rate * 2, "msgs/h"))
    checks.append(("redis - ledger", 60 * slope(xs, [r["redis_mib"] - r["ledger_mib"] for r in settled]), 2.0, "MiB/h"))
    checks.append(("keys", 60 * slope(xs, [r["keys"] for r in settled]), args.rate * 60, "keys/h"))
    p99s = [r["p99"] for r in settled if r["p99"] == r["p99"]]
    p99_mean = statistics.fmean(p99s) if p99s else float("nan")
    checks.append(("p99 latency", 60 * slope(xs[: len(p99s)], p99s), 0.2 * p99_mean, "ms/h"))
    decided, failed = sum(r["decided"] for r in rows), sum(r["failed"] for r in rows)
    print(f"\n{decided:.0f} panels decided, {failed:.0f} failed in {rows[-1]['min']:.1f} min at {args.rate}/s offered; "
          f"slopes over minutes {xs[0]:.1f}..{xs[-1]:.1f} (past the {args.result_ttl_s} s result TTL and the "
          f"{max(JOB_CACHE, SPEC_CACHE)}-entry spec caches' fill), extrapolated per hour; load average "
          f"{min(r['load1'] for r in rows):.1f}-{max(r['load1'] for r in rows):.1f} (1 min) over the run:")  # fmt: skip
    flat = True
    for name, per_h, bound, unit in checks:
        ok = per_h <= bound  # only growth is a finding: a falling slope is warm-up ending
        flat &= ok
        print(f"  {name:14} {per_h:+10.1f} {unit:7} bound +{bound:.1f}  {'flat' if ok else 'GROWING'}")
    print(f"verdict: {'FLAT' if flat and not failed else 'NOT FLAT'}"
          + ("" if len(settled) >= 5 else f" (only {len(settled)} intervals: a trend needs a longer run)"))  # fmt: skip


if __name__ == "__main__":
    raise SystemExit(main())
