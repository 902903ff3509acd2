"""Where a reply comes from, in order: the model's scripted `answer` knob, a replay row for the exact
messages, a verdict if the prompt is a panel's arbiter prompt (`sim.arbiter`), else the
deterministic rule. Batch lines take the same path as live calls.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

from sim.arbiter import ArbiterRequest, verdict
from sim.knobs import Knobs
from sim.prompt import Prompt, estimate_tokens
from sim.replay import ReplayIndex
from sim.rules import rule_answer, rule_reply, unit


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
    logprob: float | None = None  # the sequence log-probability served when the request asks for it


class Answerer:
    def __init__(self, replay: ReplayIndex) -> None:
        self.replay = replay

    def reply(self, model: str, prompt: Prompt, knobs: Knobs, json_mode: bool = False,
              max_tokens: int | None = None, logprobs: bool = False) -> Reply:  # fmt: skip
        reply = self._reply(model, prompt, knobs, json_mode, max_tokens)
        if not logprobs:
            return reply
        rec = self.replay.lookup(model, prompt)
        return replace(reply, logprob=sequence_logprob(model, prompt, knobs, reply, rec.conf if rec else None))

    def _reply(self, model: str, prompt: Prompt, knobs: Knobs, json_mode: bool, max_tokens: int | None) -> Reply:
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


def sequence_logprob(model: str, prompt: Prompt, knobs: Knobs, reply: Reply, conf: float | None) -> float:
    """The log-probability served with a reply, in order: the `logprob` knob; a replay row's recorded
    `conf` (the source's log-probability; the served tokens sum to it); else deterministic by the
    rule's dice: a right answer in (-0.5, -0.05], a wrong one in (-2.0, -0.4] (so a threshold
    near -0.4 separates most right from wrong answers, as recorded log-probabilities roughly do)."""
    if knobs.logprob is not None:
        return knobs.logprob
    if reply.source == "replay" and conf is not None:
        return conf
    u = unit("logprob", model, prompt.sha)
    right = reply.source != "rule" or rule_answer(model, prompt, knobs.skill) == rule_answer("truth", prompt, 1.0)
    return -(0.05 + 0.45 * u) if right else -(0.4 + 1.6 * u)
