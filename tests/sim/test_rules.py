"""The deterministic rule: stable across processes, letters for options, JSON when asked, an
`ANSWER:` line otherwise, skill sets how often a model is right, and scripted answers win."""

from __future__ import annotations

import httpx
import orjson

from sim.process import SimProcess
from sim.prompt import Prompt
from sim.rules import options, rule_answer
from tests.sim.conftest import REGISTRY, chat

QUESTIONS = [f"Question {i}: which one?\nA) red\nB) green\nC) blue\nD) black" for i in range(12)]


def answers(sim: SimProcess) -> list[str]:
    with httpx.Client(timeout=10) as http:
        return [chat(http, sim, model, q).json()["choices"][0]["message"]["content"]
                for model in ("gpt-4o", "llama3.1-8b", "accounts/fireworks/models/llama-v3p2-1b-instruct")
                for q in QUESTIONS]  # fmt: skip


def test_rule_answers_are_identical_across_two_server_processes() -> None:
    with SimProcess(args=["--models", str(REGISTRY)]) as one:
        first = answers(one)
    with SimProcess(args=["--models", str(REGISTRY), "--seed", "99"]) as two:
        second = answers(two)
    assert first == second
    assert set(first) <= {"A", "B", "C", "D"} and len(set(first)) > 1


def test_skill_one_makes_every_model_agree_and_skill_zero_never_gives_the_truth() -> None:
    prompts = [Prompt.from_wire([{"role": "user", "content": q}]) for q in QUESTIONS]
    for p in prompts:
        assert len({rule_answer(m, p, 1.0) for m in ("a", "b", "c")}) == 1
        truth = rule_answer("a", p, 1.0)
        assert all(rule_answer(m, p, 0.0) != truth for m in ("a", "b", "c"))


def test_skill_is_roughly_the_share_of_true_answers() -> None:
    prompts = [Prompt.from_wire([{"role": "user", "content": f"n={i}? A) x B) y C) z D) w"}]) for i in range(2000)]
    right = sum(rule_answer("m", p, 0.7) == rule_answer("truth", p, 1.0) for p in prompts)
    assert 0.66 < right / len(prompts) < 0.74


def test_option_detection_reads_the_common_layouts() -> None:
    assert options("Pick:\nA: 0\nB: 1\nC: 2") == ["A", "B", "C"]
    assert options("(A) yes (B) no") == ["A", "B"]
    assert options("A. one\nB. two") == ["A", "B"]
    assert options("I) think C) 2024 is fine") == []


def test_json_mode_and_the_word_json_get_a_json_object(http: httpx.Client, sim: SimProcess) -> None:
    by_format = chat(http, sim, "gpt-4o", "How many apples?", response_format={"type": "json_object"})
    by_word = chat(http, sim, "gpt-4o", "How many apples? Reply in JSON.")
    for r in (by_format, by_word):
        doc = orjson.loads(r.json()["choices"][0]["message"]["content"])
        assert set(doc) == {"reasoning", "answer"} and 0 <= int(doc["answer"]) < 100


def test_free_text_ends_with_an_answer_line(http: httpx.Client, sim: SimProcess) -> None:
    text = chat(http, sim, "gpt-4o", "How many apples are left?").json()["choices"][0]["message"]["content"]
    assert text.splitlines()[-1].startswith("ANSWER: ") and int(text.splitlines()[-1].split()[-1]) in range(100)


def test_scripted_answers_make_members_agree_or_disagree_and_fix_an_arbiter_verdict(http: httpx.Client, sim: SimProcess) -> None:
    verdict = '{"final_answer": "B", "chosen_members": ["m1"], "disagreements": [], "rationale": "r"}'
    sim.configure({"models": {"gpt-4o": {"answer": "B"}, "llama3.1-8b": {"answer": "C"}, "claude-3-5-sonnet": {"answer": verdict}}})
    assert chat(http, sim, "gpt-4o", QUESTIONS[0]).json()["choices"][0]["message"]["content"] == "B"
    assert chat(http, sim, "llama3.1-8b", QUESTIONS[0]).json()["choices"][0]["message"]["content"] == "C"
    assert chat(http, sim, "claude-3-5-sonnet-20241022", "judge").json()["choices"][0]["message"]["content"] == verdict
