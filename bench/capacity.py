"""Capacity model: what a target load needs (tier and control processes, Redis shards, provider
keys) from measured per-call CPU and Redis commands and the rpm/tpm in policies/models.yaml, and
where the first bottleneck lies. `--measure` re-measures the inputs on this machine.

    python3 -m bench.capacity --panels-per-s 1000 --members 3            # a plan from the figures below
    python3 -m bench.capacity --measure --rate 8 --seconds 20            # re-measure (state on a 3-node cluster)
    python3 -m bench.capacity --panels-per-s 8 --cores 2 --measured FILE  # predict this machine

docs/capacity.md explains the model; bench/RESULTS.md holds the measured figures.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

import redis
import yaml

SHIPPED = Path(__file__).resolve().parent.parent / "policies"
PANEL_MEMBERS = ["qwen2.5-72b-instruct", "qwen2.5-32b-coder-instruct", "llama3.1-70b"]  # bench_concurrency's


@dataclass
class Inputs:
    """Per member call (a panel of `members` makes `members` calls; all answer: no early exit)."""

    tier_cpu_ms: float = 16.3  # tier worker CPU per member call (bench/RESULTS.md, Concurrency)
    control_cpu_ms: float = 5.5  # control worker CPU per member call
    producer_cpu_ms: float = 9.4  # submit + wait, per member call
    broker_cmds: float = 40.0  # broker Redis commands per member call (Celery/kombu)
    state_cmds: float = 55.0  # state Redis commands per member call (Lua scripts count once)
    redis_ops_per_core: float = 43_000.0  # one Redis here: redis-benchmark -q -n 200000 -c 50 -t set,lpush,hset
    core_utilisation: float = 0.7  # plan each process to this share of its core
    call_latency_s: float = 1.0  # provider latency: threads needed = calls/s x latency
    threads_per_process: int = 128
    tokens_per_call: int = 1500  # prompt + answer, for tpm


def plan(panels_per_s: float, members: int, inp: Inputs, models: list[str], arbiter_rate: float) -> list[str]:
    calls_s = panels_per_s * members
    out = [f"target: {panels_per_s:g} panels/s x {members} members = {calls_s:g} member calls/s "
           f"(+ {panels_per_s * arbiter_rate:g} arbiter calls/s at an arbiter rate of {arbiter_rate:g})"]  # fmt: skip
    per_tier = min(1000 / inp.tier_cpu_ms * inp.core_utilisation, inp.threads_per_process / inp.call_latency_s)
    per_control = 1000 / inp.control_cpu_ms * inp.core_utilisation
    tiers, controls = math.ceil(calls_s / per_tier), math.ceil(calls_s / per_control)
    broker_ops, state_ops = calls_s * inp.broker_cmds, calls_s * inp.state_cmds
    shard = inp.redis_ops_per_core
    state_shards = math.ceil(state_ops / shard)
    out += [
        f"tier processes: {tiers} (one core each; {per_tier:.0f} calls/s per process = "
        f"min(CPU {1000 / inp.tier_cpu_ms * inp.core_utilisation:.0f}, threads {inp.threads_per_process}/latency {inp.call_latency_s:g} s))",
        f"control processes: {controls} ({per_control:.0f} member calls/s each)",
        f"producer CPU: {calls_s * inp.producer_cpu_ms / 1000:.1f} cores (submit + wait)",
        f"broker Redis: {broker_ops:,.0f} commands/s on ONE primary (kombu has no cluster transport); "
        f"one core serves ~{shard:,.0f}: {'fits' if broker_ops <= shard else f'needs {math.ceil(broker_ops / shard)} brokers'}",
        f"state Redis Cluster: {state_ops:,.0f} commands/s -> {state_shards} primar{'y' if state_shards == 1 else 'ies'} "
        f"(+1 replica each); hot slots: one provider's limiter ({_hot_provider(calls_s, models)} evals/s), one tenant's budget",
    ]  # fmt: skip
    registry = yaml.safe_load((SHIPPED / "models.yaml").read_text())["models"]
    per_model = calls_s / len(models)
    for m in models:
        spec = registry[m]
        rpm_need, tpm_need = per_model * 60, per_model * 60 * inp.tokens_per_call
        keys = max(math.ceil(rpm_need / spec["rpm"]), math.ceil(tpm_need / spec["tpm"]))
        out.append(f"provider keys for {m}: {keys} (needs {rpm_need:,.0f} rpm / {tpm_need:,.0f} tpm; "
                   f"one key {spec['rpm']} rpm / {spec['tpm']:,} tpm)")  # fmt: skip
    # Processes, state shards and keys scale out; the broker does not (one primary per Celery app).
    broker_ceiling = shard / max(inp.broker_cmds, 1e-9) / members
    provider_ceiling = min(registry[m]["rpm"] for m in models) / 60 * len(models) / members
    out.append(f"first bottleneck: the broker Redis, the one part that does not scale out, at ~{broker_ceiling:,.0f} "
               f"panels/s ({shard:,.0f} commands/s / {inp.broker_cmds:.0f} per call / {members} members); past it, "
               "split the queues over several brokers (one Celery app per tier) or use RabbitMQ. Before that, "
               f"per provider key: one key of each member model carries ~{provider_ceiling:.1f} panels/s (rpm).")  # fmt: skip
    return out


def _hot_provider(calls_s: float, models: list[str]) -> str:
    registry = yaml.safe_load((SHIPPED / "models.yaml").read_text())["models"]
    per_provider: dict[str, float] = {}
    for m in models:
        per_provider[registry[m]["provider"]] = per_provider.get(registry[m]["provider"], 0) + calls_s / len(models)
    return f"{max(per_provider.values()) * 3:,.0f}"  # breaker allow + reserve + reconcile per call


def predict_machine(inp: Inputs, cores: int, members: int) -> float:
    """Panels/s a machine of `cores` sustains when every process shares it (CPU bound)."""
    per_call_ms = inp.tier_cpu_ms + inp.control_cpu_ms + inp.producer_cpu_ms + (inp.broker_cmds + inp.state_cmds) * 1000 / (
        inp.redis_ops_per_core / inp.core_utilisation)  # fmt: skip
    return cores * 1000 / per_call_ms / members


def measure(rate: float, seconds: float, plain: bool = False) -> Inputs:
    """A fleet with state on a 3-node cluster and the broker on plain Redis, quotas lifted, panels
    of three that all answer in 200 ms: CPU per member call of each process from /proc, commands
    per member call on the broker and on the cluster (INFO commandstats)."""
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
    fleet = Fleet(workers=[WorkerSpec("control", "control", concurrency=32, beat=True),
                           WorkerSpec("tiers", "llm.economy,llm.workhorse,llm.frontier", concurrency=128)],
                  sim_args=["--config", str(tmp / "sim.yaml")],
                  env={"PANEL_POLICIES": str(tmp), **state_env})  # fmt: skip
    try:
        fleet.start()
        client = PanelClient(settings=fleet.client_settings())
        assert fleet.redis is not None
        broker_port = fleet.redis.port
        pids = {n: p.pid for n, p in fleet.procs.items()}
        cpu0 = {n: cpu_seconds(p) for n, p in pids.items()} | {"producer": cpu_seconds(os.getpid())}
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
        print(f"measured: {len(ids)} panels at {rate:g}/s offered, {sum(r.status == 'decided' for r in results)} decided in "
              f"{elapsed:.1f} s ({len(ids) / elapsed:.1f} panels/s); p50 {lat[len(lat) // 2]:.0f} ms, "
              f"p99 {lat[int(0.99 * (len(lat) - 1))]:.0f} ms; {calls} member calls", file=sys.stderr)  # fmt: skip
        if plain:  # one Redis holds both: the split is not observable, report it all as state
            inp = Inputs(tier_cpu_ms=1000 * cpu["tiers"] / calls, control_cpu_ms=1000 * cpu["control"] / calls,
                         producer_cpu_ms=1000 * cpu["producer"] / calls, broker_cmds=0.0,
                         state_cmds=(cmds([broker_port]) - b0) / calls)  # fmt: skip
            client.close()
            return inp
        inp = Inputs(tier_cpu_ms=1000 * cpu["tiers"] / calls, control_cpu_ms=1000 * cpu["control"] / calls,
                     producer_cpu_ms=1000 * cpu["producer"] / calls, broker_cmds=(cmds([broker_port]) - b0) / calls,
                     state_cmds=(cmds(state_ports) - s0) / calls)  # fmt: skip
        client.close()
        return inp
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
    ap.add_argument("--measured", default="", help="a JSON file of Inputs written by --measure")
    ap.add_argument("--measure", action="store_true", help="re-measure the inputs on this machine first")
    ap.add_argument("--rate", type=float, default=8.0, help="--measure: offered panels/s")
    ap.add_argument("--seconds", type=float, default=20.0, help="--measure: seconds of load")
    ap.add_argument("--plain", action="store_true", help="--measure: state on the broker's Redis, not a cluster")
    args = ap.parse_args(argv)
    print(f"command: python3 -m bench.capacity {' '.join(argv if argv is not None else sys.argv[1:])}".rstrip())
    inp = Inputs(**json.loads(Path(args.measured).read_text())) if args.measured else Inputs()
    if args.measure:
        inp = measure(args.rate, args.seconds, args.plain)
        print(json.dumps(asdict(inp), indent=1))
    for line in plan(args.panels_per_s, args.members, inp, args.models.split(","), args.arbiter_rate):
        print(line)
    if args.cores:
        print(f"this model predicts {predict_machine(inp, args.cores, args.members):.1f} panels/s of {args.members} "
              f"members on {args.cores} shared cores (every process on the same machine)")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
