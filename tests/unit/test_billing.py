"""What a cut-off call is charged (workers/providers/billing.py) is what the simulator bills for
the same request body: its input as sent, on both wires, system turns and JSON mode included."""

from __future__ import annotations

import pytest

from sim.prompt import Prompt, estimate_tokens
from workers.providers import anthropic, openai
from workers.providers.base import ChatRequest
from workers.providers.billing import input_tokens
from workers.providers.caching import mark_stable_prefix

MESSAGES = [
    {"role": "system", "content": "You review diffs. Answer APPROVE or REQUEST_CHANGES with one reason."},
    {"role": "user", "content": "--- a/README.md\n-teh\n+the\n" * 7},
]


@pytest.mark.parametrize("json_mode", [False, True])
def test_openai_wire_counts_as_the_simulator_bills(json_mode: bool) -> None:
    req = ChatRequest(model="m", messages=MESSAGES, json_mode=json_mode)
    body = openai.request_body(req)
    assert input_tokens("openai", req) == estimate_tokens(Prompt.from_wire(body["messages"]).text)


@pytest.mark.parametrize("json_mode", [False, True])
def test_anthropic_wire_counts_the_lifted_system_and_the_json_ask(json_mode: bool) -> None:
    req = ChatRequest(model="m", messages=MESSAGES, json_mode=json_mode)
    body = mark_stable_prefix(anthropic.request_body(req))  # what the client sends
    billed = estimate_tokens(Prompt.from_wire(body["messages"], body.get("system")).text)
    assert input_tokens("anthropic", req) == billed
    assert (input_tokens("anthropic", req) > input_tokens("openai", req)) == json_mode  # the ask is input too
