"""Where a reply comes from, in order: the model's scripted `answer` knob, a replay row for the exact
messages, a verdict if the prompt is a panel's arbiter prompt (`sim.arbiter`), else the
deterministic rule. Batch lines take the same path as live calls.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from sim.arbiter import ArbiterRequest, verdict
from sim.knobs import Knobs
from sim.prompt import Prompt, estimate_tokens
from sim.replay import ReplayIndex
from sim.rules import rule_reply


@dataclass(frozen=True)
class Reply:
    text: str
    tokens_in: int
    tokens_out: int
    recorded_latency_ms: float | None
    source: Literal["scripted", "replay", "arbiter", "rule"]
    finish: Literal["stop", "length"] = "stop"
    cached_read: int = 0  # of tokens_in: read from the prompt cache (sim.prompt_cache)
    cache_write: int = 0  # of tokens_in: written to it (Anthropic bills these apart)


class Answerer:
    def __init__(self, replay: ReplayIndex) -> None:
        self.replay = replay

    def reply(self, model: str, prompt: Prompt, knobs: Knobs, json_mode: bool = False,
              max_tokens: int | None = None) -> Reply:  # fmt: skip
        tokens_in = estimate_tokens(prompt.text)
        if knobs.answer is not None:
            reply = Reply(knobs.answer, tokens_in, estimate_tokens(knobs.answer), None, "scripted")
        elif (rec := self.replay.lookup(model, prompt)) is not None:
            reply = Reply(rec.text, rec.tokens_in if rec.tokens_in is not None else tokens_in,
                          rec.tokens_out if rec.tokens_out is not None else estimate_tokens(rec.text),
                          rec.latency_ms, "replay")  # fmt: skip
        elif (request := ArbiterRequest.parse(prompt)) is not None:
            text, latency_ms = verdict(model, prompt, request, self.replay)
            reply = Reply(text, tokens_in, estimate_tokens(text), latency_ms, "arbiter")
        else:
            text = rule_reply(model, prompt, knobs.skill, json_mode)
            reply = Reply(text, tokens_in, estimate_tokens(text), None, "rule")
        if max_tokens is not None and reply.tokens_out > max_tokens:
            # What a real model does at its max_tokens: stop mid-answer and say so.
            return Reply(reply.text[: max_tokens * 4], reply.tokens_in, max_tokens,
                         reply.recorded_latency_ms, reply.source, "length")  # fmt: skip
        return reply
