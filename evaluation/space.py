"""The search space of `panel tune`, scored on one matrix at a time: every cascade of 1-3 stages
(a model gated by its log-probability, two models gated by their agreement, then a last model or
panel) and every panel of three (members, order, staged or parallel dispatch, quorum 2, arbiter).
With `confirms`: also a gated model, then one more model accepted when it gives the same answer
(`agrees_previous`: one call, where a pair pays two), then the last.

Scoring is vectorised per family: a stage is arrays over its variants (thresholds) x questions;
a chain broadcasts its stages' variants, so one numpy pass scores every threshold combination.
Thresholds come from the scored matrix's own log-probabilities (its quantiles), so scoring a
training fold never looks at a test row. `Space.spec(i)` turns candidate i back into a
`CascadeSpec` (a plain panel is a one-stage cascade with an arbiter).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from evaluation.cascade import Accept, CascadeSpec, Stage, StagePanel
from evaluation.matrix import NO_KEY, Matrix

ACCEPT_RATES = np.round(np.arange(0.05, 0.951, 0.05), 2)  # share of questions a gate lets through
MAX_SEARCH_MODELS = 10  # files with more models: the most accurate ones (and the cheapest few)
PANEL_MODELS = 5  # panels of three draw members and arbiter from the most accurate five
LAST_MODELS = 1  # a cascade escalates to the most accurate model (fewer free choices: it transfers)


@dataclass
class StageArr:
    """One stage's variants: accept/right/cost [V, n]; `make(v)` builds variant v's Stage."""

    models: frozenset[str]
    accept: np.ndarray
    right: np.ndarray
    cost: np.ndarray
    make: Callable[[int, bool], Stage]  # (variant, is_last) -> Stage
    gated: bool  # has a threshold axis (smoothed in selection)


@dataclass
class Space:
    """Every candidate's correct count, smoothed correct count, cost sum and stage count."""

    n: int
    correct: list[np.ndarray] = field(default_factory=list)
    smooth: list[np.ndarray] = field(default_factory=list)
    cost: list[np.ndarray] = field(default_factory=list)
    stages: list[int] = field(default_factory=list)
    chains: list[tuple[StageArr, ...]] = field(default_factory=list)
    reference: np.ndarray | None = None  # bool [n]: the strongest model's right answers, to pair against
    wins: list[np.ndarray] = field(default_factory=list)  # questions right where the reference is wrong
    losses: list[np.ndarray] = field(default_factory=list)  # and the other way round

    def paired(self) -> tuple[np.ndarray, np.ndarray]:
        """(wins, losses) against the reference over all candidates, in candidate order."""
        return np.concatenate([w.ravel() for w in self.wins]), np.concatenate([x.ravel() for x in self.losses])

    def flat(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(correct, smoothed correct, cost, stages) over all candidates, in candidate order."""
        st = [np.full(c.size, s) for c, s in zip(self.correct, self.stages, strict=True)]
        cat = np.concatenate
        return (cat([c.ravel() for c in self.correct]), cat([c.ravel() for c in self.smooth]),
                cat([c.ravel() for c in self.cost]), cat(st))  # fmt: skip

    def spec(self, i: int) -> CascadeSpec:
        for block, chain in zip(self.correct, self.chains, strict=True):
            if i < block.size:
                idx = np.unravel_index(i, block.shape)
                last = len(chain) - 1
                return CascadeSpec(stages=[s.make(int(v), k == last) for k, (s, v) in enumerate(zip(chain, idx, strict=True))])
            i -= block.size
        raise IndexError(i)

    def rows(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per question right [len(idx), n] and cost of candidates `idx` (each block's chain scored
        again, once): what `correct` and `cost` sum, for selections that need the rows."""
        right, cost = np.zeros((len(idx), self.n), bool), np.zeros((len(idx), self.n))
        starts = np.concatenate([[0], np.cumsum([b.size for b in self.correct])])
        block = np.searchsorted(starts, idx, side="right") - 1
        for b in np.unique(block):
            sel = np.flatnonzero(block == b)
            r, c = _chain(self.chains[b])
            right[sel], cost[sel] = r.reshape(-1, self.n)[idx[sel] - starts[b]], c.reshape(-1, self.n)[idx[sel] - starts[b]]
        return right, cost

    def add(self, chain: tuple[StageArr, ...]) -> None:
        right, cost = _chain(chain)
        correct, total = right.sum(axis=-1), cost.sum(axis=-1)
        smooth = correct.astype(float)
        for axis, s in enumerate(chain):
            if s.gated and smooth.shape[axis] > 2:
                smooth = _neighbour_mean(smooth, axis)
        if self.reference is not None:
            self.wins.append((right & ~self.reference).sum(axis=-1))
            self.losses.append((~right & self.reference).sum(axis=-1))
        self.correct.append(correct)
        self.smooth.append(smooth)
        self.cost.append(total)
        self.stages.append(len(chain))
        self.chains.append(chain)


def _chain(chain: tuple[StageArr, ...]) -> tuple[np.ndarray, np.ndarray]:
    """right/cost of a chain, broadcast over every stage's variants: shape [V1, ..., Vk, n]."""
    k = len(chain)

    def at(a: np.ndarray, pos: int) -> np.ndarray:
        shape = [1] * k + [a.shape[-1]]
        shape[pos] = a.shape[0]
        return a.reshape(shape)

    right = at(chain[-1].right, k - 1).astype(bool)
    cost = at(chain[-1].cost, k - 1)
    for pos in range(k - 2, -1, -1):
        s = chain[pos]
        acc = at(s.accept, pos)
        right = np.where(acc, at(s.right, pos), right)
        cost = at(s.cost, pos) + np.where(acc, 0.0, cost)
    return right, cost


def _neighbour_mean(a: np.ndarray, axis: int) -> np.ndarray:
    """Mean over each threshold and its two neighbours: a threshold that is good only on its own
    (a spike of luck on the training rows) scores as its neighbourhood does."""
    pad = np.concatenate([a.take([0], axis=axis), a, a.take([-1], axis=axis)], axis=axis)
    n = a.shape[axis]
    total: np.ndarray = pad.take(range(0, n), axis=axis) + pad.take(range(1, n + 1), axis=axis) + pad.take(range(2, n + 2), axis=axis)
    return np.divide(total, 3.0)


def _agree(m: Matrix, a: int, b: int) -> np.ndarray:
    return (m.key[:, a] == m.key[:, b]) & (m.key[:, a] != NO_KEY)


def single(m: Matrix, name: str) -> StageArr:
    j = m.col(name)
    return StageArr(frozenset([name]), np.ones((1, m.n), bool), m.right[None, :, j], m.cost[None, :, j],
                    lambda v, last: Stage(model=name), False)  # fmt: skip


def gate(m: Matrix, name: str, fit: Matrix | None = None, rates: np.ndarray = ACCEPT_RATES) -> StageArr:
    """`name` accepted when its log-probability >= a threshold: one variant per accept rate, the
    thresholds taken from `fit`'s rows (default: `m`'s own) and applied to `m`'s."""
    j = m.col(name)
    conf = m.conf[:, j]
    fitted = (fit or m).conf[:, j]
    seen = fitted[~np.isnan(fitted)]
    mins = np.quantile(seen, 1 - rates) if seen.size else np.zeros(len(rates))
    mins = np.minimum(np.floor(mins * 1e6) / 1e6, 0.0)  # round down: every training row at the quantile stays accepted
    accept = np.nan_to_num(conf, nan=-np.inf)[None, :] >= mins[:, None]
    v = len(mins)
    return StageArr(frozenset([name]), accept, np.repeat(m.right[None, :, j], v, 0), np.repeat(m.cost[None, :, j], v, 0),
                    lambda i, last: Stage(model=name, accept=Accept(check="logprob", min=float(mins[i]))), True)  # fmt: skip


def pair(m: Matrix, a: str, b: str, agreement: dict[str, object]) -> StageArr:
    """Two models asked together, accepted when they agree (quorum 2 of 2, no arbiter)."""
    ia, ib = m.col(a), m.col(b)
    panel = StagePanel(members=[a, b], quorum=2, dispatch="parallel", agreement=agreement)
    return StageArr(frozenset([a, b]), _agree(m, ia, ib)[None], m.right[None, :, ia], (m.cost[:, ia] + m.cost[:, ib])[None],
                    lambda v, last: Stage(panel=panel, accept=Accept(check="agreement")), False)  # fmt: skip


def confirm(m: Matrix, first: str, name: str) -> StageArr:
    """`name` asked only when the stage before (a gated `first`) did not accept, accepted when it
    gives the same answer as `first` (check `agrees_previous`): one call, not a pair's two."""
    ia, ib = m.col(first), m.col(name)
    return StageArr(frozenset([name]), _agree(m, ia, ib)[None], m.right[None, :, ib], m.cost[None, :, ib],
                    lambda v, last: Stage(model=name, accept=Accept(check="agrees_previous")), False)  # fmt: skip


def panel3(m: Matrix, members: tuple[str, str, str], judge: str, dispatch: str, agreement: dict[str, object]) -> StageArr:
    """Three members, quorum 2, `dispatch`, the judge on a three-way split (a last stage). Staged:
    two first, the third only on their disagreement; parallel: all three always paid (an upper
    bound: the fleet cancels a straggler and pays its input only)."""
    a, b, c = (m.col(x) for x in members)
    j = m.col(judge)
    ab, ac, bc = _agree(m, a, b), _agree(m, a, c), _agree(m, b, c)
    answered = (m.key[:, [a, b, c]] != NO_KEY).sum(axis=1)
    split = ~(ab | ac | bc) & (answered >= 2)
    fallback = np.where(m.key[:, a] != NO_KEY, m.right[:, a], np.where(m.key[:, b] != NO_KEY, m.right[:, b], m.right[:, c]))
    right = np.where(ab | ac, m.right[:, a], np.where(bc, m.right[:, b], np.where(split, m.right[:, j], fallback)))
    third = m.cost[:, c] if dispatch == "parallel" else np.where(ab, 0.0, m.cost[:, c])
    cost = m.cost[:, a] + m.cost[:, b] + third + np.where(split, m.judge[:, j], 0.0)
    panel = StagePanel(members=list(members), quorum=2, dispatch=dispatch, agreement=agreement, arbiter=judge)  # type: ignore[arg-type]
    return StageArr(frozenset([*members, judge]), np.ones((1, m.n), bool), right[None], cost[None],
                    lambda v, last: Stage(panel=panel), False)  # fmt: skip


def ranked(m: Matrix) -> list[str]:
    """Models by accuracy on `m`'s rows (cheaper first on a tie)."""
    acc, cost = m.right.mean(axis=0), m.cost.mean(axis=0)
    return [m.models[i] for i in np.lexsort((cost, -acc))]


def search_models(m: Matrix) -> list[str]:
    if len(m.models) <= MAX_SEARCH_MODELS:
        return list(m.models)
    acc, cost = m.right.mean(axis=0), m.cost.mean(axis=0)
    top = [m.models[i] for i in np.argsort(-acc, kind="stable")[: MAX_SEARCH_MODELS - 3]]
    cheap = [m.models[i] for i in np.argsort(cost, kind="stable") if m.models[i] not in top][:3]
    return top + cheap


def build(m: Matrix, agreement: dict[str, object], max_stages: int = 3, fit: Matrix | None = None,
          rates: np.ndarray = ACCEPT_RATES, last_models: list[str] | None = None, confirms: bool = False) -> Space:  # fmt: skip
    """Score the whole space on `m` (one fold's training rows, or a whole file in hindsight).
    With `fit`: the models searched and the thresholds come from `fit`'s rows, the scores from
    `m`'s (an inner validation fold), so candidate i is the same policy shape for every `m`.
    `rates`: the gates' accept rates; `last_models`: the cascades' last-stage models (default: the most
    accurate of `fit`'s rows)."""
    base = fit or m
    space = Space(m.n, reference=m.right[:, m.col(ranked(base)[0])].copy())
    names = search_models(base)
    names += [x for x in last_models or [] if x not in names]
    singles = {x: single(m, x) for x in names}
    gates = {x: gate(m, x, fit, rates) for x in names if base.has_conf(x)}
    pairs = {p: pair(m, *p, agreement) for p in itertools.combinations(names, 2)}
    strong = [x for x in ranked(base) if x in names][:PANEL_MODELS]
    for s in singles.values():
        space.add((s,))
    for members in itertools.permutations(strong, 3):
        for judge in strong:
            space.add((panel3(m, members, judge, "staged", agreement),))
            if list(members) == sorted(members):
                space.add((panel3(m, members, judge, "parallel", agreement),))
    firsts = [*gates.values(), *pairs.values()]
    lasts = [singles[x] for x in (last_models or strong[:LAST_MODELS])]
    for f in firsts:
        for last in lasts:
            if not f.models & last.models:
                space.add((f, last))
    if max_stages >= 3 and confirms:
        for a, g in gates.items():  # a gated model, then another confirming its answer, then the last
            for b in names:
                for last in lasts:
                    if b != a and not {a, b} & last.models:
                        space.add((g, confirm(m, a, b), last))
    if max_stages >= 3:
        for f, g in itertools.permutations(firsts, 2):
            if f.models & g.models or (not f.gated and not g.gated):
                continue
            for last in lasts:
                if not (f.models | g.models) & last.models:
                    space.add((f, g, last))
    return space
