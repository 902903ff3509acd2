"""Every Redis command of a few agreeing panels, by process and round trip: where a member call's
round trips go (bench/RESULTS.md, the hot path).

    python3 -m bench.panel_trace                 # one panel after a warm-up; ours only
    python3 -m bench.panel_trace --panels 3 --celery

Starts a fleet as bench/hotpath.py does (agreeing 3-member panels, quorum 2, the slow member cut
off), submits `--panels` panels one at a time under MONITOR, and prints each command with its
process (control, tiers, the producer: this process) and a mark where a round trip starts.
MULTI..EXEC is one round trip; other commands of one connection less than `--gap-ms` apart are
taken as one pipeline (a guess: MONITOR does not show pipeline boundaries; the server's
`total_reads_processed`, which bench/hotpath.py reports, is the exact count). The sweep, census and
lease renewals run on timers and show up between panels.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

import redis

from bench.hotpath import bench_policies
from bench.overhead import MEMBERS
from bench.roundtrips import client_names
from producer.client import PanelClient
from producer.fleet import Fleet, default_workers


def socket_pids() -> dict[str, int]:
    """Local "ip:port" -> pid of every TCP socket (`ss -tnpH`)."""
    out = subprocess.run(["ss", "-tnpH"], capture_output=True, text=True, check=False).stdout
    pids = {}
    for line in out.splitlines():
        parts, pid = line.split(), re.search(r"pid=(\d+)", line)
        if len(parts) > 4 and pid:
            pids[parts[3]] = int(pid.group(1))
    return pids


def parent(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return 0


def process_name(pid: int, roots: dict[int, str]) -> str:
    """The fleet process `pid` is, or descends from (a pool or quarantine child)."""
    seen = pid
    while seen > 1:
        if seen in roots:
            return roots[seen]
        seen = parent(seen)
    return f"pid {pid}"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--panels", type=int, default=1)
    ap.add_argument("--celery", action="store_true", help="list Celery's (kombu's) commands too")
    ap.add_argument("--gap-ms", type=float, default=0.4, help="commands closer than this are one pipeline")
    args = ap.parse_args()
    fleet = Fleet(env={"PANEL_POLICIES": str(bench_policies())}, workers=default_workers(None))
    fleet.start()
    try:
        fleet.sim("/_sim/config", {"models": {m: {"latency_ms": ms, "answer": "B"} for m, ms in MEMBERS.items()}})
        client = PanelClient(fleet.redis_url)
        for _ in range(5):  # warm-up: imports, connections, loaded scripts
            client.wait(client.submit({"task_class": "multiple_choice", "lane": "panel", "prompt": f"w {uuid.uuid4().hex} A) x B) y"}), timeout=60)
        lines: list[tuple[float, str, str]] = []
        stop = threading.Event()
        mon = redis.Redis.from_url(fleet.redis_url, client_name="bench-monitor", socket_timeout=0.5)

        def watch() -> None:
            with mon.monitor() as m:
                while not stop.is_set():
                    try:
                        c = m.next_command()
                    except (redis.TimeoutError, TimeoutError):
                        continue
                    who = "lua" if c.get("client_type") == "lua" else f"{c['client_address']}:{c['client_port']}"
                    lines.append((float(c["time"]), who, str(c["command"])))

        t = threading.Thread(target=watch, daemon=True)
        t.start()
        time.sleep(0.5)
        for _ in range(args.panels):
            client.wait(client.submit({"task_class": "multiple_choice", "lane": "panel", "prompt": f"t {uuid.uuid4().hex} A) x B) y"}), timeout=60)
            time.sleep(1.5)  # the cut-off member's charge lands after the decision
        stop.set()
        t.join(5)
        names = client_names(redis.Redis.from_url(fleet.redis_url))
        pids = socket_pids()
        roots = {p.pid: name for name, p in fleet.procs.items()} | {os.getpid(): "producer"}
        last: dict[str, float] = {}
        in_multi: set[str] = set()
        trips: Counter[str] = Counter()
        for ts, who, cmd in lines:
            if who == "lua":
                continue
            name = names.get(who, "")
            if name.startswith("bench"):
                continue
            ours = name.startswith("pf-")
            proc = process_name(pids[who], roots) if who in pids else "?"
            verb = cmd.split(" ", 1)[0].strip("'\"").upper()
            new = who not in in_multi and not (who in last and (ts - last[who]) * 1000 < args.gap_ms)
            if verb == "MULTI":
                in_multi.add(who)
            elif verb == "EXEC":
                in_multi.discard(who)
            last[who] = ts
            kind = "ours" if ours else "celery"
            trips[f"{kind} {proc}"] += new
            if ours or args.celery:
                print(f"{'RT' if new else '  '} {ts:.4f} {kind:6} {proc:9} {cmd[:140]}")
        print(f"\nround trips ({args.panels} panels, timers included): "
              + ", ".join(f"{k} {v}" for k, v in sorted(trips.items())))  # fmt: skip
    finally:
        fleet.stop()


if __name__ == "__main__":
    main()
