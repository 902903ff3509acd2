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
                loop=settings.loop, http=settings.http,
                proxy_headers=True, server_header=False, timeout_graceful_shutdown=30)  # fmt: skip


def start_process(redis_url: str, log_path: str, env: dict[str, str] | None = None, timeout: float = 60.0) -> tuple[object, str]:
    """A gateway as its own process (`python -m producer serve`) on a free loopback port, for the
    benchmark and the tests: (the process, its base URL)."""
    import subprocess
    import sys

    from producer.embedded import child_env, free_port, start_owned, wait_port

    port = free_port()
    args = [sys.executable, "-m", "producer", "--redis-url", redis_url, "serve", "--port", str(port)]
    proc = start_owned(args, stdout=open(log_path, "wb"), stderr=subprocess.STDOUT, env=child_env(env))
    wait_port("127.0.0.1", port, timeout=timeout, proc=proc)
    return proc, f"http://127.0.0.1:{port}"
