"""The quorum chord modelled on recorded rows, without a fleet: to search policies and to bound
what any policy can reach on a file. The fleet run (`fleet_run.py`) is the measurement; this is
the model used to choose what to measure and to say why a goal is out of reach.

It follows `vote.lua`: parallel sends every member and decides at the first answer that brings a
key to the quorum (members not back by then are cancelled and charged their input tokens, as the
fleet charges an in-flight cancel); staged sends `quorum` members, then one more per disagreement;
every member voted without quorum and at least two answers -> one arbiter call, which answers as
the simulator's arbiter does (its own recorded answer; `sim/arbiter.py`). Arbiter cost: the
arbiter prompt's characters / 4 input tokens (what the simulator bills) and `ARBITER_TOKENS_OUT` (both in reference.py, with `vote_key` and `arbiter_cost`).
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

from evaluation.reference import Prices, Score, arbiter_cost, recorded_cost, vote_key
from evaluation.replay import Row, credit, is_correct


@dataclass(frozen=True)
class PanelShape:
    members: tuple[str, ...]
    quorum: int
    dispatch: str  # "parallel" | "staged"
    arbiter: str | None  # None: a split is not arbitrated (a cascade stage that escalates instead)

    @property
    def name(self) -> str:
        return f"{self.dispatch}:{'+'.join(self.members)}/q{self.quorum}>{self.arbiter}"


@dataclass(frozen=True)
class Decision:
    answer: str | None
    cost_usd: float
    calls: int
    arbiter: bool
    early_exit: bool
    latency_ms: float
    winner: str | None = None  # the model whose answer was taken (the judge's when it decided)
    quorum_reached: bool = False  # members agreed without the arbiter: a cascade's `agreement` check


def cancelled_cost(row: Row, model: str, prices: Prices) -> float:
    p_in, _ = prices.get(model, (0.0, 0.0))
    return (row.models[model].tokens_in or 0) * p_in / 1e6


def decide(row: Row, shape: PanelShape, prices: Prices) -> Decision:
    """One question under one panel shape, as the fleet would decide it."""
    if shape.dispatch == "parallel":
        return _parallel(row, shape, prices)
    return _staged(row, shape, prices)


def _parallel(row: Row, shape: PanelShape, prices: Prices) -> Decision:
    order = sorted(shape.members, key=lambda m: row.models[m].latency_ms or 0.0)
    tally: Counter[str] = Counter()
    cost = 0.0
    for i, m in enumerate(order):
        cost += recorded_cost(row, m, prices.get(m))[0]
        key = vote_key(row.kind, row.models[m].answer)
        if key is not None:
            tally[key] += 1
            if tally[key] >= shape.quorum:
                late = order[i + 1 :]
                cost += sum(cancelled_cost(row, x, prices) for x in late)
                winner = next(x for x in order if vote_key(row.kind, row.models[x].answer) == key)
                return Decision(row.models[m].answer, cost, len(order), False, bool(late),
                                row.models[m].latency_ms or 0.0, winner, True)  # fmt: skip
    slowest = max(row.models[m].latency_ms or 0.0 for m in order)
    return _exhausted(row, shape, prices, list(order), tally, cost, slowest)


def _staged(row: Row, shape: PanelShape, prices: Prices) -> Decision:
    tally: Counter[str] = Counter()
    cost = latency = 0.0
    sent = 0
    stage = list(shape.members[: shape.quorum])
    while stage:
        sent += len(stage)
        latency += max(row.models[m].latency_ms or 0.0 for m in stage)
        for m in stage:
            cost += recorded_cost(row, m, prices.get(m))[0]
            key = vote_key(row.kind, row.models[m].answer)
            if key is not None:
                tally[key] += 1
        top = tally.most_common(1)
        if top and top[0][1] >= shape.quorum:
            winner = next(m for m in shape.members[:sent] if vote_key(row.kind, row.models[m].answer) == top[0][0])
            return Decision(row.models[winner].answer, cost, sent, False, sent < len(shape.members), latency,
                            winner, True)  # fmt: skip
        stage = list(shape.members[sent : sent + 1])
    return _exhausted(row, shape, prices, list(shape.members), tally, cost, latency)


def _exhausted(row: Row, shape: PanelShape, prices: Prices, answered: list[str], tally: Counter[str],
               cost: float, latency: float) -> Decision:  # fmt: skip
    if len(tally) <= 1 or shape.arbiter is None:  # nothing to arbitrate, or no arbiter: plurality
        top = tally.most_common(1)[0][0] if tally else None
        winner = next((m for m in answered if vote_key(row.kind, row.models[m].answer) == top), answered[0])
        return Decision(row.models[winner].answer, cost, len(answered), False, False, latency, winner)
    cost += arbiter_cost(row, shape.arbiter, answered, prices)
    judge = row.models[shape.arbiter]
    return Decision(judge.answer, cost, len(answered) + 1, True, False, latency + (judge.latency_ms or 0.0),
                    shape.arbiter)  # fmt: skip


def score(rows: list[Row], shape: PanelShape, prices: Prices) -> Score:
    s = Score(f"model:{shape.name}", "model")
    for r in rows:
        d = decide(r, shape, prices)
        s.questions += 1
        s.correct += credit(r, d.winner) if d.winner else is_correct(r.kind, d.answer, r.gold)
        s.cost_usd += d.cost_usd
        s.calls += d.calls
        s.arbiter_calls += d.arbiter
        s.early_exits += d.early_exit
        s.latencies_ms.append(d.latency_ms)
    return s


def shapes(models: list[str], max_members: int = 3) -> Iterator[PanelShape]:
    """Every panel of 2..max_members distinct members (order matters when staged), quorum 2, each
    dispatch, each arbiter."""
    for n in range(2, max_members + 1):
        for members in itertools.permutations(models, n):
            for arbiter in models:
                yield PanelShape(members, 2, "staged", arbiter)
                if list(members) == sorted(members):  # order does not matter in parallel
                    yield PanelShape(members, 2, "parallel", arbiter)


def oracle_bound(rows: list[Row], budget_usd: float, prices: Prices) -> float:
    """The accuracy of an oracle that, per question, calls only the cheapest model whose recorded
    answer is right, spending at most `budget_usd` per question on average. No policy that takes
    its answer from one of these models' calls can beat it; real policies do not know which
    answer is right, which is what the gap to the searched panels measures."""
    cheapest_right = sorted(
        min(recorded_cost(r, m, prices.get(m))[0] for m in right)
        for r in rows
        if (right := [m for m in r.models if is_correct(r.kind, r.models[m].answer, r.gold)])
    )
    spend, correct = budget_usd * len(rows), 0
    for cost in cheapest_right:
        if cost > spend:
            break
        spend -= cost
        correct += 1
    return correct / len(rows)
