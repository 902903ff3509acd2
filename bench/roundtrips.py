"""Redis round trips, counted two ways for `bench.hotpath` (and `bench.panel_trace`): the server's
`total_reads_processed` split by connection from the kernel's per-socket count of data segments
(`ss -ti`), and MONITOR's command stream, where MULTI..EXEC is one round trip. Connections are
told apart by client name: pf-* the fleet's ("ours"), pf-producer the producer's, floor-* the
floor's state (bench/floor_task.py), bench-* the benchmark's own, unnamed ones kombu's (Celery's)."""

from __future__ import annotations

import subprocess
import threading
import time
from collections import Counter

import redis


def reads(r: redis.Redis) -> int:
    return int(r.info("stats")["total_reads_processed"])


class Monitor:
    """MONITOR on the bench's own redis-server, in a thread: every command with its client."""

    def __init__(self, url: str) -> None:
        self.r = redis.Redis.from_url(url, socket_timeout=0.5)
        self.lines: list[tuple[str, str]] = []  # (client "ip:port" or "lua", command)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with self.r.monitor() as m:
            while not self._stop.is_set():
                try:
                    c = m.next_command()
                except (redis.TimeoutError, TimeoutError):
                    continue
                except Exception:
                    return
                who = "lua" if c.get("client_type") == "lua" else f"{c['client_address']}:{c['client_port']}"
                words = str(c["command"]).split(" ", 2)
                cmd = words[0].upper()
                if cmd == "PUBLISH" and len(words) > 1:  # the channel says whose: task events, pidbox, ours
                    cmd = f"PUBLISH {words[1]}"
                self.lines.append((who, cmd))

    def __enter__(self) -> Monitor:
        self._thread.start()
        time.sleep(0.3)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


def client_names(r: redis.Redis) -> dict[str, str]:
    return {c["addr"]: c.get("name", "") for c in r.client_list()}


def segments_in(port: int) -> dict[str, int]:
    """Data segments the redis-server on `port` received, per client "ip:port" (`ss -ti`): one per
    request a client writes (a pipeline or MULTI..EXEC is one; a write past redis-py's 6,000-byte
    chunks is two), what `total_reads_processed` counts, split by connection."""
    out = subprocess.run(["ss", "-tinH", "state", "established", f"( sport = :{port} )"],
                         capture_output=True, text=True, check=False).stdout  # fmt: skip
    got, peer = {}, ""
    for line in out.splitlines():
        words = line.split()
        if len(words) >= 4 and not line[:1].isspace():
            peer = words[3]
        elif peer and (seg := next((w for w in words if w.startswith("data_segs_in:")), None)):
            got[peer] = int(seg.split(":")[1])
    return got


def whose(name: str) -> str:
    """The floor's state connection (floor-state) is a kind of its own, beside the fleet's (pf-*: the
    idle fleet's sweeps and flushes go on while the floor runs); its done counter (bench-floor) is the
    benchmark's own, as the bare task's (bench-bare)."""
    return ("producer" if name == "pf-producer" else "ours" if name.startswith("pf-") else "floor"
            if name.startswith("floor-") else "bench" if name.startswith("bench") else "celery")  # fmt: skip


def by_client(before: dict[str, int], after: dict[str, int], names: dict[str, str]) -> Counter[str]:
    """Round trips between two `segments_in`, by kind of client (a connection opened meanwhile counts
    from zero; one closed meanwhile is missed: the totals are printed beside the server's)."""
    out: Counter[str] = Counter()
    for addr, n in after.items():
        out[whose(names.get(addr, ""))] += n - before.get(addr, 0)
    return out


def split(lines: list[tuple[str, str]], names: dict[str, str]) -> dict[str, Counter[str]]:
    """Round trips and commands per kind of client; MULTI..EXEC is one round trip."""
    out: dict[str, Counter[str]] = {k: Counter() for k in ("celery", "ours", "floor", "bench", "lua")}
    in_multi: set[str] = set()
    for who, cmd in lines:
        if who == "lua":
            out["lua"]["commands"] += 1
            continue
        name = names.get(who, "")
        kind = "bench" if cmd == "MONITOR" else whose(name).replace("producer", "ours")
        out[kind]["commands"] += 1
        if cmd == "MULTI":
            in_multi.add(who)
            out[kind]["round_trips"] += 1
        elif cmd == "EXEC":
            in_multi.discard(who)
        elif who not in in_multi:
            out[kind]["round_trips"] += 1
        out[kind][cmd] += 1
    return out
