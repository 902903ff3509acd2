"""Log-probabilities through the OpenAI-compatible client: asked for with `logprobs: true`,
summed from `choices[0].logprobs.content[].logprob`; against the simulator (which serves them)
and llmock (which does not: the completion then carries None, which a cascade escalates)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sim.process import SimProcess
from tests.providers.conftest import Llmock
from workers.providers import AnthropicMessages, ChatRequest, OpenAIChat
from workers.providers.openai import parse_completion, request_body, sequence_logprob

pytestmark = pytest.mark.anyio
REGISTRY = Path(__file__).resolve().parents[2] / "policies" / "models.yaml"
QUESTION = [{"role": "user", "content": "Which? A) one B) two"}]


@pytest.fixture(scope="module")
def sim() -> Iterator[SimProcess]:
    with SimProcess(args=["--models", str(REGISTRY)]) as proc:
        yield proc


async def test_the_simulator_logprobs_arrive_as_the_completions_sum(sim: SimProcess) -> None:
    sim.configure({"models": {"llama3.1-8b": {"answer": "B, since two is more than one.", "logprob": -0.82}}})
    chat = OpenAIChat("fireworks", sim.openai_base, "k")
    try:
        asked = await chat.complete(ChatRequest(model="llama3.1-8b", messages=QUESTION, logprobs=True))
        plain = await chat.complete(ChatRequest(model="llama3.1-8b", messages=QUESTION))
    finally:
        await chat.aclose()
    assert asked.logprob == pytest.approx(-0.82, abs=1e-12) and asked.text == "B, since two is more than one."
    assert plain.logprob is None  # not asked: not sent, not served


async def test_llmock_returns_no_logprobs_so_the_completion_has_none(llmock: Llmock) -> None:
    chat = OpenAIChat("openai", llmock.openai_base, "sk-test")
    try:
        completion = await chat.complete(ChatRequest(model="gpt-4o-mini", messages=QUESTION, logprobs=True))
    finally:
        await chat.aclose()
    [sent] = llmock.requests()
    assert sent["body"]["logprobs"] is True
    assert completion.text and completion.logprob is None


async def test_anthropic_never_sends_logprobs(llmock: Llmock) -> None:
    claude = AnthropicMessages("anthropic", llmock.anthropic_base, "sk-ant-test")
    try:
        completion = await claude.complete(ChatRequest(model="claude-3-5-haiku", messages=QUESTION, logprobs=True))
    finally:
        await claude.aclose()
    [sent] = llmock.requests()
    assert "logprobs" not in sent["body"] and completion.logprob is None


@pytest.mark.parametrize(("logprobs", "expected"), [
    ({"content": [{"token": "B", "logprob": -0.25}, {"token": ".", "logprob": -0.5}]}, -0.75),
    (None, None), ({"content": None}, None), ({"content": []}, None),
    ({"content": [{"token": "B", "logprob": "x"}]}, None), ({"content": [{"token": "B", "logprob": 0.3}]}, None),
    ({"content": [{"token": "B", "logprob": True}]}, None), ("garbage", None),
])  # fmt: skip
def test_sequence_logprob_sums_or_says_none(logprobs: Any, expected: float | None) -> None:
    assert sequence_logprob(logprobs) == expected
    body = {"choices": [{"message": {"content": "B"}, "logprobs": logprobs, "finish_reason": "stop"}], "usage": {}}
    assert parse_completion("p", body, 1.0, "m").logprob == expected  # a bad field never fails a paid answer


def test_logprobs_are_asked_only_when_requested() -> None:
    assert request_body(ChatRequest(model="m", messages=QUESTION, logprobs=True))["logprobs"] is True
    assert "logprobs" not in request_body(ChatRequest(model="m", messages=QUESTION))

