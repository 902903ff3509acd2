"""Early exit against always-full panels, on the replay data, through the real fleet.

    python3 -m bench.early_exit [--rows 100] [--in-flight 16]

For each shipped eval panel (panel3-parallel, cheap-staged) the same members and arbiter are run
twice in one fleet per file, side by side: as designed (quorum 2: parallel cancels the straggler,
staged sends the third member only on disagreement) and always-full (parallel, quorum = every
member: each member answers before anything is decided, as Celery's chord or a Fusion-style panel
would; the arbiter then runs on any non-unanimous panel). Printed: member calls answered per
question, cost per question, arbiter rate, accuracy and p50/p95 decision latency (receipt: submit
to decision), then early/full ratios, and beside them the same ratios with no fleet at all (the
offline chord model on recorded latencies), which is what early exit saves before overhead. The full panel's latency includes its more frequent arbiter
calls, which is part of what always-full costs. Recorded latencies are scaled by --mmlu-scale /
--gsm8k-scale (the simulator's latency_scale knob).
"""

from __future__ import annotations

import argparse
import platform
import random
import sys
from pathlib import Path

from evaluation import fleet_run, offline
from evaluation.policy import EvalPolicy
from evaluation.policy import load as load_policy
from evaluation.reference import Score
from evaluation.replay import load as load_rows

REPLAY = Path(__file__).resolve().parents[2] / "shared" / "data" / "replay"
PANELS = ("panel3-parallel", "cheap-staged")


def always_full(p: EvalPolicy) -> EvalPolicy:
    return p.model_copy(update={"name": f"{p.name}-full", "quorum": len(p.members), "dispatch": "parallel"})


def row_line(label: str, s: Score, n: int) -> str:
    d = s.as_dict()
    return (f"  {label:28} member calls/q {member_calls(s) / n:5.2f}  $/q {s.cost_usd / n:9.3e}  arbiter {s.arbiter_calls / n:5.1%}  "
            f"acc {s.accuracy:.3f}  p50 {d['p50_latency_ms']:7.0f} ms  p95 {d['p95_latency_ms']:7.0f} ms")  # fmt: skip


def member_calls(s: Score) -> int:
    return s.calls - s.arbiter_calls


def bench_file(file: Path, rows_n: int, scale: float, in_flight: int, seed: int) -> list[str]:
    rows = load_rows(file)
    rows = random.Random(seed).sample(rows, min(rows_n, len(rows)))
    designed = [load_policy(name) for name in PANELS]
    policies = [q for p in designed for q in (p, always_full(p))]
    prices = fleet_run.prices_near(file)
    scores = {s.name: s for s in fleet_run.run(file, rows, policies, latency_scale=scale, in_flight=in_flight)}
    n = len(rows)
    out = [f"{file.name}: {n} rows sampled with seed {seed}, recorded latencies x {scale}, {in_flight} panels in flight"]
    for p in designed:
        early, full = scores[p.name], scores[f"{p.name}-full"]
        out.append(row_line(f"{p.name} ({p.dispatch})", early, n))
        out.append(row_line(f"{p.name}-full", full, n))
        e, f = early.as_dict(), full.as_dict()
        out.append(f"    early/full: member calls {member_calls(early) / max(member_calls(full), 1):.2f}x "
                   f"(saved {(member_calls(full) - member_calls(early)) / n:.2f}/question), cost {early.cost_usd / full.cost_usd:.2f}x, "
                   f"p50 {e['p50_latency_ms'] / f['p50_latency_ms']:.2f}x, p95 {e['p95_latency_ms'] / f['p95_latency_ms']:.2f}x; "
                   f"early exits {early.early_exits / n:.0%}; failed {early.failed}/{full.failed}")  # fmt: skip
        ideal_e, ideal_f = (offline.score(rows, shape_of(q), prices).as_dict() for q in (p, always_full(p)))
        out.append(f"    the same rows with no fleet (recorded latencies x {scale}, offline chord model): p50 "
                   f"{ideal_e['p50_latency_ms'] * scale:.0f} vs {ideal_f['p50_latency_ms'] * scale:.0f} ms "
                   f"({ideal_e['p50_latency_ms'] / ideal_f['p50_latency_ms']:.2f}x), p95 {ideal_e['p95_latency_ms'] * scale:.0f} vs "
                   f"{ideal_f['p95_latency_ms'] * scale:.0f} ms ({ideal_e['p95_latency_ms'] / ideal_f['p95_latency_ms']:.2f}x)")  # fmt: skip
    return out


def shape_of(p: EvalPolicy) -> offline.PanelShape:
    return offline.PanelShape(tuple(p.members), p.quorum, p.dispatch, p.arbiter or p.members[0])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python3 -m bench.early_exit", description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=100, help="questions sampled per file")
    ap.add_argument("--in-flight", type=int, default=16)
    ap.add_argument("--mmlu-scale", type=float, default=1.0)
    ap.add_argument("--gsm8k-scale", type=float, default=0.25)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--replay-dir", type=Path, default=REPLAY)
    args = ap.parse_args(argv)
    print(f"command: python3 -m bench.early_exit {' '.join(argv if argv is not None else sys.argv[1:])}".rstrip())
    print(f"machine: {platform.node()} {platform.machine()} {platform.processor() or ''} cpus={__import__('os').cpu_count()} "
          f"python {platform.python_version()}")  # fmt: skip
    for name, scale in (("mmlu_train.jsonl", args.mmlu_scale), ("gsm8k_train.jsonl", args.gsm8k_scale)):
        for line in bench_file(args.replay_dir / name, args.rows, scale, args.in_flight, args.seed):
            print(line, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
