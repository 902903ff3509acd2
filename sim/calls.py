"""The life of one simulated call, independent of the wire API: scripted failures, enforced limits,
fault dice, latency, then the answer. The API modules only parse requests and render outcomes.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from sim.aliases import Aliases
from sim.answers import Answerer, Reply
from sim.faults import FaultDice
from sim.knobs import Knobs, KnobStore
from sim.limits import Admission, Limits
from sim.prompt import Prompt
from sim.prompt_cache import PromptCache
from sim.replay import ReplayIndex
from sim.stats import Stats

# Waits the given seconds; True if the client went away meanwhile (the call is then abandoned).
Sleeper = Callable[[float], Awaitable[bool]]


@dataclass(frozen=True)
class Outcome:
    """`status` is the OpenAI-flavoured HTTP status; 0 means the connection is dropped unanswered."""

    status: int
    kind: str  # answered | down | fail_next | rate_limit | 429 | 500 | ... | timeout | disconnected
    reply: Reply | None = None
    retry_after_s: float | None = None  # None: send no Retry-After header
    admission: Admission | None = None

    @property
    def delivers_answer(self) -> bool:
        return self.kind == "answered"


@dataclass(frozen=True)
class CallSpec:
    model: str  # the registry name, after alias resolution
    prompt: Prompt
    json_mode: bool = False
    max_tokens: int | None = None
    logprobs: bool = False  # OpenAI `logprobs: true`: the reply carries token log-probabilities
    cache_prefix: str | None = None  # the prompt-cacheable prefix as the wire marks it (sim.prompt_cache)


class Simulator:
    """All mutable state of one simulator process; `reset()` returns it to how it started."""

    def __init__(self, *, replay: ReplayIndex | None = None, aliases: Aliases | None = None,
                 config: dict[str, Any] | None = None, seed: int = 0, base: Knobs | None = None,
                 prompt_cache: PromptCache | None = None) -> None:  # fmt: skip
        self.aliases = aliases or Aliases()
        self.answerer = Answerer(replay or ReplayIndex())
        self.knobs = KnobStore(config or {}, base or Knobs(), self.aliases.resolve)
        self.dice = FaultDice(seed)
        self.limits = Limits()
        self.stats = Stats()
        self.prompt_cache = prompt_cache or PromptCache()
        self.reset_hooks: list[Callable[[], None]] = [self.prompt_cache.clear]

    def reset(self) -> None:
        self.knobs.reset()
        self.dice.reset()
        self.limits.reset()
        self.stats.reset()
        for hook in self.reset_hooks:
            hook()

    def reply(self, spec: CallSpec) -> tuple[Knobs, Reply]:
        knobs = self.knobs.for_model(spec.model)
        return knobs, self.answerer.reply(spec.model, spec.prompt, knobs, spec.json_mode, spec.max_tokens, spec.logprobs)

    async def run(self, spec: CallSpec, sleep: Sleeper) -> Outcome:
        knobs, reply = self.reply(spec)
        if knobs.down:
            return Outcome(503, "down")
        if self.knobs.take_fail_next(spec.model):
            status = knobs.fail_status
            return Outcome(status, "fail_next", retry_after_s=None if status != 429 or knobs.omit_retry_after else knobs.retry_after_s)
        admission = None
        if knobs.rpm is not None or knobs.tpm is not None:
            # Providers charge a request's whole token count against tpm; the reply is known up front.
            admission = self.limits.admit(spec.model, time.monotonic(), reply.tokens_in + reply.tokens_out, knobs.rpm, knobs.tpm)
            if not admission.ok:
                return Outcome(429, "rate_limit", retry_after_s=admission.retry_after_s, admission=admission)
        fault = self.dice.draw(spec.model, knobs)
        if fault is not None and fault.kind == "timeout":
            await sleep(knobs.hang_s)
            return Outcome(0, "timeout")
        if fault is not None and fault.before_latency:
            retry = knobs.retry_after_s if fault.kind == "429" and not knobs.omit_retry_after else None
            return Outcome(fault.status, fault.kind, retry_after_s=retry, admission=admission)
        if await sleep(self.dice.latency_s(spec.model, knobs, reply.recorded_latency_ms)):
            return Outcome(499, "disconnected", reply=reply)
        split = self.prompt_cache.split(spec.model, spec.cache_prefix, reply.tokens_in)
        if split.read or split.write:
            reply = replace(reply, cached_read=split.read, cache_write=split.write)
        return Outcome(200, fault.kind if fault else "answered", reply=reply, admission=admission)


def build(*, replay_files: list[Path], models_yaml: Path | None, config: dict[str, Any] | None,
          seed: int, latency_ms: float | None, prompt_cache: PromptCache | None = None) -> Simulator:  # fmt: skip
    aliases = Aliases.from_registry(models_yaml) if models_yaml else Aliases()
    base = Knobs(latency_ms=latency_ms) if latency_ms is not None else Knobs()
    return Simulator(replay=ReplayIndex.load(replay_files), aliases=aliases, config=config, seed=seed, base=base,
                     prompt_cache=prompt_cache)  # fmt: skip
