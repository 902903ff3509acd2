"""Provider prompt caching as each wire reports it. A request's cacheable prefix (OpenAI: its
leading system turns, cached automatically; Anthropic: the system blocks up to the last one
marked `cache_control`) seen for the same model within the TTL is a cache read; seen first, it
is a write (Anthropic bills writes apart; OpenAI reports only reads). Prefixes shorter than
`min_tokens` are never cached, as with the real providers (1024 tokens by default).
"""

from __future__ import annotations

import hashlib
import threading
import time
from dataclasses import dataclass
from typing import Any

from sim.prompt import estimate_tokens

DEFAULT_TTL_S = 300.0  # Anthropic's ephemeral cache lives 5 minutes; OpenAI's 5-10
DEFAULT_MIN_TOKENS = 1024


@dataclass(frozen=True)
class CacheSplit:
    read: int = 0
    write: int = 0


def openai_prefix(messages: Any) -> str | None:
    """The leading system (or developer) turns, which OpenAI-compatible caching reuses."""
    if not isinstance(messages, list):
        return None
    parts: list[str] = []
    for m in messages:
        if (
            not isinstance(m, dict)
            or m.get("role") not in ("system", "developer")
            or not isinstance(m.get("content"), str)
        ):
            break
        parts.append(m["content"])
    return "\n".join(parts) or None


def anthropic_prefix(system: Any) -> str | None:
    """The system blocks through the last one marked `cache_control`; None when none is marked."""
    if not isinstance(system, list):
        return None
    last = max((i for i, b in enumerate(system) if isinstance(b, dict) and b.get("cache_control")), default=-1)
    if last < 0:
        return None
    return "".join(str(b.get("text", "")) for b in system[: last + 1] if isinstance(b, dict))


class PromptCache:
    def __init__(self, ttl_s: float = DEFAULT_TTL_S, min_tokens: int = DEFAULT_MIN_TOKENS) -> None:
        self.ttl_s, self.min_tokens = ttl_s, min_tokens
        self._seen: dict[str, float] = {}  # model + prefix sha -> expiry (monotonic)
        self._lock = threading.Lock()

    def split(self, model: str, prefix: str | None, tokens_in: int) -> CacheSplit:
        """Look the prefix up (and refresh it, as a hit does); the part of `tokens_in` it covers."""
        if not prefix:
            return CacheSplit()
        tokens = min(estimate_tokens(prefix), tokens_in)
        if tokens < self.min_tokens:
            return CacheSplit()
        key = model + ":" + hashlib.sha256(prefix.encode()).hexdigest()
        now = time.monotonic()
        with self._lock:
            hit = self._seen.get(key, 0.0) > now
            self._seen[key] = now + self.ttl_s
        return CacheSplit(read=tokens) if hit else CacheSplit(write=tokens)

    def clear(self) -> None:
        with self._lock:
            self._seen.clear()
