"""Reference policies on recorded rows: they reproduce the data README's per-model figures."""

from __future__ import annotations

from pathlib import Path

import pytest

from evaluation import reference
from evaluation.fleet_run import prices_near
from evaluation.policy import load
from evaluation.replay import ReplayFormatError, is_correct, models_in
from evaluation.replay import load as load_rows


def test_single_models_match_the_readme_accuracy_and_cost(replay_dir: Path) -> None:
    rows = load_rows(replay_dir / "mmlu_train.jsonl")
    prices = prices_near(replay_dir / "mmlu_train.jsonl")
    s = reference.single(rows, "qwen2.5-72b-instruct", prices)
    assert s.questions == 285 and round(s.accuracy, 3) == 0.877
    assert s.cost_usd / s.questions == pytest.approx(1.66e-4, rel=0.01)
    best = reference.strongest([reference.single(rows, m, prices) for m in models_in(rows)])
    assert best.name == "strongest=qwen2.5-72b-instruct"


def test_fusion_always_pays_every_member_and_the_judge(replay_dir: Path) -> None:
    rows = load_rows(replay_dir / "mmlu_train.jsonl")[:50]
    members = ["llama3.2-1b", "llama3.1-8b", "gpt-4o-mini"]
    f = reference.fusion(rows, members, "gpt-4o", {})
    expected = sum(r.models[m].cost_usd or 0 for r in rows for m in [*members, "gpt-4o"])
    assert f.cost_usd == pytest.approx(expected) and f.calls == 50 * 4 and f.arbiter_calls == 50


def test_numbers_are_compared_numerically() -> None:
    assert is_correct("number", "16.0", "16") and not is_correct("number", "16.5", "16")
    assert is_correct("choice", "b", "B") and not is_correct("choice", None, "B")


def test_a_file_of_another_shape_is_refused_with_its_line(tmp_path: Path) -> None:
    bad = tmp_path / "x.jsonl"
    bad.write_text('{"id": "1", "kind": "choice"}\n')
    with pytest.raises(ReplayFormatError, match=r"x.jsonl:1"):
        load_rows(bad)


def test_shipped_eval_policies_load() -> None:
    for name in ("panel3-parallel", "cheap-staged", "mixed-staged"):
        assert load(name).lane == "panel"
    with pytest.raises(ValueError, match="no such policy"):
        load("nope")
