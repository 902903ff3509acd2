"""The gateway's ASGI app (Starlette): routes per resource, errors mapped once to OpenAI's
shape, metrics and access log around everything, callback delivery in the background.

Starlette rather than FastAPI, by measurement (bench/gateway.py --frameworks): the same JSON
route costs ~9.5 us of framework time on Starlette and ~56 us on FastAPI (34 us with FastAPI
taking the raw Request). Every route here parses its own body anyway (JSONL, multipart, the
contract's field-naming errors), so FastAPI's validation would go unused; its one gift, the
OpenAPI document, is built from the same pydantic models in gateway/openapi.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import orjson
import redis
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway import batches, chat, files, jobs
from gateway.callbacks import Callbacks
from gateway.context import Gateway
from gateway.errors import ApiError, Unavailable
from gateway.metrics import REGISTRY, Observe
from gateway.openapi import document
from gateway.settings import GatewaySettings

log = logging.getLogger("panel.gateway")


async def api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return exc.response()


async def http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    kind = {404: "not_found_error", 405: "invalid_request_error"}.get(exc.status_code, "invalid_request_error")
    msg = "no such route; see /openapi.json" if exc.status_code == 404 else str(exc.detail)
    body = {"error": {"message": msg, "type": kind, "param": None, "code": str(exc.status_code)}}
    return Response(orjson.dumps(body), status_code=exc.status_code, media_type="application/json")


async def redis_error(request: Request, exc: Exception) -> Response:
    log.warning("redis unavailable: %s", type(exc).__name__)
    return Unavailable("the fleet's Redis is unavailable; retry shortly", code="redis_unavailable").response()


async def internal_error(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error on %s", request.url.path)
    body = {"error": {"message": "internal error; it was logged", "type": "api_error", "param": None, "code": None}}
    return Response(orjson.dumps(body), status_code=500, media_type="application/json")


def build_app(settings: GatewaySettings | None = None, redis_url: str | None = None) -> Starlette:
    settings = settings or GatewaySettings.from_env()

    async def metrics(request: Request) -> Response:
        return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)

    async def healthz(request: Request) -> Response:
        await request.app.state.gateway.redis.ping()
        return Response(b'{"ok":true}', media_type="application/json")

    async def openapi(request: Request) -> Response:
        return Response(orjson.dumps(document()), media_type="application/json")

    routes = [*jobs.routes, *chat.routes, *files.routes, *batches.routes,
              Route("/metrics", metrics), Route("/healthz", healthz), Route("/openapi.json", openapi)]  # fmt: skip
    names: dict[Any, str] = {r.endpoint: r.path for r in routes}

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        gateway = Gateway.make(settings, redis_url)
        app.state.gateway = gateway
        cb = Callbacks(gateway.redis, settings)
        task = asyncio.create_task(cb.run()) if settings.callbacks else None
        try:
            yield
        finally:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await cb.close()
            await gateway.close()

    return Starlette(
        routes=routes, lifespan=lifespan,
        middleware=[Middleware(Observe, route_of=lambda endpoint: names.get(endpoint, "(unmatched)"))],
        exception_handlers={ApiError: api_error, HTTPException: http_error, redis.RedisError: redis_error,
                            Exception: internal_error},
    )  # fmt: skip
