"""httpx clients for the model providers: OpenAI-compatible chat, Anthropic Messages, both batch
APIs, and the retry loop around them. Everything a caller needs is importable from here."""

from workers.providers.anthropic import AnthropicMessages
from workers.providers.base import (
    ChatRequest,
    Completion,
    InputRejected,
    MalformedResponse,
    Provider,
    ProviderError,
    ProviderUnavailable,
    RateLimited,
)
from workers.providers.factory import make_provider
from workers.providers.openai import OpenAIChat
from workers.providers.retry import call_with_retries

__all__ = [
    "AnthropicMessages",
    "ChatRequest",
    "Completion",
    "InputRejected",
    "MalformedResponse",
    "OpenAIChat",
    "Provider",
    "ProviderError",
    "ProviderUnavailable",
    "RateLimited",
    "call_with_retries",
    "make_provider",
]
