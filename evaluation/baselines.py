"""Per-question outcomes of the fair baselines, on recorded rows (no fleet): each model alone,
Fusion-style in both forms, and any cascade or panel by the cascade lane's rules.

- `fusion_judge_always`: every member and the judge, always; the judge's answer unless the members
  are unanimous (OpenRouter Fusion's shape: the judge also overrides 2-1 majorities).
- `majority_first`: every member, always (wait for all); a 2-of-3 majority decides, the judge only
  on a split. It is also the fair baseline of early exit: the same answers, without cancelling
  anything or deciding early.

Cost unit as `matrix.Matrix.unit`: USD, or calls where the file records no costs (ZeroEval).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np

from evaluation import offline
from evaluation.cascade import CascadeSpec, Stage, StagePanel, is_right, run_row
from evaluation.reference import recorded_cost
from evaluation.replay import Row, agreement_for, credit


@dataclass(frozen=True)
class Outcomes:
    name: str
    right: np.ndarray  # bool per question
    cost: np.ndarray  # per question, in `unit`
    calls: np.ndarray  # provider calls per question (the arbiter counts)
    arbiter: np.ndarray  # bool: a judge decided

    @property
    def accuracy(self) -> float:
        return float(self.right.mean()) if self.right.size else 0.0

    @property
    def mean_cost(self) -> float:
        return float(self.cost.mean()) if self.cost.size else 0.0


def _call(row: Row, model: str, prices: offline.Prices, unit: str) -> float:
    return recorded_cost(row, model, prices.get(model))[0] if unit == "USD" else 1.0


def _judge(row: Row, judge: str, members: list[str], prices: offline.Prices, unit: str) -> float:
    return offline.arbiter_cost(row, judge, members, prices) if unit == "USD" else 1.0


def single(rows: list[Row], model: str, prices: offline.Prices, unit: str) -> Outcomes:
    n = len(rows)
    return Outcomes(f"single:{model}", np.array([credit(r, model) for r in rows], dtype=bool),
                    np.array([_call(r, model, prices, unit) for r in rows]), np.ones(n), np.zeros(n, dtype=bool))  # fmt: skip


def _panel(rows: list[Row], members: list[str], judge: str, prices: offline.Prices, unit: str,
           judge_always: bool, name: str) -> Outcomes:  # fmt: skip
    right, cost, calls, arb = [], [], [], []
    for r in rows:
        keys = [offline.vote_key(r.kind, r.models[m].answer) for m in members]
        tally = Counter(k for k in keys if k is not None)
        top, count = tally.most_common(1)[0] if tally else (None, 0)
        settled = count == len(members) if judge_always else (count >= 2 or len(tally) <= 1)
        c = sum(_call(r, m, prices, unit) for m in members)
        if settled:
            winner = next((m for m, k in zip(members, keys, strict=True) if k == top), members[0])
            right.append(credit(r, winner))
        else:
            c += _judge(r, judge, members, prices, unit)
            right.append(credit(r, judge))
        cost.append(c)
        calls.append(len(members) + (not settled))
        arb.append(not settled)
    return Outcomes(name, np.array(right, dtype=bool), np.array(cost), np.array(calls, dtype=float), np.array(arb, dtype=bool))


def fusion_judge_always(rows: list[Row], members: list[str], judge: str, prices: offline.Prices, unit: str) -> Outcomes:
    return _panel(rows, members, judge, prices, unit, True, f"fusion:judge-always {'+'.join(members)}>{judge}")


def majority_first(rows: list[Row], members: list[str], judge: str, prices: offline.Prices, unit: str) -> Outcomes:
    return _panel(rows, members, judge, prices, unit, False, f"fusion:majority-first {'+'.join(members)}>{judge}")


def of_spec(rows: list[Row], spec: CascadeSpec, prices: offline.Prices, unit: str, name: str) -> Outcomes:
    ds = [run_row(r, spec, prices) for r in rows]
    return Outcomes(name, np.array([is_right(r, d) for r, d in zip(rows, ds, strict=True)], dtype=bool),
                    np.array([d.cost_usd if unit == "USD" else float(d.calls) for d in ds]),
                    np.array([float(d.calls) for d in ds]), np.array([d.arbiter for d in ds], dtype=bool))  # fmt: skip


def panel_spec(kind: str, members: list[str], arbiter: str, dispatch: str = "staged", quorum: int = 2) -> CascadeSpec:
    """A plain panel as a one-stage cascade (the last stage arbitrates a split)."""
    panel = StagePanel(members=members, quorum=quorum, dispatch=dispatch, agreement=agreement_for(kind), arbiter=arbiter)  # type: ignore[arg-type]
    return CascadeSpec(stages=[Stage(panel=panel)])


def top_models(singles: list[Outcomes], k: int = 3) -> list[str]:
    """The k most accurate models (cheaper first on a tie): Fusion's members, picked in hindsight."""
    best = sorted(singles, key=lambda o: (-o.accuracy, o.mean_cost))[:k]
    return [o.name.removeprefix("single:") for o in best]
