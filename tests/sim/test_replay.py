"""Replay: a recorded row answers with its recorded text, tokens and (scaled) latency, through
either API and through the registry's provider model ids."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from sim.process import SimProcess
from tests.sim.conftest import ANTHROPIC_AUTH, OPENAI_AUTH, REGISTRY


@pytest.fixture(scope="module")
def replay_sim(replay_dir: Path) -> Iterator[SimProcess]:
    with SimProcess(args=["--models", str(REGISTRY), "--replay", str(replay_dir / "mmlu_train.jsonl")]) as proc:
        yield proc


@pytest.fixture(scope="module")
def row(replay_dir: Path) -> dict[str, Any]:
    with open(replay_dir / "mmlu_train.jsonl", "rb") as f:
        first: dict[str, Any] = orjson.loads(f.readline())
    return first


def test_openai_call_by_provider_model_id_returns_the_recorded_row(replay_sim: SimProcess, row: dict[str, Any]) -> None:
    rec = row["models"]["llama3.1-70b"]
    r = httpx.post(f"{replay_sim.openai_base}/chat/completions", headers=OPENAI_AUTH, json={
        "model": "accounts/fireworks/models/llama-v3p1-70b-instruct", "messages": row["messages"]})
    body = r.json()
    assert body["choices"][0]["message"]["content"] == rec["text"]
    assert body["usage"]["prompt_tokens"] == rec["tokens_in"] and body["usage"]["completion_tokens"] == rec["tokens_out"]


def test_anthropic_top_level_system_hits_the_same_row(replay_sim: SimProcess, row: dict[str, Any]) -> None:
    system, *rest = row["messages"]
    assert system["role"] == "system"
    for model, rec in row["models"].items():
        r = httpx.post(f"{replay_sim.anthropic_base}/v1/messages", headers=ANTHROPIC_AUTH, json={
            "model": model, "max_tokens": 16, "system": system["content"], "messages": rest})
        body = r.json()
        assert body["content"][0]["text"] == rec["text"], model
        # Anthropic reports its prompt-cache fields on every reply; a replayed row was never cached
        assert body["usage"] == {"input_tokens": rec["tokens_in"], "output_tokens": rec["tokens_out"],
                                 "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}, model


def test_a_changed_prompt_misses_the_replay_and_falls_back_to_the_rule(replay_sim: SimProcess, row: dict[str, Any]) -> None:
    messages = [dict(m) for m in row["messages"]]
    messages[-1]["content"] += " "
    r = httpx.post(f"{replay_sim.openai_base}/chat/completions", headers=OPENAI_AUTH,
                   json={"model": "llama3.1-70b", "messages": messages})  # fmt: skip
    usage = r.json()["usage"]
    assert usage["prompt_tokens"] == (sum(len(m["content"]) for m in messages) + len(messages) - 1 + 3) // 4  # len/4 estimate


def test_recorded_latency_mode_waits_the_rows_latency_times_the_scale(replay_sim: SimProcess, row: dict[str, Any]) -> None:
    replay_sim.configure({"default": {"latency_mode": "recorded", "latency_scale": 2.0}})
    try:
        model = "llama3.1-405b"
        expected_s = row["models"][model]["latency_ms"] * 2.0 / 1000
        t0 = time.monotonic()
        httpx.post(f"{replay_sim.openai_base}/chat/completions", headers=OPENAI_AUTH,
                   json={"model": model, "messages": row["messages"]})  # fmt: skip
        elapsed = time.monotonic() - t0
        served = replay_sim.requests(model)[-1]
        # held back at least the recorded latency times the scale, on both sides of the wire; the
        # bound above is generous (a loaded machine) and only rules out a wrong unit or scale
        assert expected_s <= served["ended"] - served["started"] <= elapsed < expected_s * 3 + 5
    finally:
        replay_sim.reset()
