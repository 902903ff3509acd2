"""The offline chord model follows vote.lua: staged sends the quorum's worth first and one more per
disagreement, parallel decides at the first answer that makes a quorum and charges stragglers their
input tokens, an all-different panel pays one arbiter that answers with its recorded answer."""

from __future__ import annotations

import pytest

from evaluation import offline
from evaluation.replay import Recorded, Row


def rec(answer: str | None, latency: float, cost: float = 1e-4, tokens_in: int = 100) -> Recorded:
    return Recorded(answer, answer, None, tokens_in, 1, cost, latency)


def row(a: str, b: str, c: str, judge: str = "C", gold: str = "C") -> Row:
    models = {"a": rec(a, 100), "b": rec(b, 200), "c": rec(c, 900), "j": rec(judge, 300)}
    return Row("q", "choice", [{"role": "user", "content": "x" * 400}], gold, models)


PRICES = {m: (1.0, 1.0) for m in "abcj"}
STAGED = offline.PanelShape(("a", "b", "c"), 2, "staged", "j")
PARALLEL = offline.PanelShape(("a", "b", "c"), 2, "parallel", "j")


def test_staged_pair_that_agrees_never_calls_the_third() -> None:
    d = offline.decide(row("A", "A", "B"), STAGED, PRICES)
    assert (d.answer, d.calls, d.early_exit, d.arbiter) == ("A", 2, True, False)
    assert d.cost_usd == pytest.approx(2e-4) and d.latency_ms == 200


def test_staged_disagreement_sends_the_third_then_the_arbiter() -> None:
    settled = offline.decide(row("A", "B", "B"), STAGED, PRICES)
    assert (settled.answer, settled.calls, settled.early_exit) == ("B", 3, False)
    assert settled.latency_ms == 200 + 900
    split = offline.decide(row("A", "B", "D"), STAGED, PRICES)
    assert (split.answer, split.calls, split.arbiter) == ("C", 4, True)
    assert split.cost_usd == pytest.approx(3e-4 + offline.arbiter_cost(row("A", "B", "D"), "j", ["a", "b", "c"], PRICES))


def test_parallel_decides_at_the_quorum_and_charges_the_straggler_its_input() -> None:
    d = offline.decide(row("A", "A", "B"), PARALLEL, PRICES)
    assert (d.answer, d.early_exit, d.latency_ms) == ("A", True, 200)
    assert d.cost_usd == pytest.approx(2e-4 + 100 / 1e6)


def test_no_usable_answers_leave_nothing_to_arbitrate() -> None:
    d = offline.decide(row("A", None, None), STAGED, PRICES)  # type: ignore[arg-type]
    assert (d.answer, d.arbiter) == ("A", False)


def test_oracle_bound_buys_the_cheapest_right_answer_within_budget() -> None:
    rows = [row("C", "A", "A"), row("A", "C", "A"), row("A", "A", "A", judge="A")]
    assert offline.oracle_bound(rows, 1e-4, PRICES) == pytest.approx(2 / 3)  # third: nobody right
    assert offline.oracle_bound(rows, 0.5e-4, PRICES) == pytest.approx(1 / 3)  # budget for one call of two
