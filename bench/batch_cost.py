"""What the batch lane costs: the same panel jobs through provider batches and in real time.

    python -m bench.batch_cost [--jobs 1000] [--batch-delay-s 2] [--max-age-s 5]

One local fleet (redis-server, the simulator, real Celery workers) runs the same jobs three
times, side by side in one process tree:

  batch        `mode: batch`: staged panels, every member and arbiter call through the
               simulator's OpenAI/Anthropic batch APIs, priced at the registry's batch price
  realtime     `mode: realtime` with the same staged panels (like for like: only the lane differs)
  as-shipped   `mode: realtime` with the shipped policy (multiple_choice fans out in parallel)

Jobs are the replay questions in ../shared/data/replay (MMLU → multiple_choice, GSM8K →
math_word_problem), cycled to --jobs, so members answer with the recorded text and tokens and
cost what the recorded calls cost. Without ../shared, generated four-option questions answered by
the simulator's deterministic rule stand in (the figures say which). Prints the command, every
figure measured, and the ratios; the issue's target is member cost (batch) <= 52% of real time.
"""

from __future__ import annotations

import argparse
import shlex
import shutil
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from producer.client import PanelClient
from producer.contract import Result
from producer.fleet import Fleet

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ROOT / "policies"
REPLAY = ROOT.parent / "shared" / "data" / "replay"
CLASS_OF = {"mmlu_train.jsonl": "multiple_choice", "gsm8k_train.jsonl": "math_word_problem"}


@dataclass
class Pass:
    name: str
    results: list[Result] = field(default_factory=list)
    elapsed_s: float = 0.0
    sim: dict[str, Any] = field(default_factory=dict)

    def member_cost(self) -> float:
        return sum(c.cost_usd for r in self.results if r.receipt for c in r.receipt.calls if c.role == "member")

    def arbiter_cost(self) -> float:
        return sum(c.cost_usd for r in self.results if r.receipt for c in r.receipt.calls if c.role == "arbiter")

    def member_calls(self) -> int:
        return sum(1 for r in self.results if r.receipt for c in r.receipt.calls
                   if c.role == "member" and c.status in ("answered", "late", "failed"))  # fmt: skip

    def statuses(self) -> Counter[str]:
        return Counter(r.status for r in self.results)

    def provider_requests(self) -> int:
        """Every HTTP request the fleet made to the provider: calls, uploads, creates, polls."""
        t = self.sim["totals"]
        return int(t["requests"] + t["batch_files"] + t["batch_creates"] + t["batch_polls"])


def replay_jobs(n: int) -> tuple[list[dict[str, Any]], str]:
    """(jobs without mode, where they came from)."""
    import orjson

    rows: list[tuple[str, list[dict[str, str]]]] = []
    for name, task_class in CLASS_OF.items():
        path = REPLAY / name
        if path.exists():
            rows += [
                (task_class, orjson.loads(line)["messages"]) for line in path.read_bytes().splitlines() if line.strip()
            ]
    if rows:
        source = f"replay: {', '.join(n for n in CLASS_OF if (REPLAY / n).exists())} ({len(rows)} questions, cycled)"
        return [{"task_class": rows[i % len(rows)][0], "messages": rows[i % len(rows)][1]} for i in range(n)], source
    prompts = [f"Bench question {i}: which option?\nA) one\nB) two\nC) three\nD) four" for i in range(n)]
    return [
        {"task_class": "multiple_choice", "prompt": p} for p in prompts
    ], "the simulator's deterministic rule (no ../shared replay found)"


def write_policies(dest: Path) -> None:
    """The shipped policies plus a `<class>_staged` copy of each benchmarked class: real time with
    the batch lane's staged dispatch, so batch and real time differ only in the lane."""
    shutil.copy(SHIPPED / "models.yaml", dest / "models.yaml")
    tasks = yaml.safe_load((SHIPPED / "tasks.yaml").read_text())
    for name in set(CLASS_OF.values()):
        # this bench prices the panel lane (batch vs real time); the shipped classes default to a cascade
        tasks["task_classes"][name]["default_lane"] = "panel"
        staged = dict(tasks["task_classes"][name])
        staged["panel"] = {**staged["panel"], "dispatch": "staged"}
        tasks["task_classes"][f"{name}_staged"] = staged
    (dest / "tasks.yaml").write_text(yaml.safe_dump(tasks, sort_keys=False))


