"""The gateway's cost: overhead per job against the Python client, submissions/s of one gateway
process, and jobs/s through `POST /v1/jobs:batch`, all against one fleet in one run.

    python -m bench.gateway [--overhead 400] [--single 3000] [--concurrency 32] [--batch-jobs 20000]
                            [--batch-lines 1000] [--live-workers] [--frameworks]

- overhead: the same job submitted alternately by `PanelClient.submit` in this process and by
  POST /v1/jobs to the gateway (one keep-alive connection), one at a time: p50/p95 of each; the
  gateway's added time is the difference of the p50s.
- single: `--concurrency` connections post /v1/jobs as fast as the gateway answers; submissions
  per second of wall time, and per CPU-second of the gateway process (what one process does with
  a whole core, on a machine whose cores are shared with the load generator and Redis).
- batch: JSONL bodies of `--batch-lines` jobs, two in flight; jobs per second.
The load generator is a minimal HTTP/1.1 client on asyncio streams (an httpx client spends more
CPU per request than the gateway, and would measure itself). Workers are paused (SIGSTOP) while
measuring, so the machine's two cores go to the front door; `--live-workers` keeps them running.
`--frameworks` times the same JSON route in Starlette and FastAPI in-process (the choice in
gateway/app.py).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import time
from pathlib import Path

import orjson

from bench.overhead import cpu_seconds
from gateway.tenants import Keys
from producer.client import PanelClient
from producer.embedded import stop_process
from producer.fleet import Fleet

JOB = {"task_class": "extraction", "prompt": "Invoice 42: total $12.50. Extract the total."}


class Conn:
    """One keep-alive HTTP/1.1 connection: request, then read the status and the whole body."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, host: str, key: str):
        self.reader, self.writer, self.host, self.key = reader, writer, host, key

    @classmethod
    async def open(cls, url: str, key: str) -> Conn:
        host, port = url.removeprefix("http://").split(":")
        r, w = await asyncio.open_connection(host, int(port))
        return cls(r, w, f"{host}:{port}", key)

    async def post(self, path: str, body: bytes, ctype: str = "application/json") -> tuple[int, bytes]:
        head = (f"POST {path} HTTP/1.1\r\nHost: {self.host}\r\nAuthorization: Bearer {self.key}\r\n"
                f"Content-Type: {ctype}\r\nContent-Length: {len(body)}\r\n\r\n").encode()  # fmt: skip
        self.writer.write(head + body)
        status_line = await self.reader.readline()
        length = 0
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            if line[:15].lower() == b"content-length:":
                length = int(line[15:])
        return int(status_line.split()[1]), await self.reader.readexactly(length)

    def close(self) -> None:
        self.writer.close()


def pct(xs: list[float], q: float) -> float:
    return statistics.quantiles(xs, n=100, method="inclusive")[int(q) - 1] if len(xs) > 1 else xs[0]


async def overhead(url: str, key: str, client: PanelClient, tenant: str, n: int, pid: int) -> dict[str, float]:
    conn = await Conn.open(url, key)
    body = orjson.dumps(JOB)
    direct: list[float] = []
    via: list[float] = []
    job = dict(JOB, tenant=tenant)
    cpu0 = 0.0
    for i in range(n + 20):
        if i == 20:
            cpu0 = cpu_seconds(pid)
        t0 = time.perf_counter()
        client.submit(job)
        t1 = time.perf_counter()
        status, _ = await conn.post("/v1/jobs", body)
        t2 = time.perf_counter()
        assert status == 202, status
        if i >= 20:  # warm-up
            direct.append((t1 - t0) * 1000)
            via.append((t2 - t1) * 1000)
    cpu_ms = (cpu_seconds(pid) - cpu0) / n * 1000
    conn.close()
    return {"gateway_cpu_ms": cpu_ms, "direct_p50_ms": pct(direct, 50), "direct_p95_ms": pct(direct, 95), "gateway_p50_ms": pct(via, 50),
            "gateway_p95_ms": pct(via, 95), "added_p50_ms": pct(via, 50) - pct(direct, 50)}  # fmt: skip


