"""Search-space extensions measured, not shipped: candidate families `panel tune`'s space
(`evaluation/space.py`) does not hold, and one selection variant, scored on the same seeded half
splits as `evaluation.headroom` / `evaluation.transfer`, side by side with the default space.

    python3 -m evaluation.extensions $R/medmcqa_train.jsonl $R/gsm8k_train.jsonl $R/mmlu_train.jsonl --splits 20
    python3 -m evaluation.extensions $R/mmlu_train.jsonl $R/medmcqa_train.jsonl --pool --splits 20  # one file of both

Variants (`+`-joined names; each family adds candidates to the default space, thresholds are
quantiles of the train half's rows, as the space's own gates):
- `pairconf`: two models asked together, accepted when they agree AND the lower of their two
  log-probabilities >= t (t: a quantile over the train rows where they agree);
- `confirmconf`: gate -> a model accepted when it agrees with the gated one AND its own
  log-probability >= t -> last;
- `band`: gate -> a model asked only when the gated model's log-probability >= t2 (not on rows it
  is very unsure of: the confirming call saved), accepted when it agrees -> last;
- `four`: three log-probability gates, cheapest first, then the last (the schema allows 4 stages);
- `vote`: gate -> gate -> last, the last answer overruled when both earlier answers agree against
  it (no extra call);
- `confirm`: the existing `--confirm` stages; `budget0.45`: a selection rule, not a family
  (`panel tune --budget 0.45`, `tune.Rule.budget`): among the rule's eligible candidates,
  those costing <= 0.45x the strongest model's on the train half, the most accurate (smoothed);
  none: the cheapest eligible. Without it the default budget (0.40); `budgetoff`: the cheapest
  eligible always (the rule before the budget pick, which the families were measured with).
- `pmet` / `pmetany`: a selection rule (measured, not shipped): the candidate with the highest
  bootstrap chance of meeting the target on rows like the train half's (`choose_pmet`: 200
  resamples of the train rows; met = accuracy >= 0.99x and cost <= 0.5x the *resample's*
  strongest model, so the yardstick's own winner's curse is in the estimate), ties to the more
  accurate (smoothed) then the cheaper. `pmet` chooses among the rule's eligible candidates;
  `pmetany` among every candidate, and falls back to the default rule when no candidate's chance
  reaches 0.25 (without a floor it takes cheap policies on files where nothing can meet the target).

Scoring: "tuned" is the candidate `tune.choose` picks on the train half's space, scored on the
eval half's matrix (the space built on the eval half with `fit=train` has the same candidates,
thresholds from the train half). For the default space that equals headroom's replay by the
lane's rules (tests/eval/test_extensions.py); the families' checks exist only here.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from evaluation import matrix, tune
from evaluation import space as search
from evaluation.cascade import Stage
from evaluation.fleet_run import prices_near
from evaluation.matrix import Matrix
from evaluation.offline_eval import ACCURACY_GOAL, COST_GOAL
from evaluation.replay import Row, agreement_for, load
from evaluation.transfer import halves

FAMILIES = ("pairconf", "confirmconf", "band", "four", "vote")


def _prototype(v: int, last: bool) -> Stage:
    raise NotImplementedError("a prototype family's check is not in the cascade schema; it is scored, never written")


def _conf(m: Matrix, j: int) -> np.ndarray:
    return np.nan_to_num(m.conf[:, j], nan=-np.inf)


def _mins(seen: np.ndarray, rates: np.ndarray) -> np.ndarray:
    seen = seen[np.isfinite(seen)]
    mins = np.quantile(seen, 1 - rates) if seen.size else np.zeros(len(rates))
    return np.minimum(np.floor(mins * 1e6) / 1e6, 0.0)


def _stage(models: frozenset[str], accept: np.ndarray, right: np.ndarray, cost: np.ndarray) -> search.StageArr:
    v = accept.shape[0]
    right = np.broadcast_to(right, (v, right.shape[-1])).copy()
    return search.StageArr(models, accept, right, np.broadcast_to(cost, (v, cost.shape[-1])).copy(), _prototype, True)


def pairconf(m: Matrix, fit: Matrix, a: str, b: str, rates: np.ndarray) -> search.StageArr:
    ia, ib = m.col(a), m.col(b)
    low_fit = np.minimum(_conf(fit, ia), _conf(fit, ib))[search._agree(fit, ia, ib)]
    mins = _mins(low_fit, rates)
    accept = search._agree(m, ia, ib)[None] & (np.minimum(_conf(m, ia), _conf(m, ib))[None] >= mins[:, None])
    return _stage(frozenset([a, b]), accept, m.right[None, :, ia], (m.cost[:, ia] + m.cost[:, ib])[None])


def confirmconf(m: Matrix, fit: Matrix, first: str, b: str, rates: np.ndarray) -> search.StageArr:
    ia, ib = m.col(first), m.col(b)
    mins = _mins(_conf(fit, ib)[search._agree(fit, ia, ib)], rates)
    accept = search._agree(m, ia, ib)[None] & (_conf(m, ib)[None] >= mins[:, None])
    return _stage(frozenset([b]), accept, m.right[None, :, ib], m.cost[None, :, ib])


def band(m: Matrix, fit: Matrix, first: str, b: str, rates: np.ndarray) -> search.StageArr:
    ia, ib = m.col(first), m.col(b)
    asked = _conf(m, ia)[None] >= _mins(_conf(fit, ia), rates)[:, None]
    return _stage(
        frozenset([b]),
        asked & search._agree(m, ia, ib)[None],
        m.right[None, :, ib],
        np.where(asked, m.cost[None, :, ib], 0.0),
    )


def extend(
    space: search.Space, m: Matrix, fit: Matrix, agreement: dict[str, object], rule: tune.Rule, families: frozenset[str]
) -> None:
    """Add the families' candidates to `space` (built on `m`, shaped and thresholded on `fit`)."""
    rates = rule.rates(fit.n)
    names = search.search_models(fit)
    lasts_names = tune.last_models(fit, rule) or [x for x in search.ranked(fit) if x in names][: search.LAST_MODELS]
    lasts = [search.single(m, x) for x in lasts_names]
    gated = [x for x in names if fit.has_conf(x)]
    gates = {x: search.gate(m, x, fit, rates) for x in gated}
    firsts = [*gates.values(), *(search.pair(m, a, b, agreement) for a, b in itertools.combinations(names, 2))]
    for last in lasts:
        (c,) = last.models
        if "pairconf" in families:
            for a, b in itertools.combinations([x for x in gated if x != c], 2):
                p = pairconf(m, fit, a, b, rates)
                space.add((p, last))
                for g in firsts:
                    if not g.models & (p.models | last.models):
                        space.add((p, g, last))
                        space.add((g, p, last))
        for a, b in itertools.permutations([x for x in gated if x != c], 2):
            if "confirmconf" in families:
                space.add((gates[a], confirmconf(m, fit, a, b, rates), last))
            if "band" in families:
                space.add((gates[a], band(m, fit, a, b, rates), last))
            if "vote" in families:
                ia, ib, ic = m.col(a), m.col(b), m.col(c)
                overruled = search._agree(m, ia, ib) & ~search._agree(m, ia, ic)
                space.add(
                    (
                        gates[a],
                        gates[b],
                        dataclasses.replace(last, right=np.where(overruled, m.right[:, ia], m.right[:, ic])[None]),
                    )
                )
        if "four" in families:
            by_cost = sorted((x for x in gated if x != c), key=lambda x: float(fit.cost[:, fit.col(x)].mean()))
            for a, b, d in itertools.combinations(by_cost, 3):
                space.add((gates[a], gates[b], gates[d], last))


