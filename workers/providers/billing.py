"""The input tokens of a request as it went on the wire: what a call cut off in flight (or lost
with its worker) is charged, since no usage ever comes back for it.

Counted the way the simulator bills (sim/prompt.py): the text of every turn as sent, system
first, joined by newlines, four characters a token, rounded up. That is exact against the
simulator, so a receipt matches its bill call for call; a real provider counts with its own
tokenizer, so against one this is an estimate of the same text (not of the 8-tokens-a-turn
worst case the limiter reserves).
"""

from __future__ import annotations

import math

from workers.providers import anthropic, openai
from workers.providers.base import ChatRequest


def sent_texts(api: str, request: ChatRequest) -> list[str]:
    """Each turn's text in the order the provider's wire carries it (`api`: openai | anthropic)."""
    if api == "anthropic":
        body = anthropic.request_body(request)  # system turns lifted, the JSON ask appended to them
        system = [str(body["system"])] if "system" in body else []
        return system + [str(m["content"]) for m in body["messages"]]
    return [str(m["content"]) for m in openai.request_body(request)["messages"]]


def input_tokens(api: str, request: ChatRequest) -> int:
    return max(1, math.ceil(len("\n".join(sent_texts(api, request))) / 4))
