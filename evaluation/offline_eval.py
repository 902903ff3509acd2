"""`panel eval FILE --policy P --offline`: every policy (a cascade policy too) replayed on the
recorded rows by the cascade lane's rules, beside the fair baselines, with 95% intervals and a paired verdict against the strongest model.

Rows printed: each policy; the strongest single model; for each panel policy (else the three most
accurate models) Fusion-style in both forms: the judge always deciding, and majority first with
the judge only on a split (= "wait for all, 2-of-3 majority", the fair baseline of early exit);
every single model. Goals: the hidden-test target (>= 0.99x the strongest's accuracy at <= 0.5x
its cost), and whether any single model dominates (more accurate and cheaper).
"""

from __future__ import annotations

import sys
from pathlib import Path

import orjson

from evaluation import baselines, judging, stats
from evaluation.baselines import Outcomes
from evaluation.fleet_run import prices_near
from evaluation.matrix import costs_known
from evaluation.policy import CascadePolicy, EvalPolicy, as_cascade
from evaluation.replay import Row, models_in
from evaluation.tune_cli import row_line

ACCURACY_GOAL, COST_GOAL = 0.99, 0.50


def evaluate(file: Path, rows: list[Row], policies: list[EvalPolicy | CascadePolicy], out_dir: Path) -> dict[str, object]:
    prices = prices_near(file)
    available = models_in(rows)
    unit = "USD" if costs_known(rows, available, prices) else "calls"
    kind = rows[0].kind
    scored = [baselines.of_spec(rows, as_cascade(p, kind), prices, unit, f"{p.name}: {as_cascade(p, kind).describe()}")
              for p in policies]  # fmt: skip
    singles = [baselines.single(rows, m, prices, unit) for m in available]
    st = min(singles, key=lambda o: (-o.accuracy, o.mean_cost))
    panels = [(p.members, p.arbiter) for p in policies if isinstance(p, EvalPolicy) and p.lane == "panel" and p.arbiter]
    if not panels and len(available) >= 3:
        top = baselines.top_models(singles)
        panels = [(top, top[0])]
    fusions = [f(rows, members, judge, prices, unit) for members, judge in panels
               for f in (baselines.fusion_judge_always, baselines.majority_first)]  # fmt: skip
    best = max(scored, key=lambda o: (o.accuracy, -o.mean_cost))
    cost_word = "USD/question" if unit == "USD" else "calls/question (no costs recorded)"
    print(f"{file.name}: {len(rows)} questions, {len(available)} models, replayed offline; cost in {cost_word}")
    head = f"{'policy':58} {'acc':>6} {'95% CI':13} {'cost/q':>9} {'95% CI':19} {'x strongest':>7}  vs {best.name.split(':')[0]}"
    print(head + "\n" + "-" * len(head))
    strongest_row = Outcomes(f"strongest={st.name.removeprefix('single:')}", st.right, st.cost, st.calls, st.arbiter)
    for o in [*scored, strongest_row, *fusions, *singles]:
        print(row_line(o, st, unit, best if o is not best else None))
    for o in scored:
        arb = o.arbiter.mean()
        print(f"{o.name.split(':')[0]}: {o.calls.mean():.2f} calls/question, arbiter on {arb:.1%}")
    fam = judging.families(file, available)
    for members, judge in panels:
        print("\n".join(judging.judge_report(rows, members, judge, fam)))
    acc_ratio = best.accuracy / st.accuracy if st.accuracy else 0.0
    cost_ratio = best.mean_cost / st.mean_cost if st.mean_cost else None
    dominated = [o.name for o in singles if o.accuracy > best.accuracy and o.mean_cost < best.mean_cost]
    versus = stats.paired(best.right, st.right, best.cost, st.cost)
    goal = None if cost_ratio is None else acc_ratio >= ACCURACY_GOAL and cost_ratio <= COST_GOAL
    said = {True: "reached", False: "NOT reached", None: "unknown (no costs)"}
    print(f"\nbest policy {best.name}: accuracy {best.accuracy:.3f} = {acc_ratio:.3f}x the strongest ({st.accuracy:.3f}, "
          f"{versus.diff * 100:+.1f} pts [{versus.low * 100:+.1f},{versus.high * 100:+.1f}]: {versus.verdict}) "
          f"at {cost_ratio if cost_ratio is not None else float('nan'):.2f}x its cost; "
          f"goal >= {ACCURACY_GOAL}x accuracy at <= {COST_GOAL}x cost: {said[goal]}; "
          f"dominated by a single model: {', '.join(dominated) or 'no'}")  # fmt: skip
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"eval-offline-{file.name.split('.')[0]}.json"
    summary: dict[str, object] = {
        "file": str(file), "unit": unit, "rows": len(rows), "best": best.name, "strongest": st.name,
        "accuracy_vs_strongest": acc_ratio, "cost_vs_strongest": cost_ratio, "goal_reached": goal,
        "dominated_by": dominated, "paired_vs_strongest": versus.__dict__ | {"verdict": versus.verdict},
        "policies": [{"policy": o.name, "accuracy": o.accuracy, "cost_per_question": o.mean_cost,
                      "calls_per_question": float(o.calls.mean()), "arbiter_rate": float(o.arbiter.mean())}
                     for o in [*scored, *fusions, *singles]],
    }  # fmt: skip
    path.write_bytes(orjson.dumps(summary, option=orjson.OPT_INDENT_2))
    print(f"wrote {path}", file=sys.stderr)
    return summary
