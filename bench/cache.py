"""The answer cache and provider prompt caching, measured through a real fleet.

    python3 -m bench.cache [--replay-dir ../shared/data/replay] [--rows 30] [--identical 50] [--prompt-jobs 20]

Answer cache: a workload with repeats (the first --rows questions of the replay dev file
gsm8k_zeroeval_dev, when present, plus a 12-item fixture of our own; all of it twice, shuffled,
plus --identical copies of one question, everything in flight at once) runs twice in one fleet,
side by side: with the cache, and with every job asking `cache: bypass` (what it costs without).
The cached run goes once cold (repeats coalesce on their first copy in flight) and once more
warm (all read from the entries). Printed: jobs, panels run, provider calls the simulator saw,
total cost, jobs served from the cache, coalesced jobs, and the p50 submit-to-decision latency
of served and computed jobs.

Prompt caching: --prompt-jobs single-model jobs per wire sharing one system prompt: the share of
input tokens the provider reported cached, and their cost against the same tokens uncached. The
simulator caches prefixes from 32 tokens here (real providers: 1024).
"""

from __future__ import annotations

import argparse
import random
import shutil
import statistics
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import yaml

from producer.client import PanelClient
from producer.contract import Result
from producer.fleet import Fleet

REPLAY = Path(__file__).resolve().parents[2] / "shared" / "data" / "replay"
SHIPPED = Path(__file__).resolve().parents[1] / "policies"
DEV_FILE = "gsm8k_zeroeval_dev.jsonl.gz"
FIXTURE = [f"Ticket {i}: '{t}'. Which team? A) billing B) security C) platform D) support"
           for i, t in enumerate(["refund not received", "password reset loop", "deploy stuck", "invoice wrong",
                                  "2FA lost", "pods crash", "cannot log in", "charged twice", "API 500s",
                                  "token leaked", "slow dashboard", "card declined"])]  # fmt: skip
SYSTEM = ("You are a careful triage assistant. Read the ticket, choose the team that owns it, and reply with the "
          "letter only. Billing owns money; security owns credentials; platform owns infrastructure. ") * 2  # fmt: skip


def cache_policies(dest: Path, ttl_s: float = 600) -> Path:
    """The shipped policies, plus: extraction cached, a cached panel class, and one single-model
    class per wire (no answer cache) for the prompt-cache receipts."""
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copy(SHIPPED / "models.yaml", dest / "models.yaml")
    tasks: dict[str, Any] = yaml.safe_load((SHIPPED / "tasks.yaml").read_text())
    classes = tasks["task_classes"]
    classes["extraction"]["cache"] = {"ttl_s": ttl_s}
    panel = {"members": ["gpt-4o-mini", "claude-3-5-haiku", "llama3.1-8b"], "quorum": 2, "dispatch": "parallel",
             "agreement": {"rule": "choice", "options": ["A", "B", "C", "D"]}, "arbiter": "gpt-4o"}  # fmt: skip
    classes["cached_panel"] = {"default_lane": "panel", "single": {"model": "gpt-4o-mini"}, "panel": panel,
                               "cache": {"ttl_s": ttl_s}}  # fmt: skip
    for name, model in (("claude_single", "claude-3-5-haiku"), ("openai_single", "gpt-4o-mini")):
        classes[name] = {
            "default_lane": "single",
            "single": {"model": model},
            "panel": {**panel, "members": [model], "quorum": 1},
        }
    (dest / "tasks.yaml").write_text(yaml.safe_dump(tasks, sort_keys=False))
    return dest


def workload(replay_dir: Path, rows: int, identical: int) -> tuple[list[dict[str, Any]], str]:
    tag = uuid.uuid4().hex[:6]
    inputs: list[list[dict[str, str]]] = [[{"role": "user", "content": f"[{tag}] {t}"}] for t in FIXTURE]
    source = "own fixture (12)"
    if (replay_dir / DEV_FILE).exists():
        from evaluation.replay import load

        inputs += [r.messages for r in load(replay_dir / DEV_FILE)[:rows]]
        source = f"{DEV_FILE} first {rows} + own fixture (12)"
    jobs = [{"task_class": "cached_panel", "messages": m} for m in inputs * 2]
    random.Random(1).shuffle(jobs)
    same = [{"role": "user", "content": f"[{tag}] The one everyone asks: {FIXTURE[0]}"}]
    jobs += [{"task_class": "cached_panel", "messages": same} for _ in range(identical)]
    return jobs, f"{source}, each twice shuffled, + {identical} identical"


