"""Celery's own CPU per task, plain and with the fleet's Celery settings, in alternating rounds.

    python3 -m bench.celery_share --rounds 6 --panels 100 --rate 20

The bare task (bench/bare_task.py: one provider call to the simulator, no panel logic) runs in
five worker processes side by side, one per form: plain Celery (`celery`), each of the fleet's
three Celery-side changes alone (`events`: task events in batches, workers/task_events.py;
`client`: one redis-py client per kombu channel, workers/kombu_client.py; `acks`: acks ride with
the next delivery, workers/deferred_ack.py) and all three (`fleet`). Each round sends `--panels` x 3
calls at `--rate` panels/s to each form in turn (the order rotates every round) and reads the
worker's user + system CPU from /proc; the median per form and its difference to plain Celery are
printed. Every form does the same HTTP call and the same Celery work, so the differences are the
settings' own.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from statistics import median

import redis

from bench.hotpath import bench_policies, run_bare
from bench.overhead import MEMBERS, cpu_seconds
from producer.embedded import child_env, stop_process
from producer.fleet import Fleet, WorkerSpec

FORMS = ("celery", "events", "client", "acks", "fleet")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--panels", type=int, default=100, help="3 calls each, per form per round")
    ap.add_argument("--rate", type=float, default=20.0, help="panels/s")
    args = ap.parse_args()
    # the fleet gives the Redis, the simulator and a worker that publishes the policies; no tiers
    fleet = Fleet(env={"PANEL_POLICIES": str(bench_policies())}, workers=[WorkerSpec("control", "control", concurrency=2)])
    fleet.start()
    workers: dict[str, subprocess.Popen[bytes]] = {}
    try:
        fleet.sim("/_sim/config", {"models": {m: {"latency_ms": 200, "answer": "B"} for m in MEMBERS}})
        for i, form in enumerate(FORMS):
            workers[form] = subprocess.Popen(
                [sys.executable, "-m", "celery", "-A", "bench.bare_task", "worker", "-Q", f"bench.bare.{form}",
                 "--pool", "threads", "-c", "128", "--without-mingle", "--without-gossip", "-E", "--loglevel", "INFO",
                 "-n", f"bare{i}@%h"], env=child_env({"PANEL_REDIS_URL": fleet.redis_url, "BARE_AS": form}),
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        r = redis.Redis.from_url(fleet.redis_url, client_name="bench-main")
        time.sleep(5)
        for form in FORMS:
            run_bare(fleet, r, 10, 10, f"bench.bare.{form}")  # warm-up
        print(f"machine: {os.cpu_count()} cores; load average at start {os.getloadavg()}")
        print(f"command: python3 -m bench.celery_share --rounds {args.rounds} --panels {args.panels} --rate {args.rate:g}")
        per: dict[str, list[float]] = {f: [] for f in FORMS}
        for k in range(args.rounds):
            for form in FORMS[k % len(FORMS):] + FORMS[: k % len(FORMS)]:
                c0 = cpu_seconds(workers[form].pid)
                run_bare(fleet, r, args.panels, args.rate, f"bench.bare.{form}")
                per[form].append((cpu_seconds(workers[form].pid) - c0) * 1000 / (args.panels * len(MEMBERS)))
        base = median(per["celery"])
        print("worker CPU ms per task (each round), median, and against plain Celery:")
        for form in FORMS:
            m = median(per[form])
            print(f"   {form:7} {' '.join(f'{x:.2f}' for x in per[form])}  median {m:.2f}  {m - base:+.2f} ms ({m / base - 1:+.0%})")
        print(f"load average at end {os.getloadavg()}")
    finally:
        for p in workers.values():
            stop_process(p)
        fleet.stop()


if __name__ == "__main__":
    main()
    sys.stdout.flush()
    os._exit(0)
