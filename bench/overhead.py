"""Decision latency of an agreeing panel: the fleet against the ideal and Celery's native chord.

    python -m bench.overhead [--panels 200] [--rates 10,50]

Ideal: one process, `asyncio.gather` of the same three httpx calls to the same simulator,
decided at the second agreeing answer. Fleet: `panel.run` on real workers, decided by vote.lua,
the slow member cancelled. Native chord: Celery group + callback, which waits for every member.
Members answer the same thing at 200 ms, 200 ms and 1000 ms. All three run side by side in one
process tree on one machine, and the figures are printed as ratios to the ideal.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
import redis
import yaml

from producer.client import PanelClient
from producer.embedded import child_env, stop_process
from producer.fleet import SIM_KEY, Fleet, WorkerSpec

MEMBERS = {"qwen2.5-72b-instruct": 200, "qwen2.5-32b-coder-instruct": 200, "llama3.1-70b": 1000}


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc), to explain where a rate saturates."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def fleet_pids(fleet: Fleet) -> dict[str, int]:
    assert fleet.redis is not None and fleet.sim_proc is not None
    pids = {name: p.pid for name, p in fleet.procs.items()}
    return {**pids, "redis": fleet.redis.proc.pid, "sim": fleet.sim_proc.pid, "producer": os.getpid()}


def pct(values: list[float], q: float) -> float:
    v = sorted(values)
    return v[min(len(v) - 1, int(q * len(v)))]


async def ideal_panel(client: httpx.AsyncClient, base: str, prompt: str) -> float:
    t0 = time.perf_counter()

    async def one(model: str) -> str:
        r = await client.post(f"{base}/v1/chat/completions", headers={"Authorization": f"Bearer {SIM_KEY}"},
                              json={"model": model, "messages": [{"role": "user", "content": prompt}]})  # fmt: skip
        return str(r.json()["choices"][0]["message"]["content"]).strip()

    tasks = [asyncio.create_task(one(m)) for m in MEMBERS]
    seen: dict[str, int] = {}
    for fut in asyncio.as_completed(tasks):
        a = await fut
        seen[a] = seen.get(a, 0) + 1
        if seen[a] >= 2:
            break
    latency = time.perf_counter() - t0
    for t in tasks:
        t.cancel()
    return latency


async def run_ideal(base: str, n: int, rate: float) -> list[float]:
    async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=1000)) as client:
        jobs = []
        for _ in range(n):
            jobs.append(asyncio.create_task(ideal_panel(client, base, f"ideal {uuid.uuid4().hex} A) x B) y")))
            await asyncio.sleep(1 / rate)
        return list(await asyncio.gather(*jobs))


def run_fleet(client: PanelClient, n: int, rate: float) -> list[float]:
    ids = []
    for _ in range(n):
        t = time.perf_counter()
        ids.append(client.submit({"task_class": "multiple_choice", "lane": "panel", "prompt": f"fleet {uuid.uuid4().hex} A) x B) y"}))
        time.sleep(max(0.0, 1 / rate - (time.perf_counter() - t)))
    out = []
    for jid in ids:
        res = client.wait(jid, timeout=120)
        assert res.receipt is not None and res.receipt.decision == "quorum", res
        out.append(res.receipt.latency_ms / 1000)
    return out


def run_native(fleet: Fleet, n: int, rate: float) -> list[float]:
    from celery import chord

    from bench import native_chord

    native_chord.app.conf.broker_url = native_chord.app.conf.result_backend = fleet.redis_url
    r = redis.Redis.from_url(fleet.redis_url)
    r.delete("bench:native")
    for i in range(n):
        t = time.perf_counter()
        prompt = f"native {uuid.uuid4().hex} A) x B) y"
        header = [native_chord.member.s(fleet.sim_url, m, prompt) for m in MEMBERS]
        chord(header)(native_chord.decide.s(time.time(), f"p{i}"))
        time.sleep(max(0.0, 1 / rate - (time.perf_counter() - t)))
    end = time.time() + 120
    while r.hlen("bench:native") < n and time.time() < end:
        time.sleep(0.2)
    return [float(v) for v in r.hvals("bench:native")]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--panels", type=int, default=200)
    ap.add_argument("--rates", default="10,50")
    args = ap.parse_args()
    # The registry's real limits (600 rpm for these models) would make the limiter, not the
    # queue, the bottleneck at 50 panels/s: measure overhead with limits far above the load.
    tmp = Path(tempfile.mkdtemp(prefix="bench-policies-"))
    shipped = Path(__file__).resolve().parent.parent / "policies"
    reg = yaml.safe_load((shipped / "models.yaml").read_text())
    for m in reg["models"].values():
        m["rpm"], m["tpm"] = 1_000_000, 1_000_000_000
    (tmp / "models.yaml").write_text(yaml.safe_dump(reg))
    shutil.copy(shipped / "tasks.yaml", tmp / "tasks.yaml")
    fleet = Fleet(env={"PANEL_POLICIES": str(tmp)}, workers=[WorkerSpec("control", "control", 32),
                           WorkerSpec("tiers", "llm.economy,llm.workhorse,llm.frontier", 256)])  # fmt: skip
    fleet.start()
    native = None
    try:
        fleet.sim("/_sim/config", {"models": {m: {"latency_ms": ms, "answer": "B"} for m, ms in MEMBERS.items()}})
        native = subprocess.Popen([sys.executable, "-m", "celery", "-A", "bench.native_chord", "worker", "-Q", "native",
                                   "--pool", "threads", "-c", "256", "--without-mingle", "--without-gossip", "-l", "WARNING"],
                                  env=child_env({"PANEL_REDIS_URL": fleet.redis_url}), stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL)  # fmt: skip
        time.sleep(3)
        client = PanelClient(fleet.redis_url)
        print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}")
        print(f"command: python -m bench.overhead --panels {args.panels} --rates {args.rates}")
        print(f"members (latency ms): {MEMBERS}; quorum 2 of 3, all agree\n")
        print(f"{'rate/s':>6} {'path':8} {'p50 ms':>8} {'p99 ms':>8} {'p50 over ideal ms':>18} {'p99 over ideal ms':>18} {'p50 ratio':>9}")
        for rate in [float(x) for x in args.rates.split(",")]:
            ideal = asyncio.run(run_ideal(fleet.sim_url, args.panels, rate))
            pids = fleet_pids(fleet)
            before = {k: cpu_seconds(p) for k, p in pids.items()}
            fl = run_fleet(client, args.panels, rate)
            cpu_ms = {k: (cpu_seconds(p) - before[k]) * 1000 / args.panels for k, p in pids.items()}
            nat = run_native(fleet, args.panels, rate)
            base50, base99 = pct(ideal, 0.5), pct(ideal, 0.99)
            for name, v in (("ideal", ideal), ("fleet", fl), ("native", nat)):
                if not v:
                    print(f"{rate:6.0f} {name:8} (no results)")
                    continue
                p50, p99 = pct(v, 0.5), pct(v, 0.99)
                print(f"{rate:6.0f} {name:8} {p50 * 1000:8.1f} {p99 * 1000:8.1f} {(p50 - base50) * 1000:18.1f} "
                      f"{(p99 - base99) * 1000:18.1f} {p50 / base50:9.2f}")  # fmt: skip
            print(f"{'':6} (n={len(fl)} fleet panels, {len(nat)} native chords, median of {statistics.median(ideal) * 1000:.0f} ms ideal)")
            total = sum(cpu_ms.values())
            print(f"{'':6} fleet CPU ms per panel: {', '.join(f'{k} {v:.1f}' for k, v in cpu_ms.items())}; "
                  f"total {total:.1f} -> at most ~{1000 * (os.cpu_count() or 1) / total:.0f} panels/s on this machine")  # fmt: skip
    finally:
        if native:
            stop_process(native)
        fleet.stop()


if __name__ == "__main__":
    main()
    # Celery's AsyncResult.__del__ unsubscribes through the result backend during interpreter
    # teardown and prints a traceback; everything is measured and stopped by now.
    sys.stdout.flush()
    os._exit(0)
