"""Capacity model: what a target load needs (tier and control processes, Redis shards, provider
keys) from measured per-call CPU and Redis commands and the rpm/tpm in policies/models.yaml, and
where the first bottleneck lies. `--measure` re-measures the inputs on this machine.

    python3 -m bench.capacity --panels-per-s 1000 --members 3            # a plan from the figures below
    python3 -m bench.capacity --measure --rate 8 --seconds 20 --write FILE  # re-measure (state on a 3-node cluster)
    python3 -m bench.capacity --panels-per-s 8 --cores 2 --measured FILE  # predict this machine
    panel capacity --panels-per-s 1000 --profile FILE                     # the same plan, from the CLI

docs/capacity.md explains the model; bench/RESULTS.md holds the measured figures.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

import redis
import yaml

from producer.capacity import PANEL_MEMBERS, SHIPPED_POLICIES, Profile, plan, predict_machine, registry, render

# The model (Profile, plan, predict_machine) is producer/capacity.py, shared with `panel capacity`.


def machine_busy_s() -> float:
    """CPU seconds the whole machine spent busy so far (every process, interrupts; /proc/stat)."""
    f = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return (sum(f[:8]) - f[3] - f[4]) / os.sysconf("SC_CLK_TCK")  # all but idle and iowait


def measure(rate: float, seconds: float, plain: bool = False) -> Profile:
    """A fleet with state on a 3-node cluster and the broker on plain Redis, quotas lifted, panels
    of three that all answer in 200 ms: CPU per member call of each process from /proc, commands
    per member call on the broker and on the cluster (INFO commandstats), and the CPU of the
    simulator and of every redis-server per member call (for the one-machine prediction)."""
    from bench.concurrency import cpu_seconds, write_policies
    from producer.client import PanelClient
    from producer.fleet import Fleet, WorkerSpec
    from tests.topologies import ClusterProcess

    def cmds(ports: list[int]) -> int:
        return sum(sum(int(v["calls"]) for v in redis.Redis(port=p).info("commandstats").values()) for p in ports)

    tmp = Path(tempfile.mkdtemp(prefix="bench-cap-"))
    write_policies(tmp)
    (tmp / "sim.yaml").write_text(yaml.safe_dump({"default": {"latency_ms": 200, "answer": "APPROVE"}}))
    cluster = ClusterProcess().start()
    state_env = {} if plain else {"PANEL_STATE_URL": cluster.url}
    fleet = Fleet(workers=[WorkerSpec("control", "control", concurrency=32),
                           WorkerSpec("tiers", "llm.economy,llm.workhorse,llm.frontier", concurrency=128)],
                  sim_args=["--config", str(tmp / "sim.yaml")],
                  env={"PANEL_POLICIES": str(tmp), **state_env})  # fmt: skip
    try:
        fleet.start()
        client = PanelClient(settings=fleet.client_settings())
        assert fleet.redis is not None
        broker_port = fleet.redis.port
        pids = {n: p.pid for n, p in fleet.procs.items()}
        assert fleet.sim_proc is not None and fleet.redis.proc is not None
        pids["sim"] = fleet.sim_proc.pid
        redis_pids = [fleet.redis.proc.pid] + ([] if plain else [p.pid for p in cluster.procs])
        for i, rp in enumerate(redis_pids):
            pids[f"redis{i}"] = rp
        cpu0 = {n: cpu_seconds(p) for n, p in pids.items()} | {"producer": cpu_seconds(os.getpid())}
        busy0 = machine_busy_s()
        state_ports = [broker_port] if plain else cluster.ports
        b0, s0, t0 = cmds([broker_port]), cmds(state_ports), time.monotonic()
        ids = []
        for i in range(int(rate * seconds)):
            delay = t0 + i / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            ids.append(client.submit({"task_class": "bench_concurrency", "lane": "panel", "prompt": uuid.uuid4().hex}))
        results = list(client.wait_many(ids, timeout=300))
        elapsed = time.monotonic() - t0
        calls = sum(1 for r in results if r.receipt for c in r.receipt.calls if c.status == "answered")
        cpu = {n: cpu_seconds(p) - cpu0[n] for n, p in pids.items()} | {
            "producer": cpu_seconds(os.getpid()) - cpu0["producer"]
        }
        lat = sorted(r.receipt.latency_ms for r in results if r.receipt)
        ours, busy = sum(cpu.values()), machine_busy_s() - busy0
        print(f"CPU: this fleet's processes {ours / elapsed:.2f} cores, the whole machine {busy / elapsed:.2f} of "
              f"{os.cpu_count()} (others' jobs and interrupts: {(busy - ours) / elapsed:.2f}); all processes "
              f"{1000 * ours / max(calls, 1):.1f} ms per member call", file=sys.stderr)  # fmt: skip
        print(f"measured: {len(ids)} panels at {rate:g}/s offered, {sum(r.status == 'decided' for r in results)} decided in "
              f"{elapsed:.1f} s ({len(ids) / elapsed:.1f} panels/s); p50 {lat[len(lat) // 2]:.0f} ms, "
              f"p99 {lat[int(0.99 * (len(lat) - 1))]:.0f} ms; {calls} member calls", file=sys.stderr)  # fmt: skip
        redis_cpu = sum(v for n, v in cpu.items() if n.startswith("redis"))
        broker_cmds = 0.0 if plain else (cmds([broker_port]) - b0) / calls
        # plain: one Redis holds both, the split is not observable: it is all reported as state
        state_cmds = (cmds([broker_port]) - b0) / calls if plain else (cmds(state_ports) - s0) / calls
        prof = Profile(tier_cpu_ms=1000 * cpu["tiers"] / calls, control_cpu_ms=1000 * cpu["control"] / calls,
                       producer_cpu_ms=1000 * cpu["producer"] / calls, broker_cmds=broker_cmds, state_cmds=state_cmds,
                       sim_cpu_ms=1000 * cpu["sim"] / calls, redis_cpu_ms=1000 * redis_cpu / calls)  # fmt: skip
        client.close()
        return prof
    finally:
        fleet.stop()
        cluster.stop()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python3 -m bench.capacity", description=__doc__.split("\n")[0])
    ap.add_argument("--panels-per-s", type=float, default=1000.0)
    ap.add_argument("--members", type=int, default=3)
    ap.add_argument("--models", default=",".join(PANEL_MEMBERS), help="the panel's member models (models.yaml)")
    ap.add_argument("--arbiter-rate", type=float, default=0.1)
    ap.add_argument("--cores", type=int, default=0, help="also predict what a machine of this many cores sustains")
    ap.add_argument("--measured", default="", help="a profile (JSON) written by --measure --write")
    ap.add_argument("--measure", action="store_true", help="re-measure the inputs on this machine first")
    ap.add_argument("--rate", type=float, default=8.0, help="--measure: offered panels/s")
    ap.add_argument("--seconds", type=float, default=20.0, help="--measure: seconds of load")
    ap.add_argument("--plain", action="store_true", help="--measure: state on the broker's Redis, not a cluster")
    ap.add_argument("--write", default="", help="--measure: write the measured profile here (for `panel capacity --profile`)")
    args = ap.parse_args(argv)
    print(f"command: python3 -m bench.capacity {' '.join(argv if argv is not None else sys.argv[1:])}".rstrip())
    prof = Profile.model_validate_json(Path(args.measured).read_bytes()) if args.measured else Profile()
    if args.measure:
        prof = measure(args.rate, args.seconds, args.plain)
        print(json.dumps(prof.model_dump(), indent=1))
        if args.write:
            Path(args.write).write_text(json.dumps(prof.model_dump(), indent=1) + "\n")
    reg = registry(SHIPPED_POLICIES / "models.yaml")
    for line in render(plan(args.panels_per_s, args.members, prof, args.models.split(","), reg), prof, args.arbiter_rate):
        print(line)
    if args.cores:
        print(f"this model predicts {predict_machine(prof, args.cores, args.members):.1f} panels/s of {args.members} "
              f"members on {args.cores} shared cores (every process on the same machine)")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