def run(client: PanelClient, fleet: Fleet, jobs: list[dict[str, Any]]) -> dict[str, Any]:
    before = int(fleet.sim("/_sim/stats")["totals"]["requests"])  # type: ignore[index]
    t0 = time.monotonic()
    with ThreadPoolExecutor(32) as pool:
        ids = list(pool.map(client.submit, jobs))
    results: list[Result] = list(client.wait_many(ids, 900))
    wall = time.monotonic() - t0
    receipts = [r.receipt for r in results if r.receipt is not None]
    served = [r for r in receipts if r.served_from_cache]
    computed = [r for r in receipts if not r.served_from_cache]
    return {
        "jobs": len(jobs), "decided": sum(r.status == "decided" for r in results), "panels": len(computed),
        "provider_calls": int(fleet.sim("/_sim/stats")["totals"]["requests"]) - before,  # type: ignore[index]
        "cost_usd": sum(r.total_cost_usd for r in receipts), "served": len(served),
        "coalesced": sum(r.coalesced for r in served), "saved_usd": sum(r.saved_usd for r in served),
        "p50_served_ms": statistics.median([r.latency_ms for r in served]) if served else 0.0,
        "p50_computed_ms": statistics.median([r.latency_ms for r in computed]) if computed else 0.0,
        "wall_s": wall,
    }  # fmt: skip


def prompt_caching(client: PanelClient, n: int) -> list[dict[str, Any]]:
    out = []
    for task_class in ("claude_single", "openai_single"):
        jobs = [{"task_class": task_class, "messages": [{"role": "system", "content": SYSTEM},
                                                        {"role": "user", "content": f"{FIXTURE[i % 12]} #{i}"}]}
                for i in range(n)]  # fmt: skip
        calls = []
        for j in jobs:  # one at a time: the first writes the prefix, the rest read it
            res = client.wait(client.submit(j), 60)
            assert res.receipt is not None
            calls += res.receipt.calls
        cost = sum(c.cost_usd for c in calls)
        saved = sum(c.cache_saved_usd for c in calls)
        out.append({"class": task_class, "model": calls[0].model, "calls": len(calls),
                    "tokens_in": sum(c.tokens_in for c in calls), "cached": sum(c.tokens_cached for c in calls),
                    "written": sum(c.tokens_cache_write for c in calls), "cost_usd": cost, "uncached_usd": cost + saved})  # fmt: skip
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--replay-dir", type=Path, default=REPLAY)
    ap.add_argument("--rows", type=int, default=30)
    ap.add_argument("--identical", type=int, default=50)
    ap.add_argument("--prompt-jobs", type=int, default=20)
    ap.add_argument("--latency-ms", type=float, default=300, help="the simulator's latency per call")
    args = ap.parse_args()
    import tempfile

    policies = cache_policies(Path(tempfile.mkdtemp(prefix="bench-cache-")))
    fleet = Fleet(sim_args=["--prompt-cache-min-tokens", "32", "--latency-ms", str(args.latency_ms)],
                  env={"PANEL_POLICIES": str(policies)})  # fmt: skip
    fleet.start()
    try:
        client = PanelClient(fleet.redis_url)
        jobs, what = workload(args.replay_dir, args.rows, args.identical)
        cached = run(client, fleet, jobs)
        warm = run(client, fleet, jobs)  # the same again once decided: read from the entries
        bypass = run(client, fleet, [{**j, "cache": "bypass"} for j in jobs])
        print(
            f"workload: {what} = {len(jobs)} jobs, {len({str(j['messages']) for j in jobs})} distinct inputs; "
            f"simulator latency {args.latency_ms:.0f} ms/call\n"
        )
        print(
            "| run | jobs | decided | panels run | provider calls | total cost $ | served from cache | coalesced | p50 served ms | p50 computed ms | wall s |"
        )
        print("|---|---|---|---|---|---|---|---|---|---|---|")
        for name, r in (("answer cache on (cold)", cached), ("the same again (warm)", warm),
                        ("cache: bypass (no cache)", bypass)):  # fmt: skip
            print(
                f"| {name} | {r['jobs']} | {r['decided']} | {r['panels']} | {r['provider_calls']} | {r['cost_usd']:.6f} | "
                f"{r['served']} | {r['coalesced']} | {r['p50_served_ms']:.0f} | {r['p50_computed_ms']:.0f} | {r['wall_s']:.1f} |"
            )
        ratio = cached["cost_usd"] / bypass["cost_usd"] if bypass["cost_usd"] else 0.0
        print(
            f"\ncost with cache / without: {ratio:.3f}; calls with / without: "
            f"{cached['provider_calls'] / max(bypass['provider_calls'], 1):.3f}; "
            f"receipts' saved_usd sum: {cached['saved_usd']:.6f}\n"
        )
        print(
            "| wire class | model | calls | input tokens | cached (read) | written | cost $ | same tokens uncached $ | ratio |"
        )
        print("|---|---|---|---|---|---|---|---|---|")
        for p in prompt_caching(client, args.prompt_jobs):
            print(
                f"| {p['class']} | {p['model']} | {p['calls']} | {p['tokens_in']} | {p['cached']} | {p['written']} | "
                f"{p['cost_usd']:.6f} | {p['uncached_usd']:.6f} | {p['cost_usd'] / p['uncached_usd']:.3f} |"
            )
        client.close()
    finally:
        fleet.stop()


if __name__ == "__main__":
    main()
