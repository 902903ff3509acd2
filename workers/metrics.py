"""Prometheus metrics of a worker process, served on PANEL_METRICS_PORT (0: off).

They mirror the receipts (calls, tokens, cost, decisions) and show what receipts cannot:
429s, breaker state and limiter headroom. Flower's own /metrics covers task runtimes.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, start_http_server

CALLS = Counter("panel_calls_total", "Model calls by outcome", ["model", "provider", "status", "role"])
TOKENS = Counter("panel_tokens_total", "Tokens by direction", ["model", "direction"])
COST = Counter("panel_cost_usd_total", "Spend in USD", ["model", "batch"])
RATE_LIMITED = Counter("panel_provider_429_total", "429 answers from providers", ["provider", "model"])
DECISIONS = Counter("panel_decisions_total", "Jobs decided, by how", ["task_class", "decision"])
EARLY_EXITS = Counter("panel_early_exits_total", "Panels decided before every member answered", ["task_class"])
CALLS_SAVED = Counter("panel_calls_saved_total", "Member calls cancelled or never sent", ["task_class"])
ARBITER = Counter("panel_arbiter_calls_total", "Arbiter calls", ["task_class"])
BREAKER = Gauge("panel_breaker_state", "0 closed, 1 half-open, 2 open", ["key"])
HEADROOM_REQ = Gauge("panel_limiter_requests_available", "Requests grantable now", ["key"])
HEADROOM_TOK = Gauge("panel_limiter_tokens_available", "Tokens grantable now", ["key"])

_BREAKER_LEVEL = {"closed": 0, "half_open": 1, "open": 2}
_started = False


def serve(port: int) -> None:
    global _started
    if port and not _started:
        start_http_server(port)
        _started = True


def breaker_state(key: str, state: str) -> None:
    BREAKER.labels(key).set(_BREAKER_LEVEL.get(state, -1))
