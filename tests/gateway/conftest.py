"""One real fleet (redis-server, simulator, Celery workers) and one real gateway process
(`python -m producer serve`, uvicorn on loopback) for the gateway tests; tenants made with the
same code as `panel keys create`."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import redis as redis_lib

from gateway.tenants import Keys
from producer.embedded import child_env, free_port, start_owned, stop_process, wait_port
from producer.fleet import Fleet

BATCH_ENV = {
    "PANEL_BATCH_TICK_S": "0.2",
    "PANEL_BATCH_MAX_AGE_S": "0.3",
    "PANEL_BATCH_REALTIME_MARGIN_S": "8",
}
GATEWAY_ENV = {
    "PANEL_GATEWAY_CALLBACK_BACKOFF_S": "0.3",
    "PANEL_GATEWAY_SSE_POLL_S": "0.1",
    "PANEL_GATEWAY_MAX_BODY_BYTES": str(1024 * 1024),
    "PANEL_GATEWAY_CALLBACK_PRIVATE_HOSTS": "1",  # the receivers are on loopback
}


@dataclass
class GatewayProc:
    url: str
    proc: subprocess.Popen[bytes]
    log: Path
    redis_url: str

    def restart_env(self) -> dict[str, str]:
        return dict(GATEWAY_ENV)


def start_gateway(redis_url: str, log_dir: Path, env: dict[str, str] | None = None) -> GatewayProc:
    port = free_port()
    log = log_dir / f"gateway-{port}.log"
    args = [sys.executable, "-m", "producer", "--redis-url", redis_url, "serve", "--port", str(port)]
    proc = start_owned(args, stdout=open(log, "wb"), stderr=subprocess.STDOUT,
                       env=child_env({**GATEWAY_ENV, **(env or {})}))  # fmt: skip
    wait_port("127.0.0.1", port, timeout=60, proc=proc)
    url = f"http://127.0.0.1:{port}"
    httpx.get(f"{url}/healthz", timeout=10).raise_for_status()
    return GatewayProc(url, proc, log, redis_url)


@pytest.fixture(scope="session")
def gw_fleet() -> Iterator[Fleet]:
    f = Fleet(env=BATCH_ENV)
    f.start()
    f.sim("/_sim/config", {"default": {"batch_delay_s": 0.4}})
    yield f
    f.stop()


@pytest.fixture(scope="session")
def gateway(gw_fleet: Fleet) -> Iterator[GatewayProc]:
    g = start_gateway(gw_fleet.redis_url, gw_fleet.log_dir)
    yield g
    stop_process(g.proc, timeout=10)


@pytest.fixture(scope="session")
def gw_redis(gw_fleet: Fleet) -> Iterator[redis_lib.Redis]:
    r = redis_lib.Redis.from_url(gw_fleet.redis_url)
    yield r
    r.close()


@dataclass
class Tenant:
    name: str
    key: str
    key_id: str
    secret: str


@pytest.fixture
def make_tenant(gw_redis: redis_lib.Redis):  # type: ignore[no-untyped-def]
    def make(prefix: str = "t", **kw: float) -> Tenant:
        name = f"{prefix}-{uuid.uuid4().hex[:8]}"
        k = Keys(gw_redis).create(name, **kw)  # type: ignore[arg-type]
        return Tenant(name, k.api_key, k.id, k.callback_secret)

    return make


@pytest.fixture
def tenant(make_tenant) -> Tenant:  # type: ignore[no-untyped-def]
    return make_tenant("acme")  # type: ignore[no-any-return]


NODE_DIR = Path(os.environ.get("PANEL_NODE_OPENAI_DIR", Path(__file__).resolve().parent / "node"))
