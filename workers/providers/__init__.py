"""httpx clients for the model providers: OpenAI-compatible chat, Anthropic Messages, both batch
APIs, and the retry loop around them. Everything a caller needs is importable from here."""

from workers.providers.anthropic import AnthropicMessages
from workers.providers.anthropic_batch import AnthropicBatches, build_batch_bodies
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
from workers.providers.batch import BatchClient, BatchResult, BatchState, BatchStatus
from workers.providers.factory import make_batch_client, make_provider
from workers.providers.openai import OpenAIChat
from workers.providers.openai_batch import BatchFile, OpenAIBatches, build_batch_files
from workers.providers.retry import call_with_retries

__all__ = [
    "AnthropicBatches",
    "AnthropicMessages",
    "BatchClient",
    "BatchFile",
    "BatchResult",
    "BatchState",
    "BatchStatus",
    "ChatRequest",
    "Completion",
    "InputRejected",
    "MalformedResponse",
    "OpenAIBatches",
    "OpenAIChat",
    "Provider",
    "ProviderError",
    "ProviderUnavailable",
    "RateLimited",
    "build_batch_bodies",
    "build_batch_files",
    "call_with_retries",
    "make_batch_client",
    "make_provider",
]
