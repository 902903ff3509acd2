"""Labels fed back on decided jobs: stored beside the ledger, a bad file refused with file:line:field
before anything is stored, and labelled receipts exported as a replay file `panel tune` reads."""

from __future__ import annotations

from pathlib import Path

import fakeredis
import orjson
import pytest

from evaluation.replay import load
from producer import keys, labels


def receipt(job: str, keys_: list[str], decision: str = "quorum", cls: str = "qa") -> dict[str, object]:
    calls = [{"member": f"m{i}", "role": "member", "model": f"model-{i}", "status": "answered", "answer_key": k,
              "tokens_in": 10, "tokens_out": 1, "cost_usd": 1e-5 * (i + 1), "latency_ms": 5.0}
             for i, k in enumerate(keys_)]  # fmt: skip
    return {"job_id": job, "task_class": cls, "lanes": [{"lane": "panel", "reason": "default"}], "calls": calls,
            "decision": decision, "changed_vs_default": False}  # fmt: skip


@pytest.fixture
def r() -> fakeredis.FakeRedis:
    client = fakeredis.FakeRedis()
    for j in ("j1", "j2"):
        client.hset(keys.job(j), "status", "decided")
    return client


def test_labels_are_stored_for_known_jobs_only(r: fakeredis.FakeRedis) -> None:
    labels.put(r, "j1", "correct")
    labels.put(r, "j2", "wrong")
    assert labels.get_all(r) == {"j1": True, "j2": False}
    with pytest.raises(labels.LabelError, match="job_id: no job 'nope'"):
        labels.put(r, "nope", "correct")


def test_a_bad_label_file_names_file_line_and_field_and_stores_nothing(r: fakeredis.FakeRedis, tmp_path: Path) -> None:
    path = tmp_path / "labels.jsonl"
    path.write_text('{"job_id": "j1", "label": "correct"}\n{"job_id": "j2", "label": "maybe"}\n')
    with pytest.raises(labels.LabelError, match=r"labels.jsonl:2: label:"):
        labels.put_file(r, path)
    assert labels.get_all(r) == {}


def test_labelled_receipts_export_as_a_replay_file(tmp_path: Path) -> None:
    receipts = [receipt("j1", ["A", "A", "B"]), receipt("j2", ["C", "C", "C"]), receipt("j3", ["D", "E", "D"])]
    rows = labels.export(receipts, {"j1": True, "j2": False}, "qa", kind="choice")
    assert [x["id"] for x in rows] == ["j1", "j2"]
    m = rows[0]["models"]
    assert (m["model-0"]["correct"], m["model-1"]["correct"], m["model-2"]["correct"]) == (True, True, False)
    assert all(v["correct"] is False for v in rows[1]["models"].values())
    path = tmp_path / "rows.jsonl"
    path.write_bytes(b"".join(orjson.dumps(x) + b"\n" for x in rows))
    assert len(load(path)) == 2
    assert "qa: 2 labelled, 50.0% correct" in labels.summary(receipts, {"j1": True, "j2": False})[0]
