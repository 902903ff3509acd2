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


def test_a_policy_tuned_on_one_half_is_evaluated_on_the_other_where_its_model_is_rarer(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    """`late` is in 90% of one half's rows (kept there, so panel tune may choose it) and 85% of
    the other's (under the share): panel eval of that policy on the other half keeps `late` for
    the policy that names it, with the rows that record it, rather than refusing the policy."""
    from evaluation.main import evaluate

    lines = [line(i, MODELS + (() if i in (0, 1, 2) else ("late",))) for i in range(20)]
    half = write(tmp_path, lines)
    policy = tmp_path / "tuned.yaml"
    policy.write_text("task_classes:\n  tuned:\n    default_lane: cascade\n    cascade:\n      stages:\n"
                      "        - {model: small, accept: {check: logprob, min: -0.2}}\n        - model: late\n")  # fmt: skip
    summary = evaluate(half, [str(policy)], tmp_path / "out", offline=True)
    assert summary["rows"] == 17 and "3 of 20 rows left out" in capsys.readouterr().err
    rows = load(half)  # no policy naming `late`: the share alone, every row
    assert len(rows) == 20 and "late" not in models_in(rows)


def test_a_label_export_keeps_its_rows_and_leaves_out_the_models_a_policy_did_not_always_call(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    """In a ledger export a later cascade stage is missing exactly where the first stage was sure:
    leaving those rows out would hide them from `panel tune`, so the model goes, not the rows."""
    lines = [line(i, MODELS if i else ("small", "mid")) for i in range(20)]  # `large` ran on 19 of 20
    assert len(load(write(tmp_path, lines))) == 19  # a recorded benchmark: a missing record is a gap
    ledger = [orjson.dumps({**orjson.loads(x), "source": "ledger"}) for x in lines]
    rows = load(write(tmp_path, ledger))
    assert len(rows) == 20 and models_in(rows) == ["mid", "small"]
    assert "models in < 100% of rows left out: large (19 rows)" in capsys.readouterr().err
