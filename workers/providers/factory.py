"""The one place a registry entry becomes a client: the class by `spec.api`, the base URL and key
from the environment variables the spec names (keys are never in files or arguments).

    chat = make_provider("fireworks", registry.providers["fireworks"], http)
    batches = make_batch_client("openai", registry.providers["openai"], http)
"""

from __future__ import annotations

import httpx

from workers.providers.anthropic import AnthropicMessages
from workers.providers.anthropic_batch import AnthropicBatches
from workers.providers.base import Provider, ProviderError
from workers.providers.batch import BatchClient
from workers.providers.openai import OpenAIChat
from workers.providers.openai_batch import OpenAIBatches
from workers.registry import ProviderSpec


def make_provider(provider_name: str, spec: ProviderSpec, client: httpx.AsyncClient) -> Provider:
    """A realtime client on the shared `client`. Raises ProviderError (not retryable) when the
    spec points at the provider's own endpoint and its key variable is unset."""
    base_url, key = _endpoint(provider_name, spec)
    if spec.api == "anthropic":
        return AnthropicMessages(provider_name, base_url, key, client=client)
    return OpenAIChat(provider_name, base_url, key, client=client)


def make_batch_client(provider_name: str, spec: ProviderSpec, client: httpx.AsyncClient) -> BatchClient:
    """The batch API client of the same provider, on the same terms as `make_provider`."""
    base_url, key = _endpoint(provider_name, spec)
    if spec.api == "anthropic":
        return AnthropicBatches(provider_name, base_url, key, client=client)
    return OpenAIBatches(provider_name, base_url, key, client=client)


def _endpoint(provider_name: str, spec: ProviderSpec) -> tuple[str, str | None]:
    base_url, key = spec.base_url(), spec.api_key()
    # A real provider always wants a key; a local base URL (simulator, vLLM, Ollama) may not.
    if not key and base_url.rstrip("/") == spec.default_base_url.rstrip("/"):
        raise ProviderError(
            provider_name,
            f"no API key: set {spec.key_env} (or {spec.base_url_env} to a local server that needs none)",
        )
    return base_url, key
