"""`panel eval FILE --policy P ...`: the whole evaluation, as one function the CLI calls."""

from __future__ import annotations

import sys
from pathlib import Path

from evaluation import fleet_run, judging, offline_eval, reference, report
from evaluation.matrix import costs_known
from evaluation.offline_eval import ACCURACY_GOAL, COST_GOAL
from evaluation.policy import EvalPolicy, load_any
from evaluation.reference import Score
from evaluation.replay import load as load_rows
from evaluation.replay import models_in


def evaluate(file: Path, policy_refs: list[str], out_dir: Path, latency_scale: float = 1.0,
             limit: int | None = None, in_flight: int = 16, repeat: int = 1, offline: bool = False) -> dict[str, object]:  # fmt: skip
    """Reference latencies are the recorded ones times `latency_scale`, like the simulator's, so
    the table compares like with like; fleet latencies add the fleet's own overhead on top.
    A cascade policy (a tasks.yaml entry with `cascade:` stages, as `panel tune --write` writes it)
    runs on the fleet's cascade lane like any other. `offline` replays the policies on the
    recorded rows instead (`evaluation.offline_eval`)."""
    loaded = [p for ref in policy_refs for p in load_any(ref)]
    need = {m for p in loaded for m in p.models}  # kept even where rarer than the share (`replay.complete`)
    rows = load_rows(file, need)[:limit] if limit else load_rows(file, need)
    available = models_in(rows)
    for p in loaded:
        missing = [m for m in p.models if m not in available]
        if missing:
            raise ValueError(f"--policy {p.name}: {', '.join(missing)} not recorded in every row of {file.name} "
                             f"(recorded: {', '.join(available)})")  # fmt: skip
    if offline:
        return offline_eval.evaluate(file, rows, loaded, out_dir)
    policies = loaded
    panels = [p for p in loaded if isinstance(p, EvalPolicy) and p.lane == "panel"]
    prices = fleet_run.prices_near(file)
    singles = [reference.single(rows, m, prices) for m in available]
    strongest = reference.strongest(singles)
    # named after the policy whose members and judge it always runs (the table has room for that)
    fusions = {p.name: reference.fusion(rows, p.members, p.arbiter or p.members[0], prices, label=p.name)
               for p in panels}  # fmt: skip
    # the fair baselines of early exit: every member, wait for all, majority first, the judge only on a split
    majorities = [reference.majority_first(rows, p.members, p.arbiter or p.members[0], prices, label=p.name)
                  for p in panels]  # fmt: skip
    if not panels and len(available) >= 3:  # cascades only: Fusion of the three most accurate, as --offline
        top = [s.name.removeprefix("single:") for s in sorted(singles, key=lambda s: (-s.accuracy, s.cost_usd))[:3]]
        fusions = {"top3": reference.fusion(rows, top, top[0], prices)}
        majorities = [reference.majority_first(rows, top, top[0], prices)]
    for ref in [*singles, strongest, *fusions.values(), *majorities]:
        ref.latencies_ms = [ms * latency_scale for ms in ref.latencies_ms]
        if repeat > 1:  # a reference has no cache: it answers, and pays for, every repeat again
            ref.questions, ref.correct, ref.calls = ref.questions * repeat, ref.correct * repeat, ref.calls * repeat
            ref.cost_usd, ref.latencies_ms = ref.cost_usd * repeat, ref.latencies_ms * repeat
    print(f"running {len(policies)} policies x {len(rows)} questions through the fleet "
          f"(recorded latencies x {latency_scale}, {in_flight} questions in flight)", file=sys.stderr)
    fleet_scores = fleet_run.run(file, rows, policies, latency_scale=latency_scale, in_flight=in_flight, repeat=repeat)
    scores = [*fleet_scores, strongest, *fusions.values(), *majorities, *singles]
    print(report.table(scores))
    family = judging.families(file, available)
    for p in panels:
        if p.arbiter:  # the recorded judge's accuracy by position and member family
            print("\n".join(judging.judge_report(rows, p.members, p.arbiter, family)))
    unpriced = [m for m in available if m not in prices and any(r.models[m].cost_usd is None for r in rows)]
    if unpriced:
        named = ", ".join(unpriced[:5]) + (f" and {len(unpriced) - 5} more" if len(unpriced) > 5 else "")
        print(f"\nwarning: no recorded cost_usd and no price in {file.parent / 'models.csv'} for {named}: "
              "the table's USD count their calls as 0; the verdict compares calls", file=sys.stderr)  # fmt: skip
    # as --offline: a file where some call has no cost (recorded, or tokens at a price) is compared in calls
    unit = "USD" if costs_known(rows, available, prices) else "calls"

    def cost(s: Score) -> float:
        return s.cost_usd if unit == "USD" else float(s.calls)

    best = max(fleet_scores, key=lambda s: (s.accuracy, -cost(s)))
    fusion = fusions.get(best.name) or min(fusions.values(), key=cost, default=strongest)
    ratios = report.ratios(best, strongest, fusion, cost)
    of = "its cost" if unit == "USD" else "its calls (no costs recorded)"
    print(f"\nbest fleet policy {best.name}: accuracy {best.accuracy:.3f} vs strongest {strongest.accuracy:.3f} "
          f"({ratios['accuracy_vs_strongest']:.3f}x) at {ratios['cost_vs_strongest']:.2f}x {of}; "
          f"vs Fusion-style {fusion.accuracy:.3f} ({ratios['accuracy_vs_fusion']:.3f}x) at {ratios['cost_vs_fusion']:.2f}x {of}")  # fmt: skip
    # the target, as `panel eval --offline` words it; None: nothing spent, so no verdict
    goal = (None if not cost(strongest) else
            ratios["accuracy_vs_strongest"] >= ACCURACY_GOAL and ratios["cost_vs_strongest"] <= COST_GOAL)  # fmt: skip
    dominated = [s.name for s in singles if s.accuracy > best.accuracy and cost(s) < cost(best)]
    said = {True: "reached", False: "NOT reached", None: "unknown (no costs)"}
    print(f"goal >= {ACCURACY_GOAL}x the strongest model's accuracy at <= {COST_GOAL}x its cost: {said[goal]}; "
          f"dominated by a single model: {', '.join(dominated) or 'no'}")  # fmt: skip
    goals = {"strongest": goal}
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = file.name.split(".")[0]
    json_path, png_path = out_dir / f"eval-{stem}.json", out_dir / f"eval-{stem}.png"
    summary = {"best": best.name, "strongest": strongest.name, "fusion": fusion.name, "ratios": ratios,
               "goals_reached": goals, "unit": unit, "dominated_by": dominated, "latency_scale": latency_scale, "in_flight": in_flight, "rows": len(rows)}  # fmt: skip
    report.write_json(json_path, file, scores, summary)
    report.plot(png_path, f"{stem}: accuracy against cost ({len(rows)} questions)", scores, ACCURACY_GOAL, COST_GOAL)
    print(f"wrote {json_path} and {png_path}", file=sys.stderr)
    return summary