async def single(url: str, key: str, pid: int, n: int, concurrency: int) -> dict[str, float]:
    conns = [await Conn.open(url, key) for _ in range(concurrency)]
    body = orjson.dumps(JOB)
    left = n
    bad = 0

    async def run(c: Conn) -> None:
        nonlocal left, bad
        while left > 0:
            left -= 1
            status, _ = await c.post("/v1/jobs", body)
            bad += status != 202

    cpu0, t0 = cpu_seconds(pid), time.perf_counter()
    await asyncio.gather(*(run(c) for c in conns))
    wall, cpu = time.perf_counter() - t0, cpu_seconds(pid) - cpu0
    for c in conns:
        c.close()
    return {"jobs": n, "rejected": bad, "per_s": n / wall, "per_cpu_s": n / cpu, "gateway_cpu_share": cpu / wall}


async def batch(url: str, key: str, pid: int, jobs: int, lines: int, in_flight: int = 2) -> dict[str, float]:
    body = b"\n".join([orjson.dumps(JOB)] * lines)
    conns = [await Conn.open(url, key) for _ in range(in_flight)]
    left = jobs // lines
    bad = 0

    async def run(c: Conn) -> None:
        nonlocal left, bad
        while left > 0:
            left -= 1
            status, out = await c.post("/v1/jobs:batch", body, "application/jsonl")
            bad += status != 200 or len(orjson.loads(out)["submitted"]) != lines

    cpu0, t0 = cpu_seconds(pid), time.perf_counter()
    await asyncio.gather(*(run(c) for c in conns))
    wall, cpu = time.perf_counter() - t0, cpu_seconds(pid) - cpu0
    done = (jobs // lines) * lines
    for c in conns:
        c.close()
    return {"jobs": done, "bad_requests": bad, "per_s": done / wall, "per_cpu_s": done / cpu, "gateway_cpu_share": cpu / wall}


def frameworks(n: int = 5000) -> dict[str, float]:
    """Framework time of one JSON POST route, called in-process through ASGI (no sockets)."""
    from fastapi import FastAPI
    from pydantic import BaseModel
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    class Body(BaseModel):
        task_class: str
        prompt: str

    async def plain(request: Request) -> Response:
        b = Body.model_validate_json(await request.body())
        return Response(orjson.dumps({"id": "x", "task_class": b.task_class}), media_type="application/json")

    fa = FastAPI()

    @fa.post("/v1/jobs")
    async def typed(body: Body) -> dict[str, str]:
        return {"id": "x", "task_class": body.task_class}

    fr = FastAPI()
    fr.add_api_route("/v1/jobs", plain, methods=["POST"])
    apps = {"starlette": Starlette(routes=[Route("/v1/jobs", plain, methods=["POST"])]), "fastapi_model": fa, "fastapi_request": fr}
    payload = orjson.dumps(JOB)
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "path": "/v1/jobs",
             "raw_path": b"/v1/jobs", "query_string": b"", "root_path": "", "scheme": "http", "server": ("127.0.0.1", 80),
             "client": ("127.0.0.1", 1), "headers": [(b"content-type", b"application/json"),
                                                     (b"content-length", str(len(payload)).encode())]}  # fmt: skip

    async def call(app: object) -> None:
        sent = False

        async def receive() -> dict[str, object]:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": payload, "more_body": False}
            return {"type": "http.disconnect"}

        async def send(m: dict[str, object]) -> None:
            pass

        await app(dict(scope), receive, send)  # type: ignore[operator]

    async def measure() -> dict[str, float]:
        out: dict[str, float] = {}
        for name, app in apps.items():
            for _ in range(300):
                await call(app)
            t = time.perf_counter()
            for _ in range(n):
                await call(app)
            out[f"{name}_us"] = (time.perf_counter() - t) / n * 1e6
        return out

    return asyncio.run(measure())