@dataclass(frozen=True)
class Variant:
    families: frozenset[str] = frozenset()
    confirms: bool = False
    budget: float | None = tune.DEFAULT_BUDGET  # the selection variant (`tune.Rule.budget`); budgetoff: None
    pmet: str = ""  # "", "eligible" (`pmet`) or "any" (`pmetany`): `choose_pmet` instead of `tune.choose`

    @classmethod
    def parse(cls, text: str) -> Variant:
        parts = [p for p in text.split("+") if p and p != "default"]
        picks = {"pmet": "eligible", "pmetany": "any"}
        bad = [p for p in parts if p not in FAMILIES and p not in picks and p != "confirm" and not p.startswith("budget")]
        if bad:
            raise ValueError(f"--variants: unknown {bad}; use {', '.join(FAMILIES)}, confirm, pmet, pmetany, budget0.45 or budgetoff (joined by +)")
        given = [tune.parse_budget(p.removeprefix("budget")) for p in parts if p.startswith("budget")]
        budget = given[0] if given else tune.DEFAULT_BUDGET
        pmet = next((picks[p] for p in parts if p in picks), "")
        return cls(frozenset(p for p in parts if p in FAMILIES), "confirm" in parts, budget, pmet)


def space_for(
    m: Matrix, agreement: dict[str, object], rule: tune.Rule, variant: Variant, fit: Matrix | None = None
) -> search.Space:
    s = tune.build(m, agreement, rule, fit=fit)
    if variant.families:
        extend(s, m, fit or m, agreement, rule, variant.families)
    return s


