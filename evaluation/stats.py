"""Intervals and paired tests on per-question outcomes, so a table never calls noise a gain.

Accuracy: Wilson 95% interval. Mean cost: percentile bootstrap. A difference between two policies
on the same questions: paired bootstrap of the difference in accuracy (and of the cost ratio);
`verdict` says "gain" or "loss" only when the interval excludes zero.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

Z95 = 1.959964
BOOT = 2000


def wilson(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    if n == 0:
        return 0.0, 1.0
    p = k / n
    d = 1 + z * z / n
    mid = (p + z * z / (2 * n)) / d
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return max(0.0, mid - half), min(1.0, mid + half)


def mean_interval(x: np.ndarray, seed: int = 0) -> tuple[float, float]:
    if x.size == 0:
        return 0.0, 0.0
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, (BOOT, x.size))].mean(axis=1)
    return float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))


@dataclass(frozen=True)
class Paired:
    diff: float  # accuracy(a) - accuracy(b)
    low: float
    high: float
    cost_ratio: float  # cost(a) / cost(b)
    cost_low: float
    cost_high: float

    @property
    def verdict(self) -> str:
        if self.low > 0:
            return "significant gain"
        if self.high < 0:
            return "significant loss"
        return "no significant gain" if self.diff > 0 else "no significant difference" if self.diff == 0 else "no significant loss"


def paired(right_a: np.ndarray, right_b: np.ndarray, cost_a: np.ndarray, cost_b: np.ndarray, seed: int = 0) -> Paired:
    """Paired bootstrap over questions (the same resample for both policies)."""
    n = right_a.size
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, (BOOT, n))
    d = right_a.astype(float) - right_b.astype(float)
    diffs = d[idx].mean(axis=1)
    ca, cb = cost_a[idx].sum(axis=1), cost_b[idx].sum(axis=1)
    ratios = np.divide(ca, cb, out=np.zeros_like(ca), where=cb > 0)
    total_b = float(cost_b.sum())
    return Paired(float(d.mean()), float(np.quantile(diffs, 0.025)), float(np.quantile(diffs, 0.975)),
                  float(cost_a.sum() / total_b) if total_b else 0.0,
                  float(np.quantile(ratios, 0.025)), float(np.quantile(ratios, 0.975)))  # fmt: skip
