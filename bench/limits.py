"""Fleet-wide rate limits under load: many worker processes, one model, one provider limit.

    python -m bench.limits                                  # all scenarios, 2-minute measured windows
    python -m bench.limits --scenarios sim-rpm --seconds 20 # a quick look

Each scenario starts a real fleet (redis-server, a control worker and `--workers` tier worker
processes of `--concurrency` threads) whose policies dir (PANEL_POLICIES, written here; nothing
in code changes) gives one model its limit, and submits single-lane jobs for that model faster
than the limit allows, so the limiter, not the producer, sets the pace. The provider enforces
N itself and counts what it admitted and what it refused:

- sim-rpm / sim-tpm: the simulator's `rpm` / `tpm` knobs, a sliding 60 s window;
- llmock-rpm: `llmock serve --rpm N`, a token bucket that starts full.

Measured, per scenario, over `--seconds` after a `--warmup`: utilisation = what the provider
admitted per minute / N (requests for rpm; its own token count for tpm, with prompt sizes mixed
from `--prompt-chars`), and the provider's 429 count over the whole run, warm-up included.
The figures are ratios to N, the provider's limit, not to the registry's.

Why the registry says `--headroom` 0.97 x N with `--burst-s` 1: the limiter lets through at most
R x (60 + burst)/60 in any 60 s (R the registry rate), and a sliding-window provider (the
simulator) counts arrivals, which lag our grants by a jitter D; so R x (60 + burst + D) must
stay under N x 60: 0.97 with a 1 s burst tolerates D up to 0.85 s. (0.98 with a 2 s burst drew
two 429s in a 2-minute run on a loaded machine: its bound, 303.8 a minute, is over 300.) A tpm
request larger than the burst waits for a clear schedule, so prompts stay under ~650 tokens
here. The limiter reserves min(256, max_output_tokens) for the answer and settles to the real
usage after the call, but a refund comes back only while the reservation is still ahead of the
clock: with a 1 s burst and calls slower than that, an over-estimate is capacity lost. The
simulator's one-word answers fit `--max-output-tokens 32`; with 1024 (256 reserved) sim-tpm
measured 0.74. llmock's bucket starts full, so a short burst is safe there too, and a minute-long one
would put a minute's burst into the measured window instead of the sustained rate. Counts are taken when the provider answers, so a
short window carries an edge error of the calls in flight at its two ends.

Not measured: tpm on llmock. llmock (like OpenAI) charges a request's `max_tokens` against tpm up
front and never gives it back, while the limiter charges the estimate and settles to the real
usage, so the two count different things; see the report in `tests/limits` history.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import httpx
import yaml

from producer.client import PanelClient
from producer.embedded import RedisProcess, child_env, free_port, stop_process, wait_port
from producer.fleet import Fleet, WorkerSpec

SHIPPED = Path(__file__).resolve().parent.parent / "policies"
TASK_CLASS = "bench_limits"
TARGET_UTILISATION = 0.95


@dataclass(frozen=True)
class Scenario:
    name: str
    provider: Literal["sim", "llmock"]
    dimension: Literal["rpm", "tpm"]


SCENARIOS = {
    "sim-rpm": Scenario("sim-rpm", "sim", "rpm"),
    "sim-tpm": Scenario("sim-tpm", "sim", "tpm"),
    "llmock-rpm": Scenario("llmock-rpm", "llmock", "rpm"),
}


@dataclass(frozen=True)
class Counts:
    """What the provider admitted (answered) and refused so far."""

    answered: int
    tokens: int
    rate_limited: int


class Provider(Protocol):
    def counts(self) -> Counts: ...


@dataclass
class SimProvider:
    fleet: Fleet
    model: str

    def counts(self) -> Counts:
        stats: Any = self.fleet.sim("/_sim/stats")
        m = stats["models"].get(self.model, {})
        return Counts(m.get("answered", 0), m.get("tokens_in", 0) + m.get("tokens_out", 0),
                      stats["totals"]["rate_limited"])  # fmt: skip


@dataclass
class LlmockProvider:
    origin: str

    def counts(self) -> Counts:
        records = httpx.get(f"{self.origin}/_llmock/requests", timeout=30).json()["requests"]
        calls = [r for r in records if r["path"].endswith("/chat/completions")]
        return Counts(sum(r["status"] == 200 for r in calls), 0, sum(r["status"] == 429 for r in calls))


def write_policies(root: Path, model: str, scenario: Scenario, registry_limit: int, burst_s: float,
                   max_output_tokens: int) -> Path:  # fmt: skip
    """A policies dir: the shipped registry with `model`'s limit replaced, and one task class
    whose single lane calls `model` with no triggers, so every job is exactly one call."""
    root.mkdir(parents=True, exist_ok=True)
    registry = yaml.safe_load((SHIPPED / "models.yaml").read_text())
    spec = registry["models"][model]
    if scenario.dimension == "rpm":
        spec.update(rpm=registry_limit, tpm=100_000_000)
    else:
        spec.update(rpm=100_000, tpm=registry_limit)
    spec.update(burst_s=burst_s, max_output_tokens=max_output_tokens)
    (root / "models.yaml").write_text(yaml.safe_dump(registry, sort_keys=False))
    tasks = {
        "defaults": {"deadline_s": 900},
        "task_classes": {TASK_CLASS: {
            "description": "one call to the model under a fleet-wide limit",
            "default_lane": "single",
            "single": {"model": model},
            "panel": {"members": [model], "quorum": 1, "agreement": {"rule": "exact"}, "arbiter": model},
        }},
    }  # fmt: skip
    (root / "tasks.yaml").write_text(yaml.safe_dump(tasks, sort_keys=False))
    return root


def prompts(n: int, chars: tuple[int, int], seed: int) -> list[str]:
    """Distinct prompts (no cache can answer one for another) of sizes drawn from `chars`."""
    rng = random.Random(seed)
    words = "limit fleet token bucket window redis worker model provider answer".split()
    out = []
    for i in range(n):
        size = rng.randint(*chars)
        body = " ".join(rng.choice(words) for _ in range(size // 6 + 1))[:size]
        out.append(f"#{i} Reply with one word. {body}")
    return out


def submit_at(client: PanelClient, rate_per_s: float, texts: list[str], stop: threading.Event) -> int:
    """Submit jobs at a steady rate until `stop` (or the prompts run out); returns how many."""
    t0, sent = time.monotonic(), 0
    while not stop.is_set() and sent < len(texts):
        client.submit({"task_class": TASK_CLASS, "prompt": texts[sent]})
        sent += 1
        time.sleep(max(0.0, t0 + sent / rate_per_s - time.monotonic()))
    return sent


def start_llmock(rpm: int, log_dir: Path) -> tuple[subprocess.Popen[bytes], str]:
    exe = shutil.which("llmock")
    if exe is None:
        raise SystemExit("llmock is not installed: pip install 'llmock>=0.2.2' (in the dev extras)")
    port = free_port()
    args = [exe, "serve", "--host", "127.0.0.1", "--port", str(port), "--rpm", str(rpm), "--log-level", "warning"]
    log = open(log_dir / "llmock.log", "wb")
    proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=child_env())
    wait_port("127.0.0.1", port, timeout=30, proc=proc)
    return proc, f"http://127.0.0.1:{port}"


def start_fleet(fleet: Fleet, ready_timeout: float = 300.0) -> None:
    """`Fleet.start` with a longer wait: nine worker processes importing at once on two busy
    cores can take more than its minute."""
    fleet.redis = RedisProcess().start()
    fleet.start_sim()
    for w in fleet.workers:
        fleet.start_worker(w)
    fleet.wait_ready(timeout=ready_timeout)


def stop_fleet(fleet: Fleet) -> None:
    """Workers still hold jobs sleeping in the limiter: a warm shutdown would wait for them one
    process at a time, so signal them all at once and kill what is left."""
    for p in fleet.procs.values():
        if p.poll() is None:
            p.send_signal(signal.SIGQUIT)  # Celery's cold shutdown
    end = time.monotonic() + 10
    for p in fleet.procs.values():
        try:
            p.wait(max(0.1, end - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    fleet.stop()


def run(scenario: Scenario, args: argparse.Namespace) -> dict[str, Any]:
    limit = args.rpm if scenario.dimension == "rpm" else args.tpm
    registry_limit = int(limit * args.headroom)
    fleet = Fleet(workers=[WorkerSpec("control", "control", concurrency=16)]
                  + [WorkerSpec(f"tier{i}", "llm.economy", concurrency=args.concurrency) for i in range(args.workers)])  # fmt: skip
    policies = write_policies(fleet.log_dir / "policies", args.model, scenario, registry_limit, args.burst_s,
                              args.max_output_tokens)  # fmt: skip
    fleet.env["PANEL_POLICIES"] = str(policies)
    llmock: subprocess.Popen[bytes] | None = None
    provider: Provider
    if scenario.provider == "llmock":
        llmock, origin = start_llmock(limit, fleet.log_dir)
        fleet.env.update(FIREWORKS_BASE_URL=f"{origin}/v1", OPENAI_BASE_URL=f"{origin}/v1")
        provider = LlmockProvider(origin)
    try:
        start_fleet(fleet)
        if scenario.provider == "sim":
            fleet.sim("/_sim/config", {"models": {args.model: {scenario.dimension: limit, "latency_ms": args.latency_ms,
                                                               "latency_jitter_ms": args.latency_ms / 2}}})  # fmt: skip
            provider = SimProvider(fleet, args.model)
        texts = prompts(100_000, tuple(args.prompt_chars) if scenario.dimension == "tpm" else (20, 60), args.seed)
        mean_tokens = sum(len(t) for t in texts[:2000]) / 2000 / 4 + 8  # the simulator's count: chars/4 + a short reply
        units_per_job = 1.0 if scenario.dimension == "rpm" else mean_tokens
        rate = args.overdrive * limit / 60 / units_per_job
        client = PanelClient(fleet.redis_url)
        stop = threading.Event()
        driver = threading.Thread(target=submit_at, args=(client, rate, texts, stop), daemon=True)
        driver.start()
        time.sleep(args.warmup)
        c0, t0 = provider.counts(), time.monotonic()
        time.sleep(args.seconds)
        c1, t1 = provider.counts(), time.monotonic()
        stop.set()
        driver.join(timeout=10)
        minutes = (t1 - t0) / 60
        admitted = (c1.answered - c0.answered) if scenario.dimension == "rpm" else (c1.tokens - c0.tokens)
        return {
            "scenario": scenario.name, "limit": limit, "registry_limit": registry_limit, "burst_s": args.burst_s,
            "window_s": round(t1 - t0, 1), "admitted": admitted, "per_min": admitted / minutes,
            "utilisation": admitted / minutes / limit, "rate_limited": c1.rate_limited, "answered_total": c1.answered,
            "policies": str(policies),
        }  # fmt: skip
    finally:
        stop_fleet(fleet)
        if llmock is not None:
            stop_process(llmock, timeout=5)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench.limits", description=__doc__.split("\n\n")[0])
    p.add_argument("--scenarios", default=",".join(SCENARIOS), help=f"comma-separated, of {', '.join(SCENARIOS)}")
    p.add_argument("--seconds", type=float, default=120.0, help="the measured window, after the warm-up")
    p.add_argument("--warmup", type=float, default=20.0, help="seconds before measuring (429s still count)")
    p.add_argument("--rpm", type=int, default=120, help="the provider's requests/min (N)")
    p.add_argument("--tpm", type=int, default=40_000, help="the provider's tokens/min (N) for the tpm scenario")
    p.add_argument("--headroom", type=float, default=0.97, help="registry limit as a share of N")
    p.add_argument("--overdrive", type=float, default=1.15, help="submission rate as a multiple of N")
    p.add_argument("--burst-s", type=float, default=1.0, help="the registry's burst_s for the model")
    p.add_argument("--workers", type=int, default=4, help="tier worker processes")
    p.add_argument("--concurrency", type=int, default=16, help="threads per tier worker")
    p.add_argument("--model", default="llama3.1-8b")
    p.add_argument("--max-output-tokens", type=int, default=32,
                   help="the model's max_output_tokens: the limiter reserves min(256, it) for the answer")  # fmt: skip
    p.add_argument("--latency-ms", type=float, default=200.0, help="the simulator's answer latency")
    p.add_argument("--prompt-chars", type=int, nargs=2, default=[100, 1500], metavar=("MIN", "MAX"))
    p.add_argument("--seed", type=int, default=7)
    args = p.parse_args(argv)
    unknown = set(args.scenarios.split(",")) - set(SCENARIOS)
    if unknown:
        p.error(f"--scenarios: unknown {sorted(unknown)}; choose from {', '.join(SCENARIOS)}")
    if not 0 < args.headroom <= 1:
        p.error("--headroom: a share of N in (0, 1]")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    print(f"command: python -m bench.limits {' '.join(sys.argv[1:] if argv is None else argv)}")
    print(f"machine: {platform.platform()}, {os.cpu_count()} cores, python {platform.python_version()}")
    print(f"fleet: 1 control + {args.workers} tier worker processes x {args.concurrency} threads, model {args.model}, "
          f"registry limit {args.headroom:.2f} x N from a policies dir (PANEL_POLICIES)", flush=True)  # fmt: skip
    rows = []
    for name in args.scenarios.split(","):
        row = run(SCENARIOS[name], args)
        rows.append(row)
        unit = "req" if name.endswith("rpm") else "tok"
        print(f"{name:11} N={row['limit']} {unit}/min  registry={row['registry_limit']} burst_s={row['burst_s']:g}  "
              f"window={row['window_s']}s  admitted={row['admitted']} ({row['per_min']:.1f}/min)  "
              f"utilisation={row['utilisation']:.3f}  429s={row['rate_limited']}  policies={row['policies']}", flush=True)  # fmt: skip
    print()
    print(f"{'scenario':11} {'utilisation':>11} {'429s':>5}  target: >= {TARGET_UTILISATION:.2f} of N and 0 429s")
    ok = True
    for row in rows:
        met = row["utilisation"] >= TARGET_UTILISATION and row["rate_limited"] == 0
        ok &= met
        print(f"{row['scenario']:11} {row['utilisation']:11.3f} {row['rate_limited']:5d}  {'met' if met else 'MISSED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
