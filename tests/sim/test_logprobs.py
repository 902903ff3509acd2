"""Log-probabilities on the OpenAI wire: served only when asked (`logprobs: true`), as
`choices[0].logprobs.content[]` whose logprobs sum to the recorded `conf` in replay, to the
`logprob` knob when scripted, else to a deterministic value by the rule."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from sim.process import SimProcess
from tests.sim.conftest import OPENAI_AUTH, REGISTRY, chat
from workers.providers.openai import sequence_logprob

QUESTION = "Which option?\nA) one\nB) two\nC) three\nD) four"


def served(body: dict[str, Any]) -> float | None:
    return sequence_logprob(body["choices"][0]["logprobs"])


def test_no_logprobs_unless_asked(http: httpx.Client, sim: SimProcess) -> None:
    assert chat(http, sim, "gpt-4o-mini", QUESTION).json()["choices"][0]["logprobs"] is None
    assert chat(http, sim, "gpt-4o-mini", QUESTION, logprobs="yes").status_code == 400


def test_rule_logprob_is_deterministic_and_separates_right_from_wrong(http: httpx.Client, sim: SimProcess) -> None:
    values: dict[bool, list[float]] = {True: [], False: []}
    sim.configure({"models": {"oracle": {"skill": 1.0}}})  # always the rule's true answer
    for i in range(40):
        q = f"q{i}: {QUESTION}"
        first = chat(http, sim, "llama3.1-8b", q, logprobs=True).json()
        again = chat(http, sim, "llama3.1-8b", q, logprobs=True).json()
        value = served(first)
        assert value is not None and value == served(again) and value <= 0
        content = first["choices"][0]["logprobs"]["content"]
        assert "".join(t["token"] for t in content) == first["choices"][0]["message"]["content"]
        right = chat(http, sim, "oracle", q).json()["choices"][0]["message"]["content"]
        values[first["choices"][0]["message"]["content"] == right].append(value)
    assert values[True] and values[False]
    assert all(-0.5 <= v <= -0.05 for v in values[True]) and all(-2.0 <= v <= -0.4 for v in values[False])


def test_scripted_logprob_knob_is_what_the_tokens_sum_to(http: httpx.Client, sim: SimProcess) -> None:
    sim.configure({"models": {"llama3.1-8b": {"answer": "The answer is B, because two.", "logprob": -0.82}}})
    body = chat(http, sim, "accounts/fireworks/models/llama-v3p1-8b-instruct", QUESTION, logprobs=True).json()
    content = body["choices"][0]["logprobs"]["content"]
    assert len(content) > 1 and served(body) == pytest.approx(-0.82, abs=1e-12)


@pytest.fixture(scope="module")
def replay_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("replay") / "conf.jsonl"
    row = {"id": "c1", "source": "test", "task": "t", "kind": "number", "gold": "42",
           "messages": [{"role": "user", "content": "What is six times seven? Think, then #### N."}],
           "models": {"llama3.1-8b": {"answer": "42", "text": "Six sevens are 42.\n#### 42", "correct": True,
                                      "tokens_in": 20, "tokens_out": 9, "cost_usd": None, "latency_ms": None,
                                      "conf": -1.2345678}}}  # fmt: skip
    path.write_bytes(orjson.dumps(row) + b"\n")
    return path


@pytest.fixture(scope="module")
def replay_sim(replay_file: Path) -> Iterator[SimProcess]:
    with SimProcess(args=["--models", str(REGISTRY), "--replay", str(replay_file)]) as proc:
        yield proc


def test_replay_serves_the_recorded_conf_as_the_sequence_logprob(replay_sim: SimProcess, replay_file: Path) -> None:
    row = orjson.loads(replay_file.read_bytes())
    r = httpx.post(f"{replay_sim.openai_base}/chat/completions", headers=OPENAI_AUTH,
                   json={"model": "llama3.1-8b", "messages": row["messages"], "logprobs": True})  # fmt: skip
    body = r.json()
    content = body["choices"][0]["logprobs"]["content"]
    assert len(content) == 9 and math.fsum(t["logprob"] for t in content) == pytest.approx(-1.2345678, abs=1e-12)
    assert body["choices"][0]["message"]["content"] == row["models"]["llama3.1-8b"]["text"]


def test_real_mmlu_rows_serve_their_recorded_conf(replay_dir: Path) -> None:
    with open(replay_dir / "mmlu_train.jsonl", "rb") as f:
        rows = [orjson.loads(next(f)) for _ in range(5)]
    with SimProcess(args=["--models", str(REGISTRY), "--replay", str(replay_dir / "mmlu_train.jsonl")]) as proc:
        for row in rows:
            for model, rec in row["models"].items():
                r = httpx.post(f"{proc.openai_base}/chat/completions", headers=OPENAI_AUTH,
                               json={"model": model, "messages": row["messages"], "logprobs": True})  # fmt: skip
                assert served(r.json()) == pytest.approx(rec["conf"], abs=1e-9), (row["id"], model)
