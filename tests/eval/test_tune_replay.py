"""`panel tune` on the recorded dev files (skipped when ../shared/data/replay is absent; set
PANEL_REPLAY_DIR to point elsewhere). Asserts what holds by construction or by a wide margin; the
figures themselves are in bench/RESULTS.md with their commands."""

from __future__ import annotations

from pathlib import Path

import pytest

from evaluation import stats, tune_cli
from evaluation.policy import load_any

pytestmark = pytest.mark.replay
REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name", ["mmlu_train.jsonl", "medmcqa_train.jsonl", "gsm8k_train.jsonl"])
def test_tuned_policies_are_never_significantly_dominated_and_cost_less_than_the_strongest(replay_dir: Path, name: str) -> None:
    res = tune_cli.run(replay_dir / name, k=5)
    for o in res.references:  # a single model more accurate AND cheaper: only ever by a difference inside the noise
        if o.name.startswith("single:") and o.accuracy > res.tuned.accuracy and o.mean_cost < res.tuned.mean_cost:
            assert stats.paired(o.right, res.tuned.right, o.cost, res.tuned.cost).low <= 0, o.name
    assert res.tuned.mean_cost < res.strongest.mean_cost  # a signal exists on these files: it is used
    assert res.tuned.accuracy >= res.strongest.accuracy - 0.03  # inside the noise of ~300 questions
    assert res.hindsight is not None and res.hindsight.train_cost <= res.tuned.mean_cost * (1 + 1e-9)


def test_a_file_without_confidence_gets_no_logprob_stage(replay_dir: Path) -> None:
    res = tune_cli.run(replay_dir / "winogrande_routerbench.jsonl", k=5)
    assert all("logprob" not in p for p in res.fold_policies)
    assert all(s.accept.check in ("agreement", "always") for s in res.final.spec.stages)


def test_the_shipped_tuned_policies_load_as_cascades() -> None:
    files = sorted((REPO / "policies" / "eval").glob("tuned-*.yaml"))
    assert len(files) == 5
    for f in files:
        (p,) = load_any(str(f))
        assert p.spec.stages  # type: ignore[union-attr]
        assert "Written by `panel tune ../shared/data/replay/" in f.read_text()
