"""A replay file whose rows do not all record the same models (a model added late, a failed
record), a tuned policy given by name, and costs from tokens at the price list: `panel tune` and
`panel eval` work on the rows they can replay and say what they left out."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from evaluation import matrix
from evaluation.policy import CascadePolicy, load_any
from evaluation.replay import ReplayFormatError, load, models_in

MODELS = ("small", "mid", "large")


def line(i: int, models: tuple[str, ...] = MODELS, **fields: Any) -> bytes:
    rec = {"answer": "A", "text": "A", "correct": True, "tokens_in": 100, "tokens_out": 1, "cost_usd": 1e-5, "conf": -0.1}
    return orjson.dumps({"id": f"q{i}", "task": "t", "kind": "choice", "messages": [{"role": "user", "content": "?"}],
                         "gold": "A", "models": {m: {**rec, **fields} for m in models}})  # fmt: skip


def write(tmp_path: Path, lines: list[bytes]) -> Path:
    f = tmp_path / "ragged.jsonl"
    f.write_bytes(b"\n".join(lines) + b"\n")
    return f


def test_rows_without_a_models_record_are_left_out_and_said(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    lines = [line(i) for i in range(20)]
    lines[4] = line(4, ("small", "large"))  # line 5 lacks `mid`
    rows = load(write(tmp_path, lines))
    assert len(rows) == 19 and "q4" not in {r.id for r in rows} and models_in(rows) == sorted(MODELS)
    err = capsys.readouterr().err
    assert "1 of 20 rows left out" in err and "line 5: mid" in err


def test_a_model_recorded_in_few_rows_is_left_out_not_the_rows(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    lines = [line(i, (*MODELS, "late") if i < 3 else MODELS) for i in range(20)]
    rows = load(write(tmp_path, lines))
    assert len(rows) == 20 and models_in(rows) == sorted(MODELS)
    assert "late (3 rows)" in capsys.readouterr().err


def test_too_few_complete_rows_is_an_error_naming_file_and_line(tmp_path: Path) -> None:
    ten = tuple(f"m{k}" for k in range(10))  # each in 90% of rows, so kept; but 12 rows lack one
    lines = [line(i, tuple(m for k, m in enumerate(ten) if not (i < 12 and k == i % 10))) for i in range(20)]
    with pytest.raises(ReplayFormatError, match=r"ragged.jsonl: only 8 of 20 rows .*line 1: m0; line 2: m1"):
        load(write(tmp_path, lines))


def test_a_complete_file_loads_unchanged(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert len(load(write(tmp_path, [line(i) for i in range(5)]))) == 5 and capsys.readouterr().err == ""


def test_costs_from_tokens_at_the_price_list_are_usd_not_calls(tmp_path: Path) -> None:
    lines = [line(i) for i in range(4)] + [line(4, cost_usd=None)]
    rows = load(write(tmp_path, lines))
    prices = {m: (0.1, 0.1) for m in MODELS}
    m = matrix.build(rows, prices)
    assert m.unit == "USD" and m.cost[4, 0] == pytest.approx(100 * 0.1 / 1e6 + 1 * 0.1 / 1e6)
    assert matrix.build(rows, {"small": (0.1, 0.1)}).unit == "calls"  # `mid` has no price: its cost on q4 is unknown


def test_a_tuned_policy_loads_by_name_as_by_path() -> None:
    (by_name,) = load_any("tuned-medmcqa")
    (by_path,) = load_any(str(Path(__file__).parents[2] / "policies" / "eval" / "tuned-medmcqa.yaml"))
    assert isinstance(by_name, CascadePolicy) and by_name.spec == by_path.spec
