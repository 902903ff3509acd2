"""A small replay file in the shared format, written by the tests: four choice questions whose
recorded answers make a panel of three agree (twice), split 2-1, and split three ways."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson

MEMBERS = ("alpha-small", "beta-small", "gamma-mid")
JUDGE = "delta-large"

# id -> (gold, answers of alpha, beta, gamma, delta)
QUESTIONS: dict[str, tuple[str, str, str, str, str]] = {
    "q-agree": ("A", "A", "A", "A", "A"),
    "q-agree-wrong": ("B", "C", "C", "C", "B"),
    "q-two-one": ("D", "D", "B", "D", "D"),
    "q-split": ("C", "A", "B", "C", "C"),  # all differ: the judge decides, and picks gamma's C
}


def row(qid: str) -> dict[str, Any]:
    gold, *answers = QUESTIONS[qid]
    prompt = f"Question {qid}: which option?\nA) one\nB) two\nC) three\nD) four\nAnswer with the letter."
    models = {
        m: {"answer": a, "text": a, "correct": a == gold, "tokens_in": 40, "tokens_out": 1,
            "cost_usd": 1e-5 * (i + 1), "latency_ms": 20.0 + 10 * i, "conf": None}
        for i, (m, a) in enumerate(zip((*MEMBERS, JUDGE), answers, strict=True))
    }  # fmt: skip
    return {"id": qid, "source": "synthetic", "task": "test", "kind": "choice",
            "messages": [{"role": "system", "content": "Answer with one letter."}, {"role": "user", "content": prompt}],
            "gold": gold, "models": models}  # fmt: skip


def write(path: Path) -> Path:
    path.write_bytes(b"".join(orjson.dumps(row(q)) + b"\n" for q in QUESTIONS))
    return path
