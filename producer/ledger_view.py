"""`panel ledger`: receipts summarised per task class (escalation, arbiter, panel value, cost,
answer-cache hits and prompt-cache tokens with the money each saved)."""

from __future__ import annotations

import re
from collections import defaultdict
from statistics import quantiles
from typing import Any

# workers/ledger.py's trigger for a cascade whose later stages ended without an answer
_KEPT = re.compile(r"^cascade:stage\d+:no answer; stage(\d+)'s unaccepted answer kept$")


def kept_stage(receipt: dict[str, Any]) -> int | None:
    """The earlier cascade stage whose unaccepted answer decided the job (its later stages ended
    without one), else None."""
    for t in receipt.get("triggers") or []:
        if m := _KEPT.match(str(t)):
            return int(m.group(1))
    return None


def _pct(values: list[float], q: int) -> float:
    if not values:
        return 0.0
    if len(values) == 1:
        return values[0]
    return quantiles(values, n=100, method="inclusive")[q - 1]


def summarise(receipts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    once: dict[str, dict[str, Any]] = {}
    for r in receipts:  # a job appended twice (a crash mid-finalise) counts once
        once.setdefault(str(r.get("job_id")), r)
    for r in once.values():
        groups[r["task_class"]].append(r)
    rows = []
    for tc, rs in sorted(groups.items()):
        n = len(rs)
        lat = [r["latency_ms"] for r in rs]
        panels = [r for r in rs if any(step["lane"] in ("panel", "batch") for step in r["lanes"])]
        changed = [r for r in rs if r.get("changed_vs_default")]
        batch_calls = [c for r in rs for c in r["calls"] if c.get("batch")]
        rows.append({
            "task_class": tc, "jobs": n,
            "escalation_rate": sum(1 for r in rs if r["triggers"]) / n,
            "panel_rate": len(panels) / n,
            "arbiter_rate": sum(1 for r in rs if r["decision"] in ("arbiter", "majority")) / n,
            "early_exit_rate": sum(1 for r in rs if r["early_exit"]) / n,
            "changed_answer_rate": len(changed) / n,
            "cost_per_job_usd": sum(r["total_cost_usd"] for r in rs) / n,
            "calls_per_job": sum(1 for r in rs for c in r["calls"] if c["status"] in ("answered", "failed", "late")) / n,
            "batch_calls": len(batch_calls),
            # what the batch calls would have cost in real time, minus what they cost
            "batch_saving_usd": sum((c.get("realtime_cost_usd") or c["cost_usd"]) - c["cost_usd"] for c in batch_calls),
            "p50_ms": _pct(lat, 50), "p95_ms": _pct(lat, 95),
            "failed": sum(1 for r in rs if r["decision"] == "failed"),
            **cache_figures(rs),
        })  # fmt: skip
    return rows


def stage_rates(receipts: list[dict[str, Any]]) -> list[str]:
    """Per cascade task class and stage: jobs that reached it, how many its check accepted (and
    the share), and how many concluded there (a last stage concludes whatever its check says, so
    concluded > accepted there; a job whose later stages ended without an answer concluded at the
    stage whose answer it kept). A job appended twice counts once; a stage run twice (a retried
    panel) counts by its last run."""
    once: dict[str, dict[str, Any]] = {}
    for r in receipts:
        once.setdefault(str(r.get("job_id")), r)
    tally: dict[str, dict[int, list[int]]] = defaultdict(lambda: defaultdict(lambda: [0, 0, 0]))
    for r in once.values():
        verdicts = {int(step["stage"]): bool(step.get("accepted")) for step in r["lanes"] if step.get("stage")}
        last = kept_stage(r) or (max(verdicts) if verdicts else 0)
        for n, accepted in verdicts.items():
            t = tally[r["task_class"]][n]
            t[0], t[1], t[2] = t[0] + 1, t[1] + accepted, t[2] + (n == last)
    return [f"{tc} (cascade): " + "; ".join(f"stage {n}: {reached} reached, {acc} accepted ({acc / reached:.0%}), {done} concluded"
                                             for n, (reached, acc, done) in sorted(by_stage.items()))
            for tc, by_stage in sorted(tally.items())]  # fmt: skip


def cache_figures(rs: list[dict[str, Any]]) -> dict[str, Any]:
    """Answer cache: the share of jobs served from it (coalesced ones included) and what their
    source jobs had paid; prompt cache: the share of input tokens read from the providers' caches
    and what that saved against the uncached price (cache writes' surcharge netted out)."""
    served = [r for r in rs if r.get("served_from_cache")]
    calls = [c for r in rs for c in r["calls"]]
    tokens_in = sum(c.get("tokens_in", 0) for c in calls)
    return {
        "cache_hit_rate": len(served) / len(rs) if rs else 0.0,
        "coalesced": sum(1 for r in served if r.get("coalesced")),
        "answer_cache_saved_usd": sum(r.get("saved_usd", 0.0) for r in served),
        "cached_token_share": sum(c.get("tokens_cached", 0) for c in calls) / tokens_in if tokens_in else 0.0,
        "prompt_cache_saved_usd": sum(c.get("cache_saved_usd", 0.0) for c in calls),
    }


def table(rows: list[dict[str, Any]]) -> str:
    head = (f"{'task class':20} {'jobs':>5} {'escal':>6} {'arbiter':>7} {'early':>6} {'changed':>7} "
            f"{'calls/job':>9} {'$/job':>10} {'batch saved $':>13} {'p50 ms':>8} {'p95 ms':>8} {'failed':>6} "
            f"{'cache hit':>9} {'cache saved $':>13} {'cached tok':>10} {'prompt saved $':>14}")  # fmt: skip
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r['task_class']:20} {r['jobs']:5d} {r['escalation_rate']:6.0%} {r['arbiter_rate']:7.0%} "
            f"{r['early_exit_rate']:6.0%} {r['changed_answer_rate']:7.0%} {r['calls_per_job']:9.2f} "
            f"{r['cost_per_job_usd']:10.6f} {r['batch_saving_usd']:13.6f} {r['p50_ms']:8.0f} {r['p95_ms']:8.0f} {r['failed']:6d} "
            f"{r['cache_hit_rate']:9.0%} {r['answer_cache_saved_usd']:13.6f} {r['cached_token_share']:10.0%} "
            f"{r['prompt_cache_saved_usd']:14.6f}"
        )
    return "\n".join(lines)
