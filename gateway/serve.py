"""`panel serve`: the gateway on uvicorn (uvloop + httptools when installed), one process; run
more replicas (or pods) for more, they share nothing but Redis."""

from __future__ import annotations

import logging

import uvicorn

from gateway.app import build_app
from gateway.settings import GatewaySettings


def serve(settings: GatewaySettings, redis_url: str | None = None, log_level: str = "info") -> None:
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app = build_app(settings, redis_url)
    # uvicorn's own access log prints the raw path and query; ours prints the route template only
    uvicorn.run(app, host=settings.host, port=settings.port, access_log=False, log_level=log_level,
                proxy_headers=True, server_header=False, timeout_graceful_shutdown=30)  # fmt: skip
