"""`panel capacity`: what a target load needs (tier and control processes, broker and state Redis,
provider keys) from a measured profile and the rpm/tpm in models.yaml, and where the first
bottleneck lies. The model is explained in docs/capacity.md; a profile is measured on a real fleet
by `python3 -m bench.capacity --measure --write FILE`.

    panel capacity --panels-per-s 1000 --members 3 --profile bench/capacity_measured.json
    panel capacity --panels-per-s 40 --cores 2 --profile FILE      # also: what this machine sustains
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from producer.errors import PanelError

SHIPPED_POLICIES = Path(__file__).resolve().parent.parent / "policies"
PANEL_MEMBERS = ("qwen2.5-72b-instruct", "qwen2.5-32b-coder-instruct", "llama3.1-70b")  # bench_concurrency's


class Profile(BaseModel):
    """Per member call, measured (a panel of `members` makes `members` calls; all answer). The
    defaults are bench/capacity_measured.json: state on a 3-node cluster, 2 shared vCPUs."""

    model_config = ConfigDict(extra="forbid")

    tier_cpu_ms: float = Field(default=6.83, gt=0, description="tier worker CPU per member call")
    control_cpu_ms: float = Field(default=2.31, gt=0, description="control worker CPU per member call")
    producer_cpu_ms: float = Field(default=0.83, ge=0, description="submit + wait CPU per member call")
    broker_cmds: float = Field(default=19.33, ge=0, description="broker Redis commands per member call")
    state_cmds: float = Field(default=59.0, gt=0, description="state Redis commands per member call")
    redis_ops_per_core: float = Field(default=43_000.0, gt=0, description="commands/s one Redis serves")
    core_utilisation: float = Field(default=0.7, gt=0, le=1, description="plan each process to this share of a core")
    call_latency_s: float = Field(default=1.0, gt=0, description="provider latency: threads = calls/s x latency")
    threads_per_process: int = Field(default=128, ge=1)
    tokens_per_call: int = Field(default=1500, ge=1, description="prompt + answer, for tpm")
    # Measured CPU of the other processes of a one-machine fleet (None: not measured; then Redis
    # CPU is modelled as commands / redis_ops_per_core and the simulator's is left out)
    sim_cpu_ms: float | None = Field(default=None, ge=0, description="the simulator's CPU per member call")
    redis_cpu_ms: float | None = Field(default=None, ge=0, description="redis-server CPU per member call")


def load_profile(path: Path) -> Profile:
    try:
        return Profile.model_validate_json(path.read_bytes())
    except FileNotFoundError:
        raise PanelError(f"--profile {path}: no such file; measure one with "
                         "`python3 -m bench.capacity --measure --write FILE`") from None  # fmt: skip
    except ValidationError as e:
        err = e.errors()[0]
        field = ".".join(str(x) for x in err["loc"]) or "(the file)"
        raise PanelError(f"--profile {path}: field {field}: {err['msg']} (fields: {', '.join(Profile.model_fields)}; "
                         "`python3 -m bench.capacity --measure --write FILE` writes a valid one)") from None  # fmt: skip


@dataclass(frozen=True)
class ModelKeys:
    model: str
    keys: int
    rpm_need: float
    tpm_need: float
    rpm: int
    tpm: int


@dataclass(frozen=True)
class Plan:
    panels_per_s: float
    members: int
    calls_s: float
    per_tier: float  # member calls/s one tier process carries
    tiers: int
    per_control: float
    controls: int
    producer_cores: float
    broker_ops: float
    brokers: int  # broker primaries the commands need (kombu has no cluster transport: one per Celery app)
    state_ops: float
    state_shards: int
    hot_provider_evals: float
    model_keys: tuple[ModelKeys, ...]
    broker_ceiling: float  # panels/s one broker carries
    key_ceiling: float  # panels/s one key of each member model carries (rpm)


def registry(models_file: Path) -> dict[str, dict[str, object]]:
    return dict(yaml.safe_load(models_file.read_text())["models"])


def plan(panels_per_s: float, members: int, p: Profile, models: list[str], reg: dict[str, dict[str, object]]) -> Plan:
    unknown = [m for m in models if m not in reg]
    if unknown:
        raise PanelError(f"--models: {', '.join(unknown)} not in models.yaml (known: {', '.join(sorted(reg))})")
    calls_s = panels_per_s * members
    per_tier = min(1000 / p.tier_cpu_ms * p.core_utilisation, p.threads_per_process / p.call_latency_s)
    per_control = 1000 / p.control_cpu_ms * p.core_utilisation
    broker_ops, state_ops = calls_s * p.broker_cmds, calls_s * p.state_cmds
    per_model = calls_s / len(models)
    mk = []
    for m in models:
        rpm, tpm = int(reg[m]["rpm"]), int(reg[m]["tpm"])  # type: ignore[call-overload]
        rpm_need, tpm_need = per_model * 60, per_model * 60 * p.tokens_per_call
        mk.append(ModelKeys(m, max(math.ceil(rpm_need / rpm), math.ceil(tpm_need / tpm)), rpm_need, tpm_need, rpm, tpm))
    per_provider: dict[str, float] = {}
    for m in models:
        prov = str(reg[m]["provider"])
        per_provider[prov] = per_provider.get(prov, 0.0) + per_model
    return Plan(
        panels_per_s=panels_per_s, members=members, calls_s=calls_s, per_tier=per_tier,
        tiers=math.ceil(calls_s / per_tier), per_control=per_control, controls=math.ceil(calls_s / per_control),
        producer_cores=calls_s * p.producer_cpu_ms / 1000, broker_ops=broker_ops,
        brokers=max(1, math.ceil(broker_ops / p.redis_ops_per_core)), state_ops=state_ops,
        state_shards=max(1, math.ceil(state_ops / p.redis_ops_per_core)),
        hot_provider_evals=max(per_provider.values()) * 3,  # breaker allow + reserve + reconcile per call
        model_keys=tuple(mk), broker_ceiling=p.redis_ops_per_core / max(p.broker_cmds, 1e-9) / members,
        key_ceiling=min(int(reg[m]["rpm"]) for m in models) / 60 * len(models) / members,  # type: ignore[call-overload]
    )  # fmt: skip


def predict_machine(p: Profile, cores: int, members: int) -> float:
    """Panels/s a machine of `cores` sustains when every process shares it (CPU bound): the CPU of
    one member call summed over every process, Redis's measured when the profile has it."""
    redis_ms = p.redis_cpu_ms if p.redis_cpu_ms is not None else (
        (p.broker_cmds + p.state_cmds) * 1000 / (p.redis_ops_per_core / p.core_utilisation))  # fmt: skip
    per_call_ms = p.tier_cpu_ms + p.control_cpu_ms + p.producer_cpu_ms + (p.sim_cpu_ms or 0.0) + redis_ms
    return cores * 1000 / per_call_ms / members


