"""The provider seam: one request shape in, one `Completion` out, typed errors for every failure.

Every API family (OpenAI-compatible chat, Anthropic Messages) implements `Provider`:

    completion = await client.complete(ChatRequest(model="gpt-4o-mini", messages=[...]))

Clients never retry by themselves; `retry.py` decides, so the fleet-wide limiter and breaker
see every attempt.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from producer.errors import PanelError


@dataclass(frozen=True)
class ChatRequest:
    model: str  # the provider's model id (registry `wire_model`)
    messages: list[dict[str, str]]
    max_tokens: int = 1024
    temperature: float = 0.0
    json_mode: bool = False
    logprobs: bool = False  # ask for token log-probabilities (OpenAI wire only; a cascade's logprob check)
    timeout_s: float = 60.0
    metadata: dict[str, str] = field(default_factory=dict)  # never sent upstream; for logs by id


@dataclass(frozen=True)
class Completion:
    text: str
    tokens_in: int
    tokens_out: int
    latency_ms: float
    model: str
    provider: str
    finish_reason: str
    # of tokens_in (always the whole prompt): read from the provider's prompt cache / written to it
    tokens_cached: int = 0
    tokens_cache_write: int = 0
    logprob: float | None = None  # the completion's sequence log-probability, when asked and returned


class ProviderError(PanelError):
    """A call failed. `retryable` says whether trying again can help."""

    retryable = False

    def __init__(self, provider: str, message: str, status: int | None = None, retry_after: float | None = None):
        self.provider, self.status, self.retry_after = provider, status, retry_after
        super().__init__(f"{provider}: {message}" + (f" (HTTP {status})" if status else ""))


class RateLimited(ProviderError):
    """429: `retry_after` seconds from the provider's header, if it sent one."""

    retryable = True


class ProviderUnavailable(ProviderError):
    """5xx, connect or read timeout, connection reset."""

    retryable = True


class MalformedResponse(ProviderError):
    """A body that is not the API's JSON: truncated, malformed, or missing its choices."""

    retryable = True


class InputRejected(ProviderError):
    """4xx other than 429: the request itself is wrong; retrying would pay for nothing."""

    retryable = False


class Provider(Protocol):
    name: str

    async def complete(self, request: ChatRequest) -> Completion: ...

    async def aclose(self) -> None: ...
