"""Prometheus metrics per route (requests by status class, latency) and the access log: one
line per request with method, route template, status, duration and tenant; never a body, a
query string or a header value, so no prompt and no key reaches the log."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger("panel.gateway.access")
REGISTRY = CollectorRegistry()
REQUESTS = Counter("panel_gateway_requests_total", "HTTP requests by route, method and status class",
                   ["route", "method", "status"], registry=REGISTRY)  # fmt: skip
ERRORS = Counter("panel_gateway_errors_total", "4xx and 5xx answers by route and status class",
                 ["route", "status"], registry=REGISTRY)  # fmt: skip
LATENCY = Histogram("panel_gateway_request_seconds", "time to the response's first byte, by route", ["route"],
                    buckets=(0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 600),
                    registry=REGISTRY)  # fmt: skip


class Observe:
    """ASGI middleware: times each request to its response start, counts it by route template."""

    def __init__(self, app: ASGIApp, route_of: Callable[[Any], str]):
        self.app = app
        self.route_of = route_of

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def observed(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                route = self.route_of(scope.get("endpoint"))
                LATENCY.labels(route).observe(time.perf_counter() - start)
            await send(message)

        try:
            await self.app(scope, receive, observed)
        finally:
            route = self.route_of(scope.get("endpoint"))
            cls = f"{status // 100}xx"
            REQUESTS.labels(route, scope["method"], cls).inc()
            if status >= 400:
                ERRORS.labels(route, cls).inc()
            if log.isEnabledFor(logging.INFO):
                state = scope.get("state")
                tenant = state.get("tenant") if isinstance(state, dict) else None
                log.info("%s %s %d %.1fms tenant=%s", scope["method"], route, status,
                         (time.perf_counter() - start) * 1000, tenant or "-")  # fmt: skip
