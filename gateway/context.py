"""What every route needs, made once per process: Redis clients, the producer's client, the
admission script, the catalogue; plus the three steps every route starts with (admit the
caller, read a bounded body, parse it as JSON)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import anyio.to_thread
import redis.asyncio as aredis
from starlette.requests import Request

from gateway.catalogue import Catalogue
from gateway.errors import BadRequest, PayloadTooLarge, UnsupportedMediaType, from_json
from gateway.settings import GatewaySettings
from gateway.submission import Submitter
from gateway.tenants import Admission, Caller
from gateway.waiting import Jobs
from producer import connect, job_json
from producer.client import PanelClient
from producer.errors import ContractError
from producer.settings import Settings

T = TypeVar("T")


@dataclass
class Gateway:
    settings: GatewaySettings
    client: PanelClient  # blocking: used off the event loop (`blocking`)
    redis: aredis.Redis
    admission: Admission
    submitter: Submitter
    jobs: Jobs
    catalogue: Catalogue

    @classmethod
    def make(cls, settings: GatewaySettings, redis_url: str | None = None) -> Gateway:
        env = Settings.from_env()
        # the state Redis (PANEL_STATE_URL, else PANEL_REDIS_URL): jobs, results, tenants live there,
        # not on the broker when the two are apart (a Sentinel URL is followed through failovers)
        state = redis_url or env.state
        if connect.parse(state).kind == "cluster":
            raise connect.RedisUrlError(
                "PANEL_STATE_URL: the gateway does not run on Redis Cluster state yet (its batch, file and "
                "callback keys are not all in one slot per command; docs/cluster.md). Run the gateway against "
                "a plain or Sentinel-managed state Redis, or submit through the Python client.")  # fmt: skip
        client = PanelClient(redis_url, settings=env)
        r, _ = connect.async_state_clients(state, sentinel_master=client.settings.sentinel_master,
                                           max_connections=2048, pool_timeout_s=30, client_name="pf-gateway",
                                           health_check_interval=30,
                                           socket_timeout_s=client.settings.redis_socket_timeout_s)  # fmt: skip
        return cls(settings, client, r, Admission(r, settings, client.settings.tenant_budget_usd),
                   Submitter(client), Jobs(r), Catalogue.load())  # fmt: skip

    async def blocking(self, fn: Callable[..., T], *args: Any, short: bool = False) -> T:
        """Run a blocking producer call (Redis + broker round trips) in a worker thread, so a slow
        Redis stalls that request, not every request on this process. A `short` call (one job:
        two pipelined round trips) runs on the loop itself when PANEL_GATEWAY_SUBMIT_INLINE is set."""
        if short and self.settings.submit_inline:
            return fn(*args)
        return await anyio.to_thread.run_sync(fn, *args)

    async def close(self) -> None:
        await self.redis.aclose()
        self.client.close()


def gw(request: Request) -> Gateway:
    return request.app.state.gateway  # type: ignore[no-any-return]


async def admit(request: Request) -> Caller:
    caller = await gw(request).admission.admit(request.headers.get("authorization"))
    request.state.tenant = caller.tenant  # for the access log
    return caller


async def body(request: Request, limit: int, param: str = "body") -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"{param}: {declared} bytes is over this route's limit of {limit}; split the request",
                              param=param, code="body_too_large")  # fmt: skip
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"{param}: over this route's limit of {limit} bytes; split the request",
                                  param=param, code="body_too_large")  # fmt: skip
        chunks.append(chunk)
    return b"".join(chunks)


async def json_body(request: Request) -> Any:
    ctype = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
    if ctype not in ("application/json", ""):
        raise UnsupportedMediaType(f"content-type {ctype!r}: send application/json", param="content-type",
                                   code="unsupported_media_type")  # fmt: skip
    raw = await body(request, gw(request).settings.max_body_bytes)
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise BadRequest(f"body: not UTF-8 at byte {e.start}; send UTF-8 JSON", param="body",
                         code="invalid_encoding") from None  # fmt: skip
    try:  # the producer's reader: a 65-bit integer is refused, not silently made a float
        return job_json.load(raw)
    except ContractError as e:
        raise from_json(e, "body") from None
