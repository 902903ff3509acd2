"""The simulator answers a panel's arbiter prompt from replay: the judge picks the candidate equal
to its own recorded answer, writes that answer when no member gave it, and falls back to a stable
plurality when it has no recorded answer. Prompts are built by the fleet's own `arbiter_messages`,
so a change to the arbiter's prompt format breaks these specs, not a replay run."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from sim.answers import Answerer
from sim.knobs import Knobs
from sim.prompt import Prompt
from sim.replay import ReplayIndex
from tests.eval import synthetic
from workers.panel.arbiter import arbiter_messages, parse_verdict


@pytest.fixture(scope="module")
def answerer(tmp_path_factory: pytest.TempPathFactory) -> Answerer:
    path = synthetic.write(tmp_path_factory.mktemp("replay") / "synthetic.jsonl")
    return Answerer(ReplayIndex.load([path]))


def judge(answerer: Answerer, model: str, qid: str, answers: dict[str, str]) -> tuple[dict[str, object], str]:
    task = synthetic.row(qid)["messages"]
    prompt = Prompt.from_wire(arbiter_messages(task, answers, ["be correct"]))
    reply = answerer.reply(model, prompt, Knobs(), json_mode=True)
    verdict = parse_verdict(reply.text, answers)
    assert verdict is not None, f"not a verdict the fleet accepts: {reply.text}"
    return verdict.model_dump(), reply.source


def test_judge_picks_the_members_that_gave_its_recorded_answer(answerer: Answerer) -> None:
    verdict, source = judge(answerer, synthetic.JUDGE, "q-split", {"m0": "A", "m1": "B", "m2": "C"})
    assert source == "arbiter"
    assert verdict["final_answer"] == "C" and verdict["chosen_members"] == ["m2"]
    assert verdict["disagreements"] == ["members also answered 'a'", "members also answered 'b'"]


def test_judge_writes_its_own_answer_when_no_member_gave_it(answerer: Answerer) -> None:
    verdict, _ = judge(answerer, synthetic.JUDGE, "q-agree-wrong", {"m0": "C", "m1": "A"})
    assert verdict["final_answer"] == "B" and verdict["chosen_members"] == []


def test_judge_takes_its_replay_latency_for_the_question(answerer: Answerer) -> None:
    task = synthetic.row("q-split")["messages"]
    reply = answerer.reply(synthetic.JUDGE, Prompt.from_wire(arbiter_messages(task, {"m0": "A", "m1": "B"}, [])), Knobs())
    assert reply.recorded_latency_ms == 50.0


def test_unrecorded_judge_takes_the_plurality(answerer: Answerer) -> None:
    verdict, _ = judge(answerer, "omega-unrecorded", "q-split", {"m0": "B", "m1": "(B)", "m2": "D"})
    assert verdict["final_answer"] == "B" and verdict["chosen_members"] == ["m0", "m1"]


def test_unrecorded_judge_breaks_ties_the_same_way_every_time(answerer: Answerer) -> None:
    answers = {"m0": "A", "m1": "B", "m2": "C"}
    first, _ = judge(answerer, "omega-unrecorded", "q-split", answers)
    assert first["final_answer"] in ("A", "B", "C") and len(first["chosen_members"]) == 1  # type: ignore[arg-type]
    for _ in range(3):
        assert judge(answerer, "omega-unrecorded", "q-split", answers)[0] == first


def test_numbers_match_by_value_through_recorded_texts(tmp_path: Path) -> None:
    row = {"id": "n1", "kind": "number", "gold": "90000", "messages": [{"role": "user", "content": "How much?"}],
           "models": {"a": {"answer": "90000", "text": "It is 90,000 dollars.\n#### 90,000"},
                      "b": {"answer": "9000", "text": "So 9000.\n#### 9000"},
                      "judge": {"answer": "90000.0", "text": "#### 90000.0"}}}  # fmt: skip
    path = tmp_path / "n.jsonl"
    path.write_bytes(orjson.dumps(row) + b"\n")
    answerer = Answerer(ReplayIndex.load([path]))
    answers = {"m0": row["models"]["a"]["text"], "m1": row["models"]["b"]["text"], "m2": "I think $90000"}
    prompt = Prompt.from_wire(arbiter_messages(row["messages"], answers, []))
    verdict = parse_verdict(answerer.reply("judge", prompt, Knobs(), json_mode=True).text, answers)
    assert verdict is not None and verdict.chosen_members == ["m0", "m2"]
    assert verdict.final_answer == answers["m0"]


def test_other_prompts_are_not_taken_for_arbiter_prompts(answerer: Answerer) -> None:
    prompt = Prompt.from_wire([{"role": "user", "content": "<task>\nx\n</task>\n<member_answers>\n[]\n</member_answers>"}])
    assert answerer.reply(synthetic.JUDGE, prompt, Knobs()).source == "rule"