PMET_RESAMPLES = 200
PMET_FLOOR = 0.25  # `pmetany`: below this chance for every candidate, the default rule's pick


def choose_pmet(space: search.Space, train: Matrix, rule: tune.Rule, among: str = "eligible", seed: int = 0) -> int:
    """The candidate most often meeting the target (>= 0.99x accuracy at <= 0.5x cost of the
    resample's strongest model) over bootstrap resamples of the training rows; -1: none eligible."""
    s = tune.strongest(train)
    bar, max_cost = float(train.right[:, s].mean()), float(train.cost[:, s].sum())
    ok = tune.eligible(space, bar, rule, max_cost)
    picks = np.flatnonzero(ok if among == "eligible" else np.ones_like(ok))
    if picks.size == 0:
        return -1
    n = train.n
    w = np.random.default_rng(seed).multinomial(n, np.full(n, 1 / n), size=PMET_RESAMPLES).astype(np.float32)
    acc_m, cost_m = w @ train.right.astype(np.float32) / n, w @ train.cost.astype(np.float32) / n
    top = np.lexsort((np.broadcast_to(train.cost.mean(axis=0), acc_m.shape), -acc_m), axis=1)[:, 0]  # per resample
    rows = np.arange(PMET_RESAMPLES)
    right, cost = space.rows(picks)
    met = (right.astype(np.float32) @ w.T / n >= ACCURACY_GOAL * acc_m[rows, top] - 1e-9) & (
        cost.astype(np.float32) @ w.T / n <= COST_GOAL * cost_m[rows, top] + 1e-12
    )
    chance = met.mean(axis=1)
    if among != "eligible" and chance.max() < PMET_FLOOR:
        return tune.choose(space, bar, rule, max_cost)
    _, smooth, total, stages = space.flat()
    best = picks[chance >= chance.max() - 1e-12]
    best = best[smooth[best] >= smooth[best].max() - 1e-12]
    return int(best[np.lexsort((stages[best], total[best]))[0]])


@dataclass(frozen=True)
class SplitResult:
    oracle_met: bool
    oracle_best_acc: float  # the most accurate candidate at <= 0.5x cost on the eval half, as a ratio
    tuned_met: bool
    tuned_acc: float  # ratio to the eval half's strongest model
    tuned_cost: float


def _meets(acc: np.ndarray, cost: np.ndarray, bar_acc: float, bar_cost: float) -> np.ndarray:
    return (acc >= ACCURACY_GOAL * bar_acc - 1e-12) & (cost <= COST_GOAL * bar_cost + 1e-12)


