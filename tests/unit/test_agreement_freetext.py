"""Free-text agreement: the answer found inside a long reply, and replies that say the same thing in
other words voting together (rapidfuzz token-set ratio at a calibrated threshold)."""

from __future__ import annotations

from pathlib import Path

import pytest

from workers.panel.agreement import Numeric, Similar, extract_answer

ZEROEVAL = '```json\n{"reasoning": "She leaves at 1:30 and drives 30 minutes, 2 stops.", "answer": "2:00 pm"}\n```'


@pytest.mark.parametrize(("text", "answer"), [
    ('{"reasoning": "16 - 3 - 4 = 9; 9 * 2 = 18", "answer": "$18"}', "$18"),
    ("Step 1 ... 9 eggs.\n#### 18", "18"),
    ("Work ...\nFinal answer: Paris\n", "Paris"),
    ("Working it out, the answer is 42. Done.", "42"),
    ("no marker at all", "no marker at all"),
])  # fmt: skip
def test_the_answer_is_found_inside_the_reply(text: str, answer: str) -> None:
    assert extract_answer(text) == answer


def test_numeric_reads_the_declared_json_field_not_the_last_number() -> None:
    assert Numeric().key(ZEROEVAL, []) == "2"  # the last number in the whole reply would be "00"
    assert Numeric().key('{"reasoning": "3 + 4", "answer": 7}', []) == "7"
    assert Numeric().key('{"reasoning": "x", "answer": "unknown"}', []) is None
    assert Numeric().key("so 16.0\n#### 16", []) == "16"  # replies without JSON: unchanged


def test_similar_joins_the_same_answer_in_other_words_and_keeps_different_ones_apart() -> None:
    rule = Similar(0.85)
    first = rule.key('{"reasoning": "...", "answer": "$1,200.00"}', [])
    assert first == "1200"
    assert rule.key("So the total comes to 1200 dollars.\n#### 1200 dollars", [first]) == first
    assert rule.key('{"answer": "1300"}', [first]) != first
    assert rule.key("", []) is None


def test_the_calibrated_rule_cuts_the_arbiter_rate_on_recorded_replies(replay_dir: Path) -> None:
    from evaluation import freetext
    from evaluation.replay import load

    rows = load(replay_dir / "gsm8k_zeroeval_dev.jsonl.gz")[:120]
    members, judge = freetext.PANELS[0]
    threshold, even, odd = freetext.calibrate(rows, [*members, judge])
    assert 0.5 <= threshold <= 1.0 and odd[threshold] > 0.97
    exact = [freetext.staged(r, members, judge, lambda t, e: t.strip() or None) for r in rows]
    similar = [freetext.staged(r, members, judge, Similar(threshold).key) for r in rows]
    assert sum(a for _, a, _ in similar) < 0.2 * sum(a for _, a, _ in exact)
