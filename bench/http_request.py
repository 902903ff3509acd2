"""What a member's provider request costs in httpx, and whether building it differently helps:
CPU per request of six ways to send the same chat completion to the simulator on loopback.

    python3 -m bench.http_request                    # 3 rounds of 3000 requests per way, ~1 min
    python3 -m bench.http_request --rounds 5

Ways, each on one pooled `httpx.AsyncClient` (the runtime's limits), 24 requests in flight:
- `request`: what workers/providers/_http.py does: `client.request` with the key header and the
  content type merged per request and an `httpx.Timeout` per request;
- `client_headers`: the headers set once on the client, `client.request` with the body only;
- `prebuilt`: an `httpx.Request` built by hand (client headers, timeout extension) and `client.send`;
- `prebuilt_timeout`: the same with the timeout extension built once;
- `network`: `request` on the runtime's transport (workers/providers/network.py: httpx's pool on a
  backend whose per-connection liveness check looks the socket up once).
- `pools`: `request` on the runtime's client transport, `network.Pools` (eight such pools, requests
  dealt in turn: each pool's bookkeeping stays small).
`--in-flight` sets the concurrency, and so the pool's size: httpcore checks every pooled connection
per request, so the client's CPU per request grows with it (8 and 32 show the spread).
Rounds alternate the ways; the simulator answers at once (the client's CPU, not the wait, is measured).
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import statistics
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
import orjson

from producer.embedded import free_port, stop_process, wait_port
from workers.providers import network

MODEL = "qwen2.5-72b-instruct"
KEY = "sim-local-key-not-a-secret"
WAYS = ("request", "client_headers", "prebuilt", "prebuilt_timeout", "network", "pools")
TIMEOUT = httpx.Timeout(30.0, connect=10.0)


def own_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


async def cpu_per_request(url: str, way: str, n: int, in_flight: int = 24) -> float:
    """CPU microseconds per request of `way`, after 100 requests of warm-up."""
    headers = {"authorization": f"Bearer {KEY}", "content-type": "application/json"}
    limits = httpx.Limits(max_connections=2000, max_keepalive_connections=500)
    body = {"model": MODEL, "messages": [{"role": "user", "content": "pick A) x B) y " * 5}], "max_tokens": 64}
    on_client = headers if way not in ("request", "network", "pools") else None
    timeout_once = TIMEOUT.as_dict()
    transport: httpx.AsyncBaseTransport | None = (
        network.transport(limits) if way == "network" else network.Pools(limits) if way == "pools" else None)
    async with httpx.AsyncClient(limits=limits, timeout=TIMEOUT, headers=on_client, transport=transport) as client:
        sem = asyncio.Semaphore(in_flight)

        async def one() -> None:
            async with sem:
                content = orjson.dumps(body)
                if way in ("request", "network", "pools"):
                    h = dict(headers)
                    r = await client.request("POST", url, headers=h, content=content, timeout=httpx.Timeout(30.0, connect=10.0))
                elif way == "client_headers":
                    r = await client.request("POST", url, content=content, timeout=httpx.Timeout(30.0, connect=10.0))
                else:
                    ext = timeout_once if way == "prebuilt_timeout" else httpx.Timeout(30.0, connect=10.0).as_dict()
                    r = await client.send(httpx.Request("POST", url, headers=client.headers, content=content,
                                                        extensions={"timeout": ext}))  # fmt: skip
                r.raise_for_status()
                orjson.loads(r.content)

        run: Callable[[int], Awaitable[list[None]]] = lambda k: asyncio.gather(*[one() for _ in range(k)])  # noqa: E731
        await run(100)
        start = own_cpu()
        await run(n)
        return (own_cpu() - start) / n * 1e6


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--requests", type=int, default=3000, help="per way and round")
    ap.add_argument("--in-flight", type=int, default=24, help="concurrent requests (the pool grows to about this)")
    args = ap.parse_args()
    port = free_port()
    models = Path(__file__).resolve().parent.parent / "policies" / "models.yaml"
    sim = subprocess.Popen([sys.executable, "-m", "sim", "--host", "127.0.0.1", "--port", str(port), "--models", str(models)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        wait_port("127.0.0.1", port, timeout=30, proc=sim)
        httpx.post(f"http://127.0.0.1:{port}/_sim/config", json={"models": {MODEL: {"latency_ms": 0, "answer": "B"}}})
        url = f"http://127.0.0.1:{port}/v1/chat/completions"
        got: dict[str, list[float]] = {w: [] for w in WAYS}
        for _ in range(args.rounds):
            for way in WAYS:
                got[way].append(asyncio.run(cpu_per_request(url, way, args.requests, args.in_flight)))
        base = statistics.median(got["request"])
        for way in WAYS:
            med = statistics.median(got[way])
            print(f"{way:17} CPU us/request: median {med:5.0f} ({med / base:.2f}x request); rounds "
                  + ", ".join(f"{x:.0f}" for x in got[way]))
    finally:
        stop_process(sim)


if __name__ == "__main__":
    main()
