"""The batch client of a provider, made once per process on the runtime's IO loop."""

from __future__ import annotations

from workers.providers import make_batch_client
from workers.providers.batch import BatchClient
from workers.runtime import Runtime

_clients: dict[str, BatchClient] = {}


def backend_for(rt: Runtime, provider: str) -> BatchClient:
    if provider not in _clients:
        _clients[provider] = make_batch_client(provider, rt.registry.providers[provider], rt._http)
    return _clients[provider]
