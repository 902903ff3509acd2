"""The HTTP front door (`panel serve`): a jobs API, an OpenAI-compatible chat endpoint and the
OpenAI Batch API on panels, per tenant. Stateless: any number of replicas over one Redis.

It is one more producer: it imports `producer` (contract, client, keys), never `workers`.
"""

from gateway.app import build_app
from gateway.settings import GatewaySettings

__all__ = ["GatewaySettings", "build_app"]
