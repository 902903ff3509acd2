"""The live status panel of `panel up`: workers, queues, breakers, calls/s and jobs/s.

Read from Redis only (queue lists, the providers' snapshot, the ledger stream), so it works the
same on the embedded Redis and a shared one. On a terminal it redraws in place (rich's Live); on
a pipe (a supervisor's log) it prints one line every ten refreshes.
"""

from __future__ import annotations

import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any, cast

import orjson
import redis
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table

from producer import connect, keys
from producer.fleet import Fleet

QUEUES = ("control", "llm.economy", "llm.workhorse", "llm.frontier", "llm.batch")
StreamEntries = list[tuple[bytes, dict[bytes, bytes]]]  # redis-py's XRANGE reply without decode_responses
PRIORITY_SUFFIXES = ("", ":3", ":6", ":9")  # kombu's Redis priority lists (producer/settings.py)


@dataclass
class Snapshot:
    workers: list[tuple[str, int, bool]]  # (name, pid, alive)
    queues: dict[str, int]
    breakers: dict[str, str]  # provider:model -> closed | open | half_open
    jobs_per_s: float
    calls_per_s: float
    decided: int


@dataclass
class Rates:
    """Jobs and calls per second over the last refresh, from the receipts appended since."""

    last_id: bytes = b"$"
    last_at: float = field(default_factory=time.monotonic)
    decided: int = 0

    def step(self, r: redis.Redis) -> tuple[float, float]:
        if self.last_id == b"$":  # start from the stream's end: rates of this run, not history
            info = cast(StreamEntries, r.xrevrange(keys.LEDGER_STREAM, count=1))
            self.last_id = info[0][0] if info else b"0-0"
            self.last_at = time.monotonic()
            return 0.0, 0.0
        entries = cast(StreamEntries, r.xrange(keys.LEDGER_STREAM, min=b"(" + self.last_id, count=100_000))
        now = time.monotonic()
        dt, self.last_at = max(now - self.last_at, 1e-3), now
        calls = 0
        for entry_id, fields in entries:
            self.last_id = entry_id
            receipt: dict[str, Any] = orjson.loads(fields[b"receipt"])
            calls += sum(1 for c in receipt["calls"] if c["status"] in ("answered", "failed", "late"))
        self.decided += len(entries)
        return len(entries) / dt, calls / dt


def snapshot(fleet: Fleet, r: redis.Redis, rates: Rates, extra: dict[str, subprocess.Popen[bytes]]) -> Snapshot:
    procs = {**fleet.procs, **extra}
    workers = [(name, p.pid, p.poll() is None) for name, p in procs.items()]
    pipe = r.pipeline()
    for q in QUEUES:
        for suffix in PRIORITY_SUFFIXES:
            pipe.llen(q + suffix)
    lens = pipe.execute()
    queues = {q: sum(lens[i * len(PRIORITY_SUFFIXES):(i + 1) * len(PRIORITY_SUFFIXES)]) for i, q in enumerate(QUEUES)}
    raw = r.get(keys.PROVIDERS_SNAPSHOT)
    breakers = {k: str(v.get("state", "?")) for k, v in orjson.loads(raw).items()} if raw else {}
    jobs_s, calls_s = rates.step(r)
    return Snapshot(workers, queues, breakers, jobs_s, calls_s, rates.decided)


def render(s: Snapshot) -> Group:
    w = Table(title="workers", title_justify="left")
    for col in ("process", "pid", "state"):
        w.add_column(col)
    for name, pid, alive in s.workers:
        w.add_row(name, str(pid), "[green]running[/]" if alive else "[red]exited[/]")
    q = Table(title="queues (messages waiting)", title_justify="left")
    q.add_column("queue")
    q.add_column("depth", justify="right")
    for name, depth in s.queues.items():
        q.add_row(name, str(depth))
    b = Table(title="breakers", title_justify="left")
    b.add_column("provider:model")
    b.add_column("state")
    for key, state in sorted(s.breakers.items()):
        b.add_row(key, state if state == "closed" else f"[bold red]{state}[/]")
    if not s.breakers:
        b.add_row("(no snapshot yet)", "")
    rate = f"[bold]{s.jobs_per_s:.1f} jobs/s  {s.calls_per_s:.1f} calls/s[/]  {s.decided} decided since start"
    return Group(w, q, b, rate)


def one_line(s: Snapshot) -> str:
    alive = sum(1 for _, _, a in s.workers if a)
    queued = " ".join(f"{k}={v}" for k, v in s.queues.items() if v)
    open_ = [k for k, v in s.breakers.items() if v != "closed"]
    return (f"panel up: {alive}/{len(s.workers)} processes, queued: {queued or 'none'}, "
            f"open breakers: {', '.join(open_) or 'none'}, {s.jobs_per_s:.1f} jobs/s {s.calls_per_s:.1f} calls/s")  # fmt: skip


@dataclass
class StatusPanel:
    fleet: Fleet
    flower: subprocess.Popen[bytes] | None = None

    def run(self, refresh_s: float) -> None:
        """Until interrupted (KeyboardInterrupt) or a worker exits (RuntimeError)."""
        r = redis.Redis.from_url(self.fleet.redis_url, **connect.timeouts())
        rates = Rates()
        extra = {"flower": self.flower} if self.flower is not None else {}
        console = Console(file=sys.stdout)
        try:
            if console.is_terminal:
                with Live(render(snapshot(self.fleet, r, rates, extra)), console=console, auto_refresh=False) as live:
                    while True:
                        time.sleep(refresh_s)
                        s = snapshot(self.fleet, r, rates, extra)
                        live.update(render(s), refresh=True)
                        self._check(s)
            tick = 0
            while True:
                time.sleep(refresh_s)
                s = snapshot(self.fleet, r, rates, extra)
                if tick % 10 == 0:
                    print(one_line(s), flush=True)
                tick += 1
                self._check(s)
        finally:
            r.close()

    def _check(self, s: Snapshot) -> None:
        dead = [name for name, _, alive in s.workers if not alive]
        if dead:
            raise RuntimeError(f"{', '.join(dead)} exited; logs in {self.fleet.log_dir} (kept)")