def pause(fleet: Fleet, sig: int) -> None:
    for p in fleet.procs.values():
        os.killpg(p.pid, sig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--overhead", type=int, default=400)
    ap.add_argument("--single", type=int, default=3000)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--batch-jobs", type=int, default=20000)
    ap.add_argument("--batch-lines", type=int, default=1000)
    ap.add_argument("--live-workers", action="store_true")
    ap.add_argument("--frameworks", action="store_true")
    ap.add_argument("--plain", action="store_true", help="uvicorn on asyncio + h11 (not uvloop + httptools)")
    ap.add_argument("--inline", action="store_true", help="PANEL_GATEWAY_SUBMIT_INLINE=1: one job's submit on the event loop")
    args = ap.parse_args()
    if args.frameworks:
        print("framework time per JSON POST (in-process ASGI):",
              " ".join(f"{k}={v:.1f}" for k, v in frameworks().items()))  # fmt: skip
    fleet = Fleet()
    fleet.start()
    gw = None
    try:
        from gateway.serve import start_process

        gw, url = start_process(fleet.redis_url, str(Path(fleet.log_dir) / "gateway.log"),
                                {"PANEL_GATEWAY_RATE_PER_S": "1000000", "PANEL_GATEWAY_RATE_BURST": "1000000",
                                 "PANEL_GATEWAY_SUBMIT_INLINE": "1" if args.inline else "",
                                 "PANEL_GATEWAY_LOOP": "asyncio" if args.plain else "auto",
                                 "PANEL_GATEWAY_HTTP": "h11" if args.plain else "auto"})  # fmt: skip
        client = PanelClient(fleet.redis_url)
        key = Keys(client.redis).create("bench")
        if not args.live_workers:
            pause(fleet, signal.SIGSTOP)
        o = asyncio.run(overhead(url, key.api_key, client, "bench", args.overhead, gw.pid))  # type: ignore[attr-defined]
        print(f"overhead ({args.overhead} jobs, one at a time): direct p50 {o['direct_p50_ms']:.2f} ms p95 {o['direct_p95_ms']:.2f} ms; "
              f"gateway p50 {o['gateway_p50_ms']:.2f} ms p95 {o['gateway_p95_ms']:.2f} ms; added p50 {o['added_p50_ms']:.2f} ms "
              f"(x{o['gateway_p50_ms'] / o['direct_p50_ms']:.2f}); gateway CPU {o['gateway_cpu_ms']:.2f} ms per job")  # fmt: skip
        s = asyncio.run(single(url, key.api_key, gw.pid, args.single, args.concurrency))  # type: ignore[attr-defined]
        print(f"single POST /v1/jobs ({s['jobs']} jobs, {args.concurrency} connections): {s['per_s']:.0f} submissions/s wall, "
              f"{s['per_cpu_s']:.0f} per gateway CPU-second (gateway used {s['gateway_cpu_share']:.0%} of a core); rejected {s['rejected']}")  # fmt: skip
        b = asyncio.run(batch(url, key.api_key, gw.pid, args.batch_jobs, args.batch_lines))  # type: ignore[attr-defined]
        print(f"POST /v1/jobs:batch ({b['jobs']} jobs, {args.batch_lines} a request): {b['per_s']:.0f} jobs/s wall, "
              f"{b['per_cpu_s']:.0f} per gateway CPU-second (gateway used {b['gateway_cpu_share']:.0%} of a core); "
              f"x{b['per_s'] / s['per_s']:.1f} the single-job rate; bad requests {b['bad_requests']}")  # fmt: skip
        print(f"load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())}, cores: {os.cpu_count()}")
        client.close()
    finally:
        if not args.live_workers:
            pause(fleet, signal.SIGCONT)
        if gw is not None:
            stop_process(gw, timeout=10)  # type: ignore[arg-type]
        fleet.stop()


if __name__ == "__main__":
    main()
