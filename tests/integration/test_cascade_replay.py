"""The contract shared with `panel tune` (CASCADE-SCHEMA.md): the tasks.yaml entries it wrote
(policies/eval/tuned-mmlu.yaml: logprob stages; tuned-gsm8k.yaml: an agreement panel stage) run on
the fleet, the simulator replaying the recorded rows (their `conf` as log-probabilities), and
every job stops at the stage the offline replay of the same entry (evaluation/cascade.py
`run_row`) stops at, with the same answer. Skips without ../shared/data/replay."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
import yaml

from evaluation.cascade import CascadeSpec, run_row
from evaluation.fleet_run import prices_near
from evaluation.offline import vote_key
from evaluation.replay import load
from producer.client import PanelClient
from producer.fleet import Fleet

REPO = Path(__file__).resolve().parents[2]
ROWS = 40


TUNED = {"mmlu_train.jsonl": ("tuned-mmlu.yaml", "multiple_choice"),
         "gsm8k_train.jsonl": ("tuned-gsm8k.yaml", "math_word_problem")}


@pytest.fixture(scope="module")
def fleet(replay_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    policies = tmp_path_factory.mktemp("tuned")
    shutil.copy(REPO / "policies" / "models.yaml", policies / "models.yaml")
    classes = {}
    for policy, _ in TUNED.values():
        classes |= yaml.safe_load((REPO / "policies" / "eval" / policy).read_text())["task_classes"]
    (policies / "tasks.yaml").write_text(yaml.safe_dump({"task_classes": classes}))
    replays = [arg for name in TUNED for arg in ("--replay", str(replay_dir / name))]
    with Fleet(env={"PANEL_POLICIES": str(policies)}, sim_args=replays) as f:
        yield f


@pytest.mark.parametrize("name", sorted(TUNED))
def test_the_tuned_entry_stops_where_its_offline_replay_stops(fleet: Fleet, replay_dir: Path, name: str) -> None:
    policy, task_class = TUNED[name]
    entry = yaml.safe_load((REPO / "policies" / "eval" / policy).read_text())["task_classes"][task_class]
    spec = CascadeSpec.from_entry(entry["cascade"])
    mmlu = replay_dir / name
    rows = load(mmlu)[:ROWS]
    client = PanelClient(fleet.redis_url)
    try:
        ids = [client.submit({"task_class": task_class, "messages": r.messages, "id": f"tuned-{r.id}"}) for r in rows]
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
        # the same answer value (two agreeing members may word it differently; either text may win)
        said = [m for m, rec in r.models.items() if rec.text == res.answer]
        assert said and any(vote_key(r.kind, r.models[m].answer) == vote_key(r.kind, offline.answer) for m in said), r.id
        for step, stage in zip(lanes, spec.stages, strict=False):
            if stage.accept.check == "logprob":  # the fleet measured what the file recorded
                assert step.value == pytest.approx(r.models[stage.model].conf, abs=1e-9), r.id  # type: ignore[index]
        stages_taken.append(len(lanes))
    assert len(set(stages_taken)) > 1, "every row stopped at the same stage: the gate was not exercised"


def test_labelled_cascade_jobs_export_as_the_replay_file_recorded_them(fleet: Fleet, replay_dir: Path,
                                                                      tmp_path: Path) -> None:  # fmt: skip
    """The evidence loop as a user runs it: cascade jobs on the fleet, `panel label --file` with
    each job's truth, `panel label --export`: every exported model's answer and verdict is what the
    replay file recorded for it (a stage that did not conclude the job is not credited with the
    label of the one that did), the messages are the ones sent, and `panel tune` and `panel eval
    --offline` read the file."""
    from evaluation.replay import is_correct
    from producer.cli import main as panel

    policy, task_class = TUNED["mmlu_train.jsonl"]
    rows = load(replay_dir / "mmlu_train.jsonl")[:ROWS]
    client = PanelClient(fleet.redis_url)
    try:
        ids = [client.submit({"task_class": task_class, "messages": r.messages, "id": f"label-{r.id}"}) for r in rows]
        results = {res.job_id: res for res in client.wait_many(ids, timeout=120)}
    finally:
        client.close()
    truth = tmp_path / "labels.jsonl"
    truth.write_bytes(b"".join(orjson.dumps({"job_id": f"label-{r.id}", "label": "correct" if is_correct(
        r.kind, results[f"label-{r.id}"].answer, r.gold) else "wrong"}) + b"\n" for r in rows))  # fmt: skip
    url = ["--redis-url", fleet.redis_url]
    assert panel([*url, "label", "--file", str(truth)]) == 0
    exported = tmp_path / "rows.jsonl"
    assert panel([*url, "label", "--export", str(exported), "--task-class", task_class, "--kind", "choice"]) == 0
    lines = [orjson.loads(x) for x in exported.read_bytes().splitlines()]
    assert len(lines) == ROWS
    recorded = {f"label-{r.id}": r for r in rows}
    escalated_past_agreement = 0
    for line in lines:
        r, res = recorded[line["id"]], results[line["id"]]
        assert line["messages"] == r.messages
        assert res.receipt is not None
        concluded = res.receipt.calls[-1].model  # a single-model cascade: the last call concluded it
        for model, got in line["models"].items():
            assert got["answer"] == r.models[model].answer, (line["id"], model)
            assert got["correct"] in (None, r.models[model].correct), (line["id"], model, got, r.models[model])
        assert line["models"][concluded]["correct"] == r.models[concluded].correct, line["id"]
        answers = [got["answer"] for got in line["models"].values()]
        escalated_past_agreement += len(answers) == 3 and answers[0] == answers[1] != answers[2]
    assert escalated_past_agreement, "no job where two stages agreed and the last one differed: the case is not exercised"
    written = tmp_path / "p.yaml"
    assert panel(["tune", str(exported), "--write", str(written), "--task-class", task_class]) == 0
    assert panel(["eval", str(exported), "--policy", str(written), "--offline", "--out", str(tmp_path / "out")]) == 0