def run_pass(fleet: Fleet, client: PanelClient, name: str, jobs: list[dict[str, Any]], timeout_s: float,
             batch_delay_s: float) -> Pass:  # fmt: skip
    fleet.sim("/_sim/reset", {})  # fresh counts per pass
    fleet.sim("/_sim/config", {"default": {"batch_delay_s": batch_delay_s}})
    p = Pass(name)
    run = uuid.uuid4().hex[:6]
    t0 = time.monotonic()
    ids = [client.submit({**job, "id": f"{name}-{run}-{i}"}) for i, job in enumerate(jobs)]
    p.results = list(client.wait_many(ids, timeout=timeout_s))
    p.elapsed_s = time.monotonic() - t0
    p.sim = fleet.sim("/_sim/stats")
    return p


def report(passes: list[Pass], source: str, argv: list[str]) -> None:
    print(f"command: python -m bench.batch_cost {shlex.join(argv)}")
    print(f"jobs from {source}")
    head = f"{'pass':12} {'jobs':>5} {'decided':>7} {'failed':>6} {'member calls':>12} {'member $':>10} {'arbiter $':>10} " \
           f"{'realtime calls':>14} {'uploads':>7} {'batches':>7} {'polls':>6} {'provider reqs':>13} {'wall s':>7}"  # fmt: skip
    print(head)
    print("-" * len(head))
    for p in passes:
        t, st = p.sim["totals"], p.statuses()
        print(f"{p.name:12} {len(p.results):5d} {st['decided']:7d} {st['failed']:6d} {p.member_calls():12d} "
              f"{p.member_cost():10.4f} {p.arbiter_cost():10.4f} {t['requests']:14d} {t['batch_files']:7d} "
              f"{t['batch_creates']:7d} {t['batch_polls']:6d} {p.provider_requests():13d} {p.elapsed_s:7.1f}")  # fmt: skip
    batch, like, shipped = passes
    print(
        f"member cost, batch / realtime (same staged panels): {batch.member_cost() / like.member_cost():.1%}  (target <= 52%)"
    )
    print(f"member cost, batch / as-shipped realtime policy:     {batch.member_cost() / shipped.member_cost():.1%}")
    print(f"member calls, batch / realtime (same staged panels): {batch.member_calls()} / {like.member_calls()}")
    print(f"provider requests, batch / realtime:                  {batch.provider_requests()} / {like.provider_requests()}"
          f"  (batch: {batch.sim['totals']['batch_files']} uploads, {batch.sim['totals']['batch_creates']} batches)")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(prog="python -m bench.batch_cost", description=__doc__.split("\n")[0])
    ap.add_argument("--jobs", type=int, default=1000)
    ap.add_argument("--batch-delay-s", type=float, default=2.0, help="how long the simulator takes per batch")
    ap.add_argument(
        "--max-age-s", type=float, default=5.0, help="PANEL_BATCH_MAX_AGE_S: flush a model's lines this old"
    )
    ap.add_argument("--timeout-s", type=float, default=900.0, help="per pass")
    args = ap.parse_args(argv)
    if args.jobs < 1:
        ap.error("--jobs: give at least 1")
    jobs, source = replay_jobs(args.jobs)
    tmp = Path(tempfile.mkdtemp(prefix="bench-batch-"))
    write_policies(tmp)
    replay = [a for n in CLASS_OF if (REPLAY / n).exists() for a in ("--replay", str(REPLAY / n))]
    fleet = Fleet(sim_args=replay, env={"PANEL_POLICIES": str(tmp), "PANEL_BATCH_TICK_S": "1",
                                        "PANEL_BATCH_MAX_AGE_S": str(args.max_age_s)})  # fmt: skip
    try:
        fleet.start()
        client = PanelClient(fleet.redis_url)
        staged = [{**j, "task_class": f"{j['task_class']}_staged"} for j in jobs]
        passes = [
            run_pass(
                fleet, client, "batch", [{**j, "mode": "batch"} for j in jobs], args.timeout_s, args.batch_delay_s
            ),
            run_pass(fleet, client, "realtime", staged, args.timeout_s, args.batch_delay_s),
            run_pass(fleet, client, "as-shipped", jobs, args.timeout_s, args.batch_delay_s),
        ]
        client.close()
    finally:
        fleet.stop()
    report(passes, source, argv)
    return 0 if all(r.status == "decided" for p in passes for r in p.results) else 1


if __name__ == "__main__":
    sys.exit(main())
