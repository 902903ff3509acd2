"""`panel eval` end to end through a real fleet (redis-server, the simulator, Celery workers): on a
small synthetic file in the replay format with models the registry has never heard of, and on the
first rows of the real replay files (skipped when ../shared is absent)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from evaluation import offline
from evaluation.fleet_run import prices_near
from evaluation.main import evaluate
from evaluation.replay import load
from tests.eval import synthetic

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]


def policy(path: Path, **fields: object) -> str:
    path.write_text("\n".join(f"{k}: {orjson.dumps(v).decode()}" for k, v in fields.items()) + "\n")
    return str(path)


def test_panel_eval_runs_any_replay_file_and_scores_each_decision(tmp_path: Path) -> None:
    data = synthetic.write(tmp_path / "synthetic.jsonl")
    (tmp_path / "models.csv").write_text("name,price_in_usd_per_1m,price_out_usd_per_1m\n"
                                         f"{synthetic.JUDGE},2.0,8.0\n")  # fmt: skip
    staged = policy(tmp_path / "staged.yaml", name="staged3", members=list(synthetic.MEMBERS), quorum=2,
                    dispatch="staged", arbiter=synthetic.JUDGE)  # fmt: skip
    single = policy(tmp_path / "single.yaml", name="judge-alone", lane="single", model=synthetic.JUDGE)
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "producer", "eval", str(data), "--policy", staged, "--policy", single,
                           "--out", str(out)], cwd=REPO, capture_output=True, text=True, timeout=240)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = orjson.loads((out / "eval-synthetic.json").read_bytes())
    assert (out / "eval-synthetic.png").read_bytes()[:4] == b"\x89PNG"
    by_name = {p["policy"]: p for p in report["policies"]}

    # agree (2 calls), agree on a wrong answer (2), 2-1 settled by the third (3), split -> judge (3 + 1)
    panel = by_name["staged3"]
    assert panel["failed"] == 0 and panel["arbiter_fallbacks"] == 0
    assert panel["accuracy"] == 0.75 and panel["calls_per_question"] == 2.75
    assert panel["early_exit_rate"] == 0.5 and panel["arbiter_rate"] == 0.25
    members_cost = (1e-5 + 2e-5) * 2 + (1e-5 + 2e-5 + 3e-5) * 2  # recorded cost_usd of every member that answered
    arbiter_cost = panel["cost_usd"] - members_cost
    assert 200 * 2e-6 < arbiter_cost < 1000 * 2e-6  # priced from models.csv: a few hundred tokens at 2 USD per 1M

    alone = by_name["judge-alone"]
    assert alone["accuracy"] == 1.0 and alone["calls_per_question"] == 1.0
    assert alone["cost_usd"] == pytest.approx(4 * 4e-5) == by_name[f"single:{synthetic.JUDGE}"]["cost_usd"]
    assert report["strongest"] == f"strongest={synthetic.JUDGE}"
    assert "staged3" in proc.stdout and "NOT reached" in proc.stdout


def test_panel_eval_on_real_replay_rows_matches_the_offline_chord(replay_dir: Path, tmp_path: Path) -> None:
    """The fleet's staged decisions equal the offline model's, question by question in aggregate:
    same accuracy, same calls; single lane reproduces the recorded model exactly."""
    for name, n in (("mmlu_train.jsonl", 24), ("gsm8k_train.jsonl", 12)):
        file = replay_dir / name
        rows = load(file)[:n]
        shape = offline.PanelShape(("llama3.2-3b", "llama3.1-8b", "llama3.1-70b"), 2, "staged", "llama3.1-70b")
        expected = offline.score(rows, shape, prices_near(file))
        summary = evaluate(file, ["cheap-staged"], tmp_path / name, latency_scale=0.05, limit=n)
        report = orjson.loads((tmp_path / name / f"eval-{name.split('.')[0]}.json").read_bytes())
        fleet = next(p for p in report["policies"] if p["policy"] == "cheap-staged")
        assert fleet["failed"] == 0 and fleet["arbiter_fallbacks"] == 0, (name, fleet)
        assert fleet["accuracy"] == round(expected.accuracy, 4), (name, fleet, expected.as_dict())
        assert fleet["calls_per_question"] == pytest.approx(expected.calls / n), name
        assert fleet["arbiter_rate"] == pytest.approx(expected.arbiter_calls / n), name
        assert summary["rows"] == n


def test_a_cascade_policy_runs_through_the_fleet_and_matches_its_offline_replay(replay_dir: Path, tmp_path: Path) -> None:
    """`panel eval --policy tuned-mmlu.yaml` (a tasks.yaml entry with `cascade:` stages) runs on the
    fleet's cascade lane: same accuracy and calls as the offline replay of the same stages, and the
    rows do not all stop at one stage (the gates were exercised)."""
    from evaluation.cascade import run_row
    from evaluation.policy import load_any
    from evaluation.replay import is_correct

    name, n = "mmlu_train.jsonl", 30
    file = replay_dir / name
    rows = load(file)[:n]
    [cascade] = load_any(str(REPO / "policies" / "eval" / "tuned-mmlu.yaml"))
    decisions = [run_row(r, cascade.spec, prices_near(file)) for r in rows]  # type: ignore[union-attr]
    expected_correct = sum(is_correct(r.kind, d.answer, r.gold) for r, d in zip(rows, decisions, strict=True))
    assert len({d.stage for d in decisions}) > 1, "every row stopped at one stage: pick more rows"
    summary = evaluate(file, [str(REPO / "policies" / "eval" / "tuned-mmlu.yaml")], tmp_path, latency_scale=0.05, limit=n)
    report = orjson.loads((tmp_path / f"eval-{name.split('.')[0]}.json").read_bytes())
    # no panel among the policies: Fusion-style of the three most accurate models, both forms, as --offline
    assert sum(p["policy"].startswith(("fusion:judge-always:", "fusion:majority-first:")) for p in report["policies"]) == 2
    ratios = summary["ratios"]
    assert summary["goals_reached"] == {"strongest": ratios["accuracy_vs_strongest"] >= 0.99 and ratios["cost_vs_strongest"] <= 0.5}
    fleet = next(p for p in report["policies"] if p["policy"] == "multiple_choice")
    assert fleet["failed"] == 0, fleet
    assert fleet["accuracy"] == round(expected_correct / n, 4), (fleet, expected_correct)
    assert fleet["calls_per_question"] == pytest.approx(sum(d.calls for d in decisions) / n)
    assert fleet["arbiter_rate"] == 0  # logprob stages only: no panel, no judge


def test_a_file_without_costs_gets_the_same_verdict_through_the_fleet_as_offline(tmp_path: Path) -> None:
    """No cost_usd and no tokens anywhere (as ZeroEval): --offline compares calls; the fleet path
    gave no verdict ('unknown (no costs)') for the same policy on the same rows."""
    lines = []
    for q in synthetic.QUESTIONS:
        r = synthetic.row(q)
        for rec in r["models"].values():
            rec.update(cost_usd=None, tokens_in=None, tokens_out=None)
        lines.append(orjson.dumps(r))
    data = tmp_path / "costless.jsonl"
    data.write_bytes(b"\n".join(lines) + b"\n")
    single = policy(tmp_path / "single.yaml", name="judge-alone", lane="single", model=synthetic.JUDGE)
    offline_summary = evaluate(data, [single], tmp_path / "offline", offline=True)
    fleet_summary = evaluate(data, [single], tmp_path / "fleet", latency_scale=0.05)
    assert offline_summary["goal_reached"] is False  # the strongest model itself: 1.0x its calls
    assert fleet_summary["goals_reached"] == {"strongest": offline_summary["goal_reached"]}
    assert offline_summary["unit"] == fleet_summary["unit"] == "calls"
