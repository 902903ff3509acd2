"""A judge that is hard to sway: answers are shown under shuffled labels (the mapping kept), the
verdict names labels and never quotes answers, so a very long answer cannot cut it short; the
simulator's judge answers by id the same way."""

from __future__ import annotations

from collections import Counter

import orjson

from sim.answers import Answerer
from sim.knobs import Knobs
from sim.prompt import Prompt
from sim.replay import ReplayIndex
from workers.panel.arbiter import anonymise, arbiter_messages, as_shown, parse_verdict, to_members

LONG = "Step 1. " + "Consider the invoice carefully line by line. " * 400 + "So the answer is B."
ANSWERS = {"m0": "A", "m1": LONG, "m2": "C"}


def test_labels_are_a_permutation_fixed_per_panel_and_varied_across_panels() -> None:
    labels = anonymise("job-1.1", sorted(ANSWERS))
    assert sorted(labels) == ["r1", "r2", "r3"] and sorted(labels.values()) == ["m0", "m1", "m2"]
    assert anonymise("job-1.1", sorted(ANSWERS)) == labels  # a redelivery or the batch parse sees the same
    firsts = Counter(anonymise(f"job-{i}.1", sorted(ANSWERS))["r1"] for i in range(300))
    assert set(firsts) == {"m0", "m1", "m2"} and min(firsts.values()) > 60  # no member keeps the first place


def test_the_prompt_shows_labels_only_and_asks_for_ids_not_quotes() -> None:
    labels = anonymise("job-2.1", sorted(ANSWERS))
    system, user = (m["content"] for m in arbiter_messages([{"role": "user", "content": "q"}], as_shown(ANSWERS, labels), []))
    assert "do NOT copy their text" in system
    assert all(f'"member": "{m}"' not in user for m in ANSWERS) and '"member": "r1"' in user


def test_a_verdict_by_id_takes_the_chosen_answer_in_full_and_maps_back() -> None:
    labels = anonymise("job-3.1", sorted(ANSWERS))
    shown = as_shown(ANSWERS, labels)
    long_label = next(label for label, m in labels.items() if m == "m1")
    reply = orjson.dumps({"chosen_members": [long_label], "disagreements": ["the letter"], "rationale": "shows work"}).decode()
    assert len(reply) < 200
    v = parse_verdict(reply, shown)
    assert v is not None and v.final_answer == LONG
    assert to_members(v, labels).chosen_members == ["m1"]


def test_a_verdict_naming_nothing_needs_its_own_answer_and_unknown_ids_are_refused() -> None:
    shown = {"r1": "A", "r2": "B"}
    assert parse_verdict('{"chosen_members": [], "final_answer": "D"}', shown).final_answer == "D"  # type: ignore[union-attr]
    assert parse_verdict('{"chosen_members": []}', shown) is None
    assert parse_verdict('{"chosen_members": ["m0"]}', shown) is None
    assert parse_verdict('{"chosen_members": "r1"}', shown) is None


def test_the_simulators_judge_answers_by_id_without_quoting() -> None:
    labels = anonymise("job-4.1", sorted(ANSWERS))
    shown = as_shown(ANSWERS, labels)
    prompt = Prompt.from_wire(arbiter_messages([{"role": "user", "content": "Which? A) x B) y C) z"}], shown, []))
    reply = Answerer(ReplayIndex()).reply("llama3.1-405b", prompt, Knobs(), json_mode=True)
    assert reply.source == "arbiter" and "Consider the invoice" not in reply.text
    v = parse_verdict(reply.text, shown)
    assert v is not None and v.chosen_members and set(v.chosen_members) <= set(shown)
