"""`panel tune FILE [--write policy.yaml]`: cross-validated tuning, printed beside every baseline
with intervals, and the chosen tasks.yaml entry written (CASCADE-SCHEMA: `default_lane: cascade`).

    panel tune ../shared/data/replay/mmlu_train.jsonl --write mmlu.yaml
    panel eval held-out.jsonl --policy mmlu.yaml        # the written policy on other questions
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from evaluation import baselines, matrix, stats, tune
from evaluation.baselines import Outcomes
from evaluation.cascade import CascadeSpec
from evaluation.fleet_run import prices_near
from evaluation.replay import Row, agreement_for, load
from producer.progress import progress


@dataclass(frozen=True)
class TuneResult:
    file: str
    unit: str
    rows: int
    strongest: Outcomes
    tuned: Outcomes  # out-of-fold
    oof_strongest: Outcomes  # each fold's training-best single model, out of fold
    hindsight: tune.Fitted | None  # cheapest in-sample policy at the tuned accuracy
    final: tune.Fitted  # fitted on every row: what --write writes
    fold_policies: list[str]
    references: list[Outcomes]

    @property
    def targets(self) -> dict[str, bool | None]:
        st, tu = self.strongest, self.tuned
        dominated = [o.name for o in self.references if o.name.startswith("single:")
                     and o.accuracy > tu.accuracy and o.mean_cost < tu.mean_cost]  # fmt: skip
        hs = self.hindsight.train_cost if self.hindsight else None
        return {
            "within_1_point_of_strongest": tu.accuracy >= st.accuracy - 0.01 - 1e-12,
            "cost_le_1.1x_hindsight": None if not hs else tu.mean_cost <= 1.1 * hs + 1e-15,
            "not_dominated_by_a_single_model": not dominated,
        }


def _fmt_cost(x: float, unit: str) -> str:
    return f"{x:.3e}" if unit == "USD" else f"{x:.2f}"


def row_line(o: Outcomes, st: Outcomes, unit: str, versus: Outcomes | None) -> str:
    n = o.right.size
    lo, hi = stats.wilson(int(o.right.sum()), n)
    clo, chi = stats.mean_interval(o.cost)
    ratio = o.mean_cost / st.mean_cost if st.mean_cost else 0.0
    line = (f"{o.name[:58]:58} {o.accuracy:6.3f} [{lo:.3f},{hi:.3f}] {_fmt_cost(o.mean_cost, unit):>9} "
            f"[{_fmt_cost(clo, unit)},{_fmt_cost(chi, unit)}] {ratio:6.2f}x")  # fmt: skip
    if versus is not None and versus is not o:
        p = stats.paired(versus.right, o.right, versus.cost, o.cost)
        label = versus.name.split(":")[0].split(" (")[0]
        line += f"  {label} {p.diff * 100:+5.1f} pts [{p.low * 100:+.1f},{p.high * 100:+.1f}] at {p.cost_ratio:.2f}x: {p.verdict}"
    return line


def run(file: Path, k: int = 5, seed: int = 0, rule: tune.Rule | None = None, rows: list[Row] | None = None) -> TuneResult:
    rule = rule or tune.Rule()
    rows = rows if rows is not None else load(file)
    prices = prices_near(file)
    m = matrix.build(rows, prices)
    agreement = agreement_for(rows[0].kind)
    # a bar on stderr when it is a terminal: k folds, then the final fit and the hindsight search
    with progress(f"tuning {file.name}", k + 2) as tick:
        cv = tune.cross_validate(rows, m, prices, agreement, k, rule, seed, on_fold=lambda i: tick(i, f"fold {i}/{k}"))
        final = tune.fit(m, agreement, rule)
        tick(k + 1, "final fit on all rows")
        hindsight = tune.hindsight(m, agreement, float(cv.right.mean()), rule)
        tick(k + 2, "hindsight")
    singles = [baselines.single(rows, name, prices, m.unit) for name in m.models]
    strongest = min(singles, key=lambda o: (-o.accuracy, o.mean_cost))
    top = baselines.top_models(singles)
    judge = top[0]
    refs = [*([baselines.fusion_judge_always(rows, top, judge, prices, m.unit),
               baselines.majority_first(rows, top, judge, prices, m.unit)] if len(top) == 3 else []), *singles]  # fmt: skip
    tuned = Outcomes("tuned (out-of-fold)", cv.right, cv.cost, np.zeros(m.n), np.zeros(m.n, dtype=bool))
    picked = ", ".join(dict.fromkeys(cv.singles))
    oof_strongest = Outcomes(f"strongest chosen out of fold ({picked})", cv.single_right, cv.single_cost,
                             np.ones(m.n), np.zeros(m.n, dtype=bool))  # fmt: skip
    return TuneResult(file.name, m.unit, m.n, strongest, tuned, oof_strongest, hindsight, final,
                      [p.spec.describe() for p in cv.policies], refs)  # fmt: skip


def report(res: TuneResult, k: int) -> str:
    st, unit = res.strongest, res.unit
    cost_word = "USD/question" if unit == "USD" else "calls/question (no costs recorded)"
    head = f"{'policy':58} {'acc':>6} {'95% CI':13} {cost_word[:9]:>9} {'95% CI':19} {'x strongest':>7}"
    out = [f"{res.file}: {res.rows} questions, {sum(o.name.startswith('single:') for o in res.references)} models; cost in {cost_word}; "
           f"{k}-fold cross-validation (each fold's policy chosen on the other folds only)", head, "-" * len(head)]  # fmt: skip
    out.append(row_line(res.tuned, st, unit, None))
    if res.hindsight:
        h = res.hindsight
        out.append(f"{'hindsight: cheapest in-sample policy at that accuracy':58} {h.train_accuracy:6.3f} {'':13} "
                   f"{_fmt_cost(h.train_cost, unit):>9} {'':19} {h.train_cost / st.mean_cost if st.mean_cost else 0:6.2f}x  "
                   f"{h.spec.describe()}")  # fmt: skip
    st_row = Outcomes(f"strongest={st.name.removeprefix('single:')}", st.right, st.cost, st.calls, st.arbiter)
    out.append(row_line(st_row, st, unit, res.tuned))
    # the fair form of the same yardstick: one model, chosen the way the tuned policy is (per fold)
    out.append(row_line(res.oof_strongest, st, unit, res.tuned))
    for o in res.references:
        out.append(row_line(o, st, unit, res.tuned))
    out.append("per-fold policies (chosen on the other folds): " + "; ".join(res.fold_policies))
    f = res.final
    out.append(f"policy fitted on every row (written by --write): {f.spec.describe()} "
               f"(in-sample {f.train_accuracy:.3f} at {f.train_cost / st.mean_cost if st.mean_cost else 0:.2f}x)")
    said = {True: "met", False: "NOT met", None: "n/a (no cost)"}
    out.append("targets: " + "; ".join(f"{name.replace('_', ' ')}: {said[v]}" for name, v in res.targets.items()))
    return "\n".join(out)


def entry(res: TuneResult, kind: str, command: str) -> dict[str, Any]:
    """The tasks.yaml entry: default_lane cascade; `single` the strongest model; `panel` the
    cascade's own panel stage if it has an arbitrated one, else the three most accurate models."""
    spec: CascadeSpec = res.final.spec
    strongest = res.strongest.name.removeprefix("single:")
    panel = next((s.panel for s in spec.stages if s.panel is not None and s.panel.arbiter), None)
    top = baselines.top_models([o for o in res.references if o.name.startswith("single:")])
    panel_entry = panel.model_dump(exclude_none=True) if panel else {  # a file of one model: a panel of one
        "members": top, "quorum": min(2, len(top)), "dispatch": "staged", "agreement": agreement_for(kind),
        "arbiter": strongest}  # fmt: skip
    return {"description": f"tuned by `{command}`", "default_lane": "cascade", "single": {"model": strongest},
            "panel": panel_entry, "cascade": spec.to_entry()}  # fmt: skip


def write(path: Path, res: TuneResult, task_class: str, kind: str, command: str) -> None:
    tu, st = res.tuned, res.strongest
    ratio = tu.mean_cost / st.mean_cost if st.mean_cost else 0.0
    header = (f"# Written by `{command}`.\n# Out-of-fold on {res.file} ({res.rows} questions): accuracy {tu.accuracy:.3f} "
              f"vs {st.name} {st.accuracy:.3f} at {ratio:.2f}x its cost ({res.unit}).\n")  # fmt: skip
    body = yaml.safe_dump({"task_classes": {task_class: entry(res, kind, command)}}, sort_keys=False)
    path.write_text(header + body)


def main(file: Path, k: int, seed: int, out: Path | None, task_class: str, rule: tune.Rule, command: str) -> int:
    rows = load(file)
    res = run(file, k, seed, rule, rows)
    print(report(res, k))
    if out is not None:
        write(out, res, task_class, rows[0].kind, command)
        print(f"wrote {out} (task class {task_class})", file=sys.stderr)
    return 0
