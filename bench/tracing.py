"""CPU cost of tracing on the hot path: the same agreeing 3-member panels through two identical
fleets side by side, one with OTLP export on (to a receiver in this process that decodes nothing,
as a collector would accept), one off. Rounds alternate between the fleets, so load from anything
else on the machine falls on both alike.

    python3 -m bench.tracing [--jobs 100] [--rounds 3]

Measured: CPU seconds (user + system) of every worker process (and its children) per decided job, from
/proc, and the ratio on / off. Beside it, each fleet's wall time and its idle CPU (what its
processes use per second with no job: sweeps, batch ticks, pool threads), and the ratio net of that idle
CPU over the rounds' wall time, so a fleet whose rounds ran longer on the loaded machine is not
charged its idle polling as tracing.
"""

from __future__ import annotations

import argparse
import os
import platform
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from producer.client import PanelClient
from producer.embedded import free_port
from producer.fleet import Fleet, WorkerSpec

FAST = {"latency_ms": 50, "answer": "B"}
MEMBERS = ("qwen2.5-72b-instruct", "qwen2.5-32b-coder-instruct", "llama3.1-70b")


def cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def tree(pid: int) -> list[int]:
    """pid and its descendants (a quarantine or prefork child, if any)."""
    kids: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                ppid = int(Path(f"/proc/{d}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except OSError:
                continue
            kids.setdefault(ppid, []).append(int(d))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += kids.get(p, [])
    return out


def worker_cpu(fleet: Fleet) -> float:
    return sum(cpu_seconds(p) for proc in fleet.procs.values() for p in tree(proc.pid))


class Sink:
    """An OTLP/HTTP endpoint that answers 200 to every export (the collector's side is not measured)."""

    def __init__(self) -> None:
        self.requests = 0

        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                self.rfile.read(int(self.headers["Content-Length"]))
                sink.requests += 1
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


def fleet(env: dict[str, str]) -> Fleet:
    return Fleet(workers=[WorkerSpec("control", "control", concurrency=16),
                          WorkerSpec("tiers", "llm.economy,llm.workhorse,llm.frontier,llm.batch", concurrency=64)],
                 env=env)  # fmt: skip


def round_(f: Fleet, client: PanelClient, jobs: int) -> tuple[float, float]:
    """(worker CPU seconds, wall seconds) for `jobs` agreeing panels, 32 in flight."""
    cpu0, t0 = worker_cpu(f), time.monotonic()
    tag = uuid.uuid4().hex[:8]
    waiting: list[str] = []
    for i in range(jobs):
        waiting.append(client.submit({"task_class": "multiple_choice", "lane": "panel",
                                      "prompt": f"{tag}-{i}: pick one\nA) w\nB) x\nC) y\nD) z"}))  # fmt: skip
        if len(waiting) >= 32:
            client.wait(waiting.pop(0), timeout=120)
    for jid in waiting:
        client.wait(jid, timeout=120)
    time.sleep(0.5)  # the exporter's batch (100 ms schedule) has left: its CPU is in this round
    return worker_cpu(f) - cpu0, time.monotonic() - t0


def idle_rate(f: Fleet, seconds: float = 5.0) -> float:
    """CPU seconds per second the fleet's workers use with no job in flight."""
    cpu0, t0 = worker_cpu(f), time.monotonic()
    time.sleep(seconds)
    return (worker_cpu(f) - cpu0) / (time.monotonic() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(prog="python3 -m bench.tracing", description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=100, help="panels per round per fleet")
    ap.add_argument("--rounds", type=int, default=3, help="rounds per fleet, alternating")
    args = ap.parse_args()
    sink = Sink()
    off = fleet({})
    on = fleet({"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{sink.server.server_address[1]}",
                "OTEL_BSP_SCHEDULE_DELAY": "100"})  # fmt: skip
    fleets = {"off": off, "on": on}
    try:
        for f in fleets.values():
            f.start()
            f.sim("/_sim/config", {"models": {m: FAST for m in MEMBERS}})
        clients = {k: PanelClient(f.redis_url) for k, f in fleets.items()}
        for k, f in fleets.items():  # warm-up: imports, connections, first spans
            round_(f, clients[k], 20)
        idle = {k: idle_rate(f) for k, f in fleets.items()}
        cpu = {k: 0.0 for k in fleets}
        wall = {k: 0.0 for k in fleets}
        for _ in range(args.rounds):
            for k, f in fleets.items():
                used, took = round_(f, clients[k], args.jobs)
                cpu[k] += used
                wall[k] += took
        n = args.jobs * args.rounds
        per = {k: cpu[k] / n * 1000 for k in fleets}
        net = {k: (cpu[k] - idle[k] * wall[k]) / n * 1000 for k in fleets}
        print(f"machine: {platform.machine()}, {os.cpu_count()} cores; {n} agreeing 3-member panels per fleet, "
              f"{args.rounds} alternating rounds; OTLP export requests received: {sink.requests}")  # fmt: skip
        print("| tracing | worker CPU ms per job | wall s | idle CPU ms/s | net of idle ms per job |\n|---|---|---|---|---|")
        for k in ("off", "on"):
            print(f"| {k} | {per[k]:.1f} | {wall[k]:.1f} | {idle[k] * 1000:.0f} | {net[k]:.1f} |")
        print(f"on/off CPU per job: {per['on'] / per['off']:.3f}; net of idle CPU: {net['on'] / net['off']:.3f}")
    finally:
        for f in fleets.values():
            f.stop()
        sink.server.shutdown()


if __name__ == "__main__":
    main()
