"""The contract shared with `panel tune` (CASCADE-SCHEMA.md): the tasks.yaml entry it wrote for
MMLU (policies/eval/tuned-mmlu.yaml) runs on the fleet, the simulator replaying the recorded rows
with their `conf` as log-probabilities, and every job stops at the stage the offline replay of the
same entry (evaluation/cascade.py `run_row`) stops at, with the same answer. Skips without
../shared/data/replay."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from evaluation.cascade import CascadeSpec, run_row
from evaluation.fleet_run import prices_near
from evaluation.replay import load
from producer.client import PanelClient
from producer.fleet import Fleet

REPO = Path(__file__).resolve().parents[2]
ROWS = 40


@pytest.fixture(scope="module")
def mmlu(replay_dir: Path) -> Path:
    return replay_dir / "mmlu_train.jsonl"


@pytest.fixture(scope="module")
def fleet(mmlu: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    policies = tmp_path_factory.mktemp("tuned")
    shutil.copy(REPO / "policies" / "models.yaml", policies / "models.yaml")
    shutil.copy(REPO / "policies" / "eval" / "tuned-mmlu.yaml", policies / "tasks.yaml")
    with Fleet(env={"PANEL_POLICIES": str(policies)}, sim_args=["--replay", str(mmlu)]) as f:
        yield f


def test_the_tuned_entry_stops_where_its_offline_replay_stops(fleet: Fleet, mmlu: Path) -> None:
    entry = yaml.safe_load((REPO / "policies" / "eval" / "tuned-mmlu.yaml").read_text())["task_classes"]["multiple_choice"]
    spec = CascadeSpec.from_entry(entry["cascade"])
    rows = load(mmlu)[:ROWS]
    client = PanelClient(fleet.redis_url)
    try:
        ids = [client.submit({"task_class": "multiple_choice", "messages": r.messages, "id": f"tuned-{r.id}"}) for r in rows]
        results = list(client.wait_many(ids, timeout=120))
    finally:
        client.close()
    by_id = {res.job_id: res for res in results}
    stages_taken = []
    for r in rows:
        res, offline = by_id[f"tuned-{r.id}"], run_row(r, spec, prices_near(mmlu))
        assert res.status == "decided" and res.receipt is not None, res.error
        lanes = res.receipt.lanes
        assert len(lanes) == offline.stage + 1, (r.id, [(s.check, s.value, s.accepted) for s in lanes], offline)
        assert res.answer == r.models[offline.winner].text, r.id  # type: ignore[index]
        for step, stage in zip(lanes, spec.stages, strict=False):
            if stage.accept.check == "logprob":  # the fleet measured what the file recorded
                assert step.value == pytest.approx(r.models[stage.model].conf, abs=1e-9), r.id  # type: ignore[index]
        stages_taken.append(len(lanes))
    assert len(set(stages_taken)) > 1, "every row stopped at the same stage: the gate was not exercised"