def one(m: Matrix, agreement: dict[str, object], rule: tune.Rule, variant: Variant, seed: int) -> SplitResult:
    tr, ev = halves(m.n, seed)
    train, test = m.take(tr), m.take(ev)
    s = tune.strongest(test)
    bar_acc, bar_cost = float(test.right[:, s].mean()), float(test.cost[:, s].mean())
    correct, _, cost, _ = space_for(test, agreement, rule, variant, fit=train).flat()
    acc, mean_cost = correct / test.n, cost / test.n
    cheap = mean_cost <= COST_GOAL * bar_cost + 1e-12
    p = tune.strongest(train)
    trained = space_for(train, agreement, rule, variant)
    i = (choose_pmet(trained, train, rule, variant.pmet) if variant.pmet
         else tune.choose(trained, float(train.right[:, p].mean()), rule, float(train.cost[:, p].sum())))  # fmt: skip
    ta, tc = (
        (float(test.right[:, p].mean()), float(test.cost[:, p].mean()))
        if i < 0
        else (float(acc[i]), float(mean_cost[i]))
    )
    return SplitResult(bool(_meets(acc, mean_cost, bar_acc, bar_cost).any()), float(acc[cheap].max() / bar_acc) if cheap.any() else float("nan"),
                       bool(_meets(np.array([ta]), np.array([tc]), bar_acc, bar_cost)[0]), ta / bar_acc, tc / bar_cost)  # fmt: skip


def in_sample(m: Matrix, agreement: dict[str, object], rule: tune.Rule, variant: Variant) -> float:
    """The most accurate candidate at <= 0.5x the strongest's cost on all rows, as a ratio (hindsight)."""
    correct, _, cost, _ = space_for(m, agreement, dataclasses.replace(rule, min_support=0), variant).flat()
    s = tune.strongest(m)
    ok = cost <= COST_GOAL * m.cost[:, s].sum() + 1e-12
    return float(correct[ok].max() / m.n / m.right[:, s].mean()) if ok.any() else float("nan")


def line(name: str, res: list[SplitResult], hindsight: float) -> str:
    mean = lambda xs: float(np.mean(xs))  # noqa: E731
    best = [r.oracle_best_acc for r in res if not np.isnan(r.oracle_best_acc)]
    return (f"  {name:24} oracle met {mean([r.oracle_met for r in res]):4.0%}  best acc x at <= {COST_GOAL}x "
            f"{np.median(best) if best else float('nan'):.3f} | tuned met {mean([r.tuned_met for r in res]):4.0%}  "
            f"acc>=.99x {mean([r.tuned_acc >= ACCURACY_GOAL - 1e-12 for r in res]):4.0%}  acc x med {np.median([r.tuned_acc for r in res]):.3f}  "
            f"cost x med {np.median([r.tuned_cost for r in res]):.2f} | in sample {hindsight:.3f}")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python3 -m evaluation.extensions", description=__doc__.split("\n")[0])
    p.add_argument("files", type=Path, nargs="+")
    p.add_argument("--splits", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--variants",
        default="default,budgetoff,confirm,pairconf,confirmconf,band,four,vote",
        help="comma-separated; each a +-joined set of families (and confirm, budgetB)",
    )
    p.add_argument(
        "--pool", action="store_true", help="the files' rows as one file (same models and kind): larger halves"
    )
    args = p.parse_args(argv)
    variants = {v: Variant.parse(v) for v in args.variants.split(",")}
    loaded: list[tuple[str, Path, list[Row]]] = [(f.name, f, load(f)) for f in args.files]
    if args.pool:
        loaded = [("+".join(name for name, _, _ in loaded), args.files[0], [r for _, _, rows in loaded for r in rows])]
    for name, path, rows in loaded:
        m = matrix.build(rows, prices_near(path))
        agreement = agreement_for(rows[0].kind)
        print(f"{name} ({m.n} rows, {args.splits} half splits, seeds {args.seed}..{args.seed + args.splits - 1})")
        for label, v in variants.items():
            rule = tune.Rule(confirms=v.confirms, budget=v.budget)
            res = [one(m, agreement, rule, v, args.seed + k) for k in range(args.splits)]
            print(line(label, res, in_sample(m, agreement, rule, v)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
