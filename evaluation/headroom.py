"""How far can `panel tune` get on random half splits, and where is the rest lost? For each seeded
half split (the shape of the hidden test: tune on one half, evaluate on the other) three numbers
against the target (>= 0.99x the eval half's strongest model's accuracy at <= 0.5x its cost):

- **tuned**: the policy `tune.fit` chose on the train half, scored on the eval half;
- **space oracle**: whether ANY candidate of the search space, with its thresholds set on the train
  half (as a tuner must), meets the target on the eval half: the ceiling of any selection rule
  over this space (it chooses with the eval half's answers, which no rule can);
- **fixed**: the policy chosen on the whole file (what `panel tune --write` ships), scored on each
  eval half: how often a policy that is right on average still misses on a half, by noise alone.

    python3 -m evaluation.headroom ../shared/data/replay/medmcqa_train.jsonl --splits 20 [--confirm]

A target the space oracle rarely meets cannot be met by a better rule, only by a larger space or
more rows; a target the oracle meets but `tuned` misses is lost in selection.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from evaluation import matrix, tune
from evaluation.fleet_run import prices_near
from evaluation.offline import Prices
from evaluation.offline_eval import ACCURACY_GOAL, COST_GOAL
from evaluation.replay import Row, agreement_for, load
from evaluation.transfer import halves


@dataclass(frozen=True)
class Headroom:
    tuned_met: bool
    tuned_acc: float  # ratio to the eval half's strongest model
    tuned_cost: float
    oracle_met: bool
    oracle_share: float  # share of the space's candidates that meet the target on the eval half
    oracle_best_acc: float  # the most accurate candidate at <= 0.5x cost, as a ratio
    fixed_met: bool
    flipped: bool  # the eval half's strongest model is not the train half's
    pick_met: bool  # tuned meets the target against the train half's strongest model (scored on the eval half)


def _meets(acc: np.ndarray, cost: np.ndarray, bar_acc: float, bar_cost: float) -> np.ndarray:
    return (acc >= ACCURACY_GOAL * bar_acc - 1e-12) & (cost <= COST_GOAL * bar_cost + 1e-12)


def one(rows: list[Row], m: matrix.Matrix, prices: Prices, rule: tune.Rule, seed: int, whole: tune.Fitted) -> Headroom:
    agreement = agreement_for(rows[0].kind)
    tr, ev = halves(m.n, seed)
    train, test = m.take(tr), m.take(ev)
    s = tune.strongest(test)
    bar_acc, bar_cost = float(test.right[:, s].mean()), float(test.cost[:, s].mean())
    space = tune.build(test, agreement, rule, fit=train)  # candidates shaped and thresholded on the train half
    correct, _, cost, _ = space.flat()
    acc, mean_cost = correct / test.n, cost / test.n
    ok = _meets(acc, mean_cost, bar_acc, bar_cost)
    cheap = mean_cost <= COST_GOAL * bar_cost + 1e-12
    fitted = tune.fit(train, agreement, rule)
    p = tune.strongest(train)
    pick_acc, pick_cost = float(test.right[:, p].mean()), float(test.cost[:, p].mean())
    eval_rows = [rows[i] for i in ev]
    r, c = tune.outcome(eval_rows, fitted.spec, prices, m.unit)  # the lane's rules, as panel eval replays
    rows_right, rows_cost = float(r.mean()), float(c.mean())
    r, c = tune.outcome(eval_rows, whole.spec, prices, m.unit)
    fixed_right, fixed_cost = float(r.mean()), float(c.mean())
    return Headroom(
        bool(_meets(np.array([rows_right]), np.array([rows_cost]), bar_acc, bar_cost)[0]),
        rows_right / bar_acc, rows_cost / bar_cost, bool(ok.any()), float(ok.mean()),
        float(acc[cheap].max() / bar_acc) if cheap.any() else float("nan"),
        bool(_meets(np.array([fixed_right]), np.array([fixed_cost]), bar_acc, bar_cost)[0]),
        p != s, bool(_meets(np.array([rows_right]), np.array([rows_cost]), pick_acc, pick_cost)[0]),
    )  # fmt: skip


def auroc(score: np.ndarray, right: np.ndarray) -> float:
    """P(a right answer's score > a wrong one's), ties half: 0.5 = no signal, 1 = a perfect gate."""
    ok = ~np.isnan(score)
    s, y = score[ok], right[ok]
    pos, neg = s[y], s[~y]
    if not pos.size or not neg.size:
        return float("nan")
    ranks = np.argsort(np.argsort(np.concatenate([pos, neg]), kind="stable"), kind="stable").astype(float)
    # average ranks over ties
    allv = np.concatenate([pos, neg])
    for v in np.unique(allv):
        tie = allv == v
        if tie.sum() > 1:
            ranks[tie] = ranks[tie].mean()
    return float((ranks[: pos.size].sum() - pos.size * (pos.size - 1) / 2) / (pos.size * neg.size))


def signal(file: Path) -> list[str]:
    """Per model with a `conf`: its accuracy, the AUROC of conf for a right answer, and its
    accuracy on the 30% of rows it is surest of (what a gate accepting 30% keeps)."""
    rows = load(file)
    m = matrix.build(rows, prices_near(file))
    s = tune.strongest(m)
    out = []
    for j, name in enumerate(m.models):
        if not m.has_conf(name):
            continue
        conf, right = m.conf[:, j], m.right[:, j]
        top = conf >= np.nanquantile(conf, 0.7)
        out.append(f"    {name[:28]:28} acc {right.mean():.3f}  AUROC {auroc(conf, right):.3f}  "
                   f"acc on its surest 30% {right[top].mean():.3f} (the strongest model there: {m.right[top, s].mean():.3f})  "
                   f"cost {m.cost[:, j].mean() / m.cost[:, s].mean():.2f}x")  # fmt: skip
    return ["  the confidence signal per model (whole file):", *out] if out else ["  no confidence signal recorded"]


def _median(xs: list[float]) -> str:
    seen = [x for x in xs if not np.isnan(x)]
    return f"{np.median(seen):.3f}" if seen else "none (no candidate that cheap)"


def in_sample(file: Path, rule: tune.Rule) -> list[str]:
    """The whole file in hindsight: the most accurate candidate at <= 0.5x the strongest model's
    cost, thresholds and choice made on every row (the most any rule could show on this file)."""
    rows = load(file)
    m = matrix.build(rows, prices_near(file))
    space = tune.build(m, agreement_for(rows[0].kind), rule)
    correct, _, cost, _ = space.flat()
    s = tune.strongest(m)
    ok = np.flatnonzero(cost <= COST_GOAL * m.cost[:, s].sum() + 1e-12)
    if ok.size == 0:
        return [f"  in sample (all rows, hindsight): no candidate costs <= {COST_GOAL}x {m.models[s]}"]
    i = int(ok[np.argmax(correct[ok])])
    acc = correct[i] / m.n
    return [f"  in sample (all rows, hindsight): the most accurate candidate at <= {COST_GOAL}x {m.models[s]}'s cost: "
            f"{acc:.3f} = {acc / m.right[:, s].mean():.3f}x  ({space.spec(i).describe()})"]


def run(file: Path, splits: int, seed: int, rule: tune.Rule) -> list[Headroom]:
    rows = load(file)
    prices = prices_near(file)
    m = matrix.build(rows, prices)
    whole = tune.fit(m, agreement_for(rows[0].kind), rule)
    return [one(rows, m, prices, rule, seed + i, whole) for i in range(splits)]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python3 -m evaluation.headroom", description=__doc__.split("\n")[0])
    p.add_argument("files", type=Path, nargs="+")
    p.add_argument("--splits", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--signal", action="store_true", help="also print how well each model's conf separates right from wrong")
    p.add_argument("--confirm", action="store_true", help="the space with confirm stages (gate -> agrees_previous -> last)")
    args = p.parse_args(argv)
    rule = tune.Rule(confirms=args.confirm)
    for f in args.files:
        res = run(f, args.splits, args.seed, rule)
        in_sample_lines = in_sample(f, dataclasses.replace(rule, min_support=0))
        mean = lambda xs: float(np.mean(xs))  # noqa: E731
        print(f"{f.name}: {args.splits} half splits (seeds {args.seed}..{args.seed + args.splits - 1})")
        print(f"  tuned on the train half: met {mean([r.tuned_met for r in res]):4.0%}  acc x median "
              f"{np.median([r.tuned_acc for r in res]):.3f}  cost x median {np.median([r.tuned_cost for r in res]):.2f}")
        print(f"  space oracle (any candidate, train-half thresholds): met {mean([r.oracle_met for r in res]):4.0%}  "
              f"candidates meeting, mean {mean([r.oracle_share for r in res]):.2%}  "
              f"best acc x at <= {COST_GOAL}x cost, median {_median([r.oracle_best_acc for r in res])}")
        print(f"  the whole file's policy on each eval half: met {mean([r.fixed_met for r in res]):4.0%}")
        print(f"  the eval half's strongest model is another than the train half's in {mean([r.flipped for r in res]):4.0%}; "
              f"tuned against the train half's strongest (on the eval half): met {mean([r.pick_met for r in res]):4.0%}")
        print("\n".join(in_sample_lines))
        if args.signal:
            print("\n".join(signal(f)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