def render(pl: Plan, p: Profile, arbiter_rate: float) -> list[str]:
    out = [
        f"target: {pl.panels_per_s:g} panels/s x {pl.members} members = {pl.calls_s:g} member calls/s "
        f"(+ {pl.panels_per_s * arbiter_rate:g} arbiter calls/s at an arbiter rate of {arbiter_rate:g})",
        f"tier processes: {pl.tiers} (one core each; {pl.per_tier:.0f} calls/s per process = min(CPU "
        f"{1000 / p.tier_cpu_ms * p.core_utilisation:.0f}, threads {p.threads_per_process}/latency {p.call_latency_s:g} s))",
        f"control processes: {pl.controls} ({pl.per_control:.0f} member calls/s each)",
        f"producer CPU: {pl.producer_cores:.1f} cores (submit + wait)",
        f"broker Redis: {pl.broker_ops:,.0f} commands/s on ONE primary (kombu has no cluster transport); one serves "
        f"~{p.redis_ops_per_core:,.0f}: {'fits' if pl.brokers == 1 else f'needs {pl.brokers} brokers'}",
        f"state Redis Cluster: {pl.state_ops:,.0f} commands/s -> {pl.state_shards} "
        f"primar{'y' if pl.state_shards == 1 else 'ies'} (+1 replica each); hot slot: one provider's limiter "
        f"({pl.hot_provider_evals:,.0f} evals/s), one tenant's budget",
    ]  # fmt: skip
    for k in pl.model_keys:
        out.append(f"provider keys for {k.model}: {k.keys} (needs {k.rpm_need:,.0f} rpm / {k.tpm_need:,.0f} tpm; "
                   f"one key {k.rpm} rpm / {k.tpm:,} tpm)")  # fmt: skip
    out.append(f"first bottleneck: the broker Redis, the one part that does not scale out, at ~{pl.broker_ceiling:,.0f} "
               f"panels/s ({p.redis_ops_per_core:,.0f} commands/s / {p.broker_cmds:.1f} per call / {pl.members} members); "
               "past it, split the queues over several brokers (one Celery app per tier) or use RabbitMQ. Before "
               f"that, per provider key: one key of each member model carries ~{pl.key_ceiling:.1f} panels/s (rpm).")  # fmt: skip
    return out


def add_parser(sub: argparse._SubParsersAction, **kw: object) -> None:  # type: ignore[type-arg]
    s = sub.add_parser("capacity", **kw)  # type: ignore[arg-type]
    s.add_argument("--panels-per-s", type=float, required=True, help="the target load")
    s.add_argument("--members", type=int, default=3, help="member calls per panel (default 3)")
    s.add_argument("--profile", help="a measured profile (JSON; `python3 -m bench.capacity --measure --write FILE`); "
                   "default: the figures in docs/capacity.md")  # fmt: skip
    s.add_argument("--models", default=",".join(PANEL_MEMBERS), help="the panel's member models (models.yaml)")
    s.add_argument("--models-file", default=None, help="default: $PANEL_POLICIES/models.yaml or the shipped one")
    s.add_argument("--arbiter-rate", type=float, default=0.1, help="share of panels that call the arbiter (default 0.1)")
    s.add_argument("--cores", type=int, default=0, help="also predict what one machine of this many cores sustains")
    s.set_defaults(func=cmd_capacity)


def cmd_capacity(args: argparse.Namespace) -> int:
    if args.panels_per_s <= 0 or args.members < 1:
        raise PanelError("--panels-per-s must be > 0 and --members >= 1")
    p = load_profile(Path(args.profile)) if args.profile else Profile()
    models_file = Path(args.models_file) if args.models_file else (
        Path(os.environ["PANEL_POLICIES"]) / "models.yaml" if os.environ.get("PANEL_POLICIES") else SHIPPED_POLICIES / "models.yaml")  # fmt: skip
    if not models_file.is_file():
        raise PanelError(f"--models-file {models_file}: no such file")
    pl = plan(args.panels_per_s, args.members, p, [m for m in args.models.split(",") if m], registry(models_file))
    print(f"profile: {args.profile or 'built-in (docs/capacity.md)'}; models: {models_file}")
    for line in render(pl, p, args.arbiter_rate):
        print(line)
    if args.cores:
        print(f"one machine of {args.cores} cores, every process on it: ~{predict_machine(p, args.cores, args.members):.1f} "
              f"panels/s of {args.members} members (CPU bound)", file=sys.stdout)  # fmt: skip
    return 0
