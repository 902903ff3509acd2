"""Recorded rows as arrays (questions x models), for searching policies fast: who is right, what
each call cost, each answer's log-probability and its vote key. Every column is computed from its
own row only, so a subset of rows (`take`) is exactly the matrix of those rows: a fold's
training matrix holds nothing of its test rows.

Cost unit: USD (recorded `cost_usd`, else tokens x models.csv price) when every call of every
model has one; else calls (ZeroEval records neither costs nor tokens), said in `unit`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from evaluation import offline
from evaluation.reference import recorded_cost
from evaluation.replay import Row, credit, models_in

NO_KEY = -1


@dataclass(frozen=True)
class Matrix:
    models: tuple[str, ...]
    ids: tuple[str, ...]
    right: np.ndarray  # bool [n, M]: the recorded verdict on each model's answer
    cost: np.ndarray  # float [n, M]: one call of each model
    conf: np.ndarray  # float [n, M]: log-probability, nan where not recorded
    key: np.ndarray  # int [n, M]: vote key id within the row (equal id = agreeing answers), NO_KEY = none
    judge: np.ndarray  # float [n, M]: one arbiter call of each model on this question (over 3 answers)
    unit: str  # "USD" | "calls"

    @property
    def n(self) -> int:
        return len(self.ids)

    def col(self, model: str) -> int:
        return self.models.index(model)

    def has_conf(self, model: str) -> bool:
        return bool(np.mean(~np.isnan(self.conf[:, self.col(model)])) >= 0.5) if self.n else False

    def take(self, index: np.ndarray) -> Matrix:
        """The matrix of these rows only (copies: nothing else stays reachable)."""
        idx = np.asarray(index, dtype=int)
        return Matrix(self.models, tuple(self.ids[i] for i in idx), self.right[idx].copy(), self.cost[idx].copy(),
                      self.conf[idx].copy(), self.key[idx].copy(), self.judge[idx].copy(), self.unit)  # fmt: skip


def costs_known(rows: list[Row], models: list[str], prices: offline.Prices) -> bool:
    """Every call has a cost: recorded, or its tokens at the model's models.csv price."""
    return all(r.models[m].cost_usd is not None or (m in prices and r.models[m].tokens_in is not None)
               for r in rows for m in models)  # fmt: skip


def build(rows: list[Row], prices: offline.Prices, keyer: object = None) -> Matrix:
    """`keyer(row, model) -> str | None` gives vote keys (default: the chord model's `vote_key`)."""
    models = models_in(rows)
    usd = costs_known(rows, models, prices)
    n, m = len(rows), len(models)
    right = np.zeros((n, m), dtype=bool)
    cost = np.ones((n, m))
    conf = np.full((n, m), np.nan)
    key = np.full((n, m), NO_KEY, dtype=int)
    judge = np.ones((n, m))
    for i, r in enumerate(rows):
        ids: dict[str, int] = {}
        for j, name in enumerate(models):
            rec = r.models[name]
            right[i, j] = credit(r, name)
            if usd:
                cost[i, j] = recorded_cost(r, name, prices.get(name))[0]
                judge[i, j] = offline.arbiter_cost(r, name, [name] * 3, prices)  # three answers of its length
            if rec.conf is not None:
                conf[i, j] = rec.conf
            k = keyer(r, name) if callable(keyer) else offline.vote_key(r.kind, rec.answer)
            if k is not None:
                key[i, j] = ids.setdefault(k, len(ids))
    return Matrix(tuple(models), tuple(r.id for r in rows), right, cost, conf, key, judge, "USD" if usd else "calls")
