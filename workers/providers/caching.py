"""Provider prompt caching: the stable prefix marked on the Anthropic wire, the cached/uncached
split read from each wire's usage, and a call priced and rate-counted by that split.

The stable prefix is what repeats across calls: the system turns (the arbiter's instructions
and rubric, a task's own system prompt). Anthropic caches a prefix only when a request marks
its end with `cache_control: {type: ephemeral}`; OpenAI-compatible providers cache any repeated
prefix automatically, so there the prefix only has to stay byte-identical and first (the
arbiter's system turn is rendered from the policy alone, and sent first).

    body = mark_stable_prefix(anthropic_body)                 # system -> blocks, last one marked
    cost = price(registry, "claude-3-5-sonnet", completion)   # reads/writes at their own rates
"""

from __future__ import annotations

from typing import Any, Protocol

from workers.providers.base import Completion

EPHEMERAL = {"type": "ephemeral"}


def mark_stable_prefix(body: dict[str, Any]) -> dict[str, Any]:
    """An Anthropic Messages body with its `system` as one text block marked for caching (the
    cache covers tools, system and everything before the marked block). No system: unchanged."""
    system = body.get("system")
    if isinstance(system, str) and system:
        return {**body, "system": [{"type": "text", "text": system, "cache_control": EPHEMERAL}]}
    return body


def openai_cached_tokens(usage: dict[str, Any]) -> int:
    """`usage.prompt_tokens_details.cached_tokens` (part of prompt_tokens); 0 when absent."""
    details = usage.get("prompt_tokens_details")
    cached = details.get("cached_tokens") if isinstance(details, dict) else None
    prompt = usage.get("prompt_tokens")
    if not isinstance(cached, int) or isinstance(cached, bool) or cached < 0:
        return 0
    return min(cached, prompt) if isinstance(prompt, int) and prompt >= 0 else 0


class Pricer(Protocol):
    def cost(self, name: str, tokens_in: int, tokens_out: int, batch: bool = False,
             cached: int = 0, cache_write: int = 0) -> float: ...  # fmt: skip


def price(registry: Pricer, model: str, c: Completion, batch: bool = False) -> float:
    """What the call cost: uncached input, cache reads and cache writes each at their price."""
    return registry.cost(model, c.tokens_in, c.tokens_out, batch, cached=c.tokens_cached,
                         cache_write=c.tokens_cache_write)  # fmt: skip


def limited_tokens(api: str, c: Completion) -> int:
    """The tokens a provider counts against its tokens-per-minute limit: Anthropic leaves cache
    reads out of its input-token limit; OpenAI counts the whole prompt, cached or not."""
    cached = c.tokens_cached if api == "anthropic" else 0
    return c.tokens_in - cached + c.tokens_out


def record_fields(registry: Pricer, model: str, c: Completion, batch: bool = False) -> dict[str, Any]:
    """The cache split as a call record carries it, with what it saved against the uncached
    price (negative when a cache write cost more than it will save); empty when nothing cached."""
    if not (c.tokens_cached or c.tokens_cache_write):
        return {}
    full = registry.cost(model, c.tokens_in, c.tokens_out, batch)
    return {"tokens_cached": c.tokens_cached, "tokens_cache_write": c.tokens_cache_write,
            "cache_saved_usd": full - price(registry, model, c, batch)}  # fmt: skip
