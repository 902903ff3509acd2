"""Labels fed back on decided jobs: stored beside the ledger, a bad file refused with file:line:field
before anything is stored, and labelled receipts exported as a replay file `panel tune` reads."""

from __future__ import annotations

from pathlib import Path

import fakeredis
import orjson
import pytest
import redis

from evaluation.replay import credit, load
from producer import keys, labels


def receipt(job: str, keys_: list[str], decision: str = "quorum", cls: str = "qa") -> dict[str, object]:
    calls = [{"member": f"1.m{i}", "role": "member", "model": f"model-{i}", "status": "answered", "answer_key": k,
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


def cascade_receipt(job: str, stages: list[str], decision: str = "single", **extra: object) -> dict[str, object]:
    """A receipt as workers/ledger.py renders a cascade's: lane N's calls are numbered `N.mK`."""
    calls = [{"member": f"{n}.m0", "role": "member", "model": f"model-{n}", "status": "answered", "answer_key": k,
              "tokens_in": 10, "tokens_out": 1, "cost_usd": 1e-5 * n, "latency_ms": 5.0, "logprob": -0.1 * n}
             for n, k in enumerate(stages, start=1)]  # fmt: skip
    lanes = [{"lane": "single", "reason": "r", "stage": n, "check": "logprob", "value": -0.1 * n, "threshold": -0.05,
              "accepted": n == len(stages)} for n in range(1, len(stages) + 1)]  # fmt: skip
    return {"job_id": job, "task_class": "qa", "lanes": lanes, "calls": calls, "decision": decision,
            "changed_vs_default": stages[0] != stages[-1], **extra}  # fmt: skip


def test_a_cascade_job_exports_its_concluding_stage_s_answer_as_the_decided_one() -> None:
    # stages 1 and 2 said C, stage 3 (the one that concluded) said B, labelled correct: B is gold
    rows = labels.export([cascade_receipt("j1", ["C", "C", "B"])], {"j1": True}, "qa", kind="choice")
    assert rows[0]["gold"] == "B"
    m = rows[0]["models"]
    assert (m["model-1"]["correct"], m["model-2"]["correct"], m["model-3"]["correct"]) == (False, False, True)
    assert m["model-1"]["conf"] == pytest.approx(-0.1)  # the call's log-probability, as the replay format's conf
    # labelled wrong: the concluding stage's model is the one known wrong, the others unknown
    m = labels.export([cascade_receipt("j1", ["C", "C", "B"])], {"j1": False}, "qa", kind="choice")[0]["models"]
    assert (m["model-1"]["correct"], m["model-2"]["correct"], m["model-3"]["correct"]) == (None, None, False)


def test_an_escalated_job_is_decided_by_its_panel_not_its_default_lane() -> None:
    rc = receipt("j1", [])
    calls = [("1.m0", "A"), ("2.m0", "B"), ("2.m1", "B"), ("2.m2", "A")]
    rc["lanes"] = [{"lane": "single", "reason": "default"}, {"lane": "panel", "reason": "output trigger"}]
    rc["calls"] = [{"member": m, "role": "member", "model": f"model-{i}", "status": "answered", "answer_key": k,
                    "tokens_in": 10, "tokens_out": 1, "cost_usd": 1e-5, "latency_ms": 5.0} for i, (m, k) in enumerate(calls)]  # fmt: skip
    row = labels.export([rc], {"j1": True}, "qa", kind="choice")[0]
    assert row["gold"] == "B"
    assert [row["models"][f"model-{i}"]["correct"] for i in range(4)] == [False, True, True, False]


def test_an_arbiter_decided_job_credits_the_member_the_judge_chose() -> None:
    rc = receipt("j1", ["A", "B", "C"], decision="arbiter")
    rc["verdict"] = {"final_answer": "C", "chosen_members": ["m2"], "disagreements": [], "rationale": "", "fallback": False}
    row = labels.export([rc], {"j1": True}, "qa", kind="choice")[0]
    assert row["gold"] == "C"
    assert [row["models"][f"model-{i}"]["correct"] for i in range(3)] == [False, False, True]


def test_an_answer_that_came_after_the_decision_does_not_outvote_it() -> None:
    rc = receipt("j1", ["A", "B", "B"], decision="sweep")  # the deadline sweep took A, the one vote in
    rc["calls"][1]["status"] = rc["calls"][2]["status"] = "late"  # B, B: answered after it, not voted
    row = labels.export([rc], {"j1": True}, "qa", kind="choice")[0]
    assert row["gold"] == "A" and row["models"]["model-1"]["correct"] is False


def test_the_export_carries_each_job_s_messages_so_the_fleet_can_replay_it(tmp_path: Path) -> None:
    r = fakeredis.FakeRedis()
    r.hset(keys.job("j1"), mapping={"status": "decided",
                                    "spec": orjson.dumps({"task_class": "qa", "messages": [
                                        {"role": "system", "content": "Answer with a letter."},
                                        {"role": "user", "content": "2+2? A) 3 B) 4"}]})})  # fmt: skip
    r.hset(keys.job("j2"), mapping={"status": "decided", "spec": orjson.dumps({"task_class": "qa", "prompt": "3+3?"})})
    rows = labels.export([receipt("j1", ["B"]), receipt("j2", ["6"])], {"j1": True, "j2": True}, "qa", kind="choice",
                         messages=labels.job_messages(r, ["j1", "j2", "gone"]))  # fmt: skip
    assert rows[0]["messages"] == [{"role": "system", "content": "Answer with a letter."},
                                   {"role": "user", "content": "2+2? A) 3 B) 4"}]  # fmt: skip
    assert rows[1]["messages"] == [{"role": "user", "content": "3+3?"}]
    path = tmp_path / "rows.jsonl"
    path.write_bytes(b"".join(orjson.dumps(x) + b"\n" for x in rows))
    assert load(path)[0].messages == rows[0]["messages"]


def test_a_labelled_job_served_from_the_cache_exports_with_its_source_s_calls() -> None:
    source = receipt("src", ["A", "A", "B"])
    served = {"job_id": "hit", "task_class": "qa", "lanes": [], "calls": [], "decision": "cache",
              "served_from_cache": True, "cached_from_job": "src", "changed_vs_default": None}  # fmt: skip
    rows = labels.export([source, served], {"hit": True}, "qa", kind="choice")
    assert [x["id"] for x in rows] == ["hit"] and rows[0]["gold"] == "A"
    assert rows[0]["models"]["model-2"]["correct"] is False
    # its source labelled too: one row for the question, the source's
    assert [x["id"] for x in labels.export([source, served], {"hit": True, "src": True}, "qa")] == ["src"]


def test_a_job_appended_twice_to_the_ledger_is_one_row_and_one_labelled_job() -> None:
    twice = [receipt("j1", ["A", "A", "B"]), receipt("j1", ["A", "A", "B"])]
    assert len(labels.export(twice, {"j1": True}, "qa")) == 1
    assert labels.summary(twice, {"j1": True})[0].startswith("qa: 1 labelled, 100.0% correct")


def test_the_summary_names_the_stage_each_labelled_cascade_job_concluded_at() -> None:
    rs = [cascade_receipt("j1", ["A"]), cascade_receipt("j2", ["A", "B"]), cascade_receipt("j3", ["C", "B"])]
    line = labels.summary(rs, {"j1": True, "j2": True, "j3": False})[0]
    assert "decided at stage2:logprob 2, stage1:logprob 1" in line
    assert "escalation changed 2 labelled answers (1 now correct)" in line


def test_a_label_file_naming_an_unknown_job_names_its_line_and_stores_nothing(r: fakeredis.FakeRedis,
                                                                             tmp_path: Path) -> None:  # fmt: skip
    path = tmp_path / "labels.jsonl"
    path.write_text('{"job_id": "j1", "label": "correct"}\n\n{"job_id": "typo", "label": "wrong"}\n')
    with pytest.raises(labels.LabelError, match=r"labels.jsonl:3: job_id: no job 'typo'"):
        labels.put_file(r, path)
    assert labels.get_all(r) == {}


def test_one_label_file_serves_panel_label_and_the_ledger_page(r: fakeredis.FakeRedis, tmp_path: Path) -> None:
    from producer.ledger_page import read_labels

    path = tmp_path / "labels.jsonl"
    path.write_text('{"job_id": "j1", "label": "correct"}\n{"job_id": "j2", "correct": false}\n')
    assert read_labels(path) == {"j1": True, "j2": False}
    assert labels.put_file(r, path) == 2 and labels.get_all(r) == {"j1": True, "j2": False}
    for bad, where in [('{"job_id": "j1", "correct": "yes"}', "labels.jsonl:2: correct:"),
                       ('{"job_id": "j1"}', r"labels.jsonl:2: \(line\): .*give one of"),
                       ("{not json", "labels.jsonl:2: not JSON")]:  # fmt: skip
        path.write_text('{"job_id": "j1", "correct": true}\n' + bad + "\n")
        with pytest.raises(labels.LabelError, match=where):
            read_labels(path)


def test_panel_ledger_with_a_bad_labels_file_is_one_line_naming_it(tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    from producer.cli import main as panel

    path = tmp_path / "labels.jsonl"
    path.write_text('{"job_id": "j1", "label": "correct"}\n{"job_id": "j2", "label": "maybe"}\n')
    assert panel(["--redis-url", "redis://127.0.0.1:1/0", "ledger", "--html", str(tmp_path / "l.html"),
                  "--labels", str(path)]) == 2  # fmt: skip
    err = capsys.readouterr().err
    assert "labels.jsonl:2: label:" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_a_cascade_that_kept_an_earlier_stage_s_answer_is_credited_with_that_answer() -> None:
    rc = cascade_receipt("j1", ["A", "B", "C"])
    for c in rc["calls"][1:]:  # type: ignore[union-attr]
        c["status"], c["answer_key"] = "failed", None  # stages 2 and 3 ran out of the deadline
    row = labels.export([rc], {"j1": True}, "qa", kind="choice")[0]
    assert row["gold"] == "A" and row["models"]["model-1"]["correct"] is True


def test_exporting_a_class_with_no_labelled_job_names_the_classes_that_have_some(
        redis_url: str, redis_client: redis.Redis, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    """A typo in --task-class wrote an empty file and said "wrote 0"; `panel tune` then failed on it."""
    from producer.cli import main as panel

    r = redis_client
    r.hset(keys.job("j1"), "status", "decided")
    r.xadd(keys.LEDGER_STREAM, {"task_class": "qa", "receipt": orjson.dumps(receipt("j1", ["A", "A"]))})
    labels.put(r, "j1", "correct")
    out = tmp_path / "rows.jsonl"
    assert panel(["--redis-url", redis_url, "label", "--export", str(out), "--task-class", "qa_choise"]) == 2
    assert "--task-class: no labelled job of 'qa_choise' in the ledger; labelled: qa" in capsys.readouterr().err
    assert not out.exists()
    assert panel(["--redis-url", redis_url, "label", "--export", str(out), "--task-class", "qa"]) == 0
    assert len(out.read_bytes().splitlines()) == 1


def test_a_wrong_label_with_the_right_answer_scores_every_model_against_it(r: fakeredis.FakeRedis,
                                                                            tmp_path: Path) -> None:  # fmt: skip
    """Decided A, labelled wrong: without the right answer, B and C are unknown and count as wrong
    in tune; with `--answer B`, B is scored right and C wrong, by the row's kind."""
    labels.put(r, "j1", "wrong", answer="b")  # a choice is scored case-blind
    assert labels.get_answers(r) == {"j1": "b"}
    receipts = [receipt("j1", ["A", "A", "B", "C"])]
    path = tmp_path / "rows.jsonl"
    for answers, expected, unknown in (({}, [False, False, False, False], 1), (labels.get_answers(r), [False, False, True, False], 0)):
        rows = labels.export(receipts, labels.get_all(r), "qa", kind="choice", answers=answers)
        assert labels.unknown(rows) == unknown
        path.write_bytes(b"".join(orjson.dumps(x) + b"\n" for x in rows))
        (row,) = load(path)
        assert [credit(row, f"model-{i}") for i in range(4)] == expected, answers


def test_a_label_file_may_give_the_right_answer_and_an_empty_one_is_refused(r: fakeredis.FakeRedis,
                                                                           tmp_path: Path) -> None:  # fmt: skip
    path = tmp_path / "labels.jsonl"
    path.write_text('{"job_id": "j1", "label": "wrong", "answer": "C"}\n{"job_id": "j2", "correct": true}\n')
    assert labels.put_file(r, path) == 2 and labels.get_answers(r) == {"j1": "C"}
    path.write_text('{"job_id": "j2", "label": "wrong", "answer": " "}\n')
    with pytest.raises(labels.LabelError, match=r"labels.jsonl:1: answer: empty"):
        labels.put_file(r, path)


@pytest.mark.parametrize(("answers", "kind"), [(["A", "c", "J"], "choice"), (["12", "-3.5", "1e3"], "number"),
                                               (["A", "12"], "label"), (["AB"], "label"), ([], "label")])  # fmt: skip
def test_an_export_not_told_its_kind_infers_it_from_the_answers(answers: list[str], kind: str) -> None:
    rows = [{"models": {f"m{i}": {"answer": a}}} for i, a in enumerate(answers)]
    assert labels.infer_kind(rows) == kind


@pytest.mark.parametrize(("kind", "typed", "gold"), [("choice", "(c)", "C"), ("choice", "C.", "C"), ("choice", "Paris", "Paris"),
                                                     ("number", "1,234 apples", "1234"), ("number", "3 or 4", "3 or 4"),
                                                     ("label", "Paris.", "Paris.")])  # fmt: skip
def test_a_right_answer_as_typed_takes_the_form_of_the_rows_answers(kind: str, typed: str, gold: str) -> None:
    assert labels.gold_for(kind, typed) == gold


def test_a_batch_call_exports_at_the_real_time_price_so_one_file_has_one_price_list() -> None:
    rc = receipt("j1", ["A", "A"])
    batch = rc["calls"][1]  # type: ignore[index]
    batch.update({"batch": True, "cost_usd": 1e-5, "realtime_cost_usd": 2e-5})
    (row,) = labels.export([rc], {"j1": True}, "qa", kind="choice")
    assert row["models"]["model-0"]["cost_usd"] == 1e-5 and row["models"]["model-1"]["cost_usd"] == 2e-5
