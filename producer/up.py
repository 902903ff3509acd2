"""`panel up`: a long-running local fleet in one command, with a live status panel; Ctrl-C stops it.

Redis: the one at PANEL_REDIS_URL (or --redis-url), else an embedded redis-server (its data dir
is removed on stop). Providers: the simulator, unless a provider key is set in the environment
(then workers call the real providers with the keys and base URLs they find there). Workers: one
control worker (it also sweeps deadlines and flushes and polls batches: there is no beat) and one
tier worker process per core. Flower with --flower. Everything started is stopped on Ctrl-C or
SIGTERM, and every temp dir removed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from types import FrameType

from producer.embedded import RedisProcess, free_port, start_owned, stop_process, wait_port
from producer.fleet import Fleet, WorkerSpec, default_workers
from producer.up_status import StatusPanel

PROVIDER_KEYS = ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "FIREWORKS_API_KEY")


@dataclass
class UpOptions:
    redis_url: str | None = None
    redis_port: int = 6379
    workers: int = 0  # tier worker processes; 0: one per core
    concurrency: int = 0  # threads per tier process; 0: the fleet's split (producer/fleet.py)
    simulator: bool | None = None  # None: the simulator unless a provider key is set
    flower: bool = False
    flower_port: int = 5555
    refresh_s: float = 1.0


def plan_workers(tier_processes: int, concurrency: int) -> list[WorkerSpec]:
    """control (plans jobs, sweeps deadlines, flushes and polls batches) + one tier process per core (or
    `tier_processes`), threads as the fleet splits them unless `concurrency` is given."""
    workers = default_workers(tier_processes or None)
    if concurrency:
        workers = [w if w.name == "control" else replace(w, concurrency=concurrency) for w in workers]
    return workers


def use_simulator(opts: UpOptions) -> bool:
    if opts.simulator is not None:
        return opts.simulator
    return not any(os.environ.get(k) for k in PROVIDER_KEYS)


def _embedded_redis(port: int) -> RedisProcess:
    """The README's default port when it is free, so `PANEL_REDIS_URL` may stay unset; else any."""
    import socket

    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            port = free_port()
    return RedisProcess(port=port)


class _Stop(Exception):
    pass


def _raise_stop(signum: int, frame: FrameType | None) -> None:
    raise _Stop(signal.Signals(signum).name)


def run_up(opts: UpOptions) -> int:
    sim = use_simulator(opts)
    fleet = Fleet(workers=plan_workers(opts.workers, opts.concurrency), use_sim=sim)
    url = opts.redis_url or os.environ.get("PANEL_REDIS_URL")
    redis = None if url else _embedded_redis(opts.redis_port)
    flower: subprocess.Popen[bytes] | None = None
    failed = False
    # SIGTERM (a supervisor, `kill`) stops like Ctrl-C does
    signal.signal(signal.SIGTERM, _raise_stop)
    try:
        print(f"panel up: starting {'redis-server, ' if redis else ''}{'the simulator, ' if sim else ''}"
              f"{len(fleet.workers)} worker processes{' and Flower' if opts.flower else ''} (logs: {fleet.log_dir})",
              flush=True)  # fmt: skip
        if not sim:
            print(f"panel up: real providers (keys set: {', '.join(k for k in PROVIDER_KEYS if os.environ.get(k))})",
                  flush=True)  # fmt: skip
        fleet.start(redis=redis.start() if redis else None, redis_url=url)
        if opts.flower:
            flower = _start_flower(fleet, opts.flower_port)
        print(f"panel up: ready. In another shell: export PANEL_REDIS_URL={fleet.redis_url}", flush=True)
        if flower is not None:
            print(f"panel up: Flower on http://127.0.0.1:{opts.flower_port}", flush=True)
        print("panel up: Ctrl-C stops everything", flush=True)
        StatusPanel(fleet, flower).run(opts.refresh_s)
        return 0
    except (KeyboardInterrupt, _Stop):
        return 0
    except (RuntimeError, TimeoutError) as e:
        failed = True
        print(f"panel up: {e}", file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the clean-up short
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if flower is not None:
            stop_process(flower, timeout=10)
        fleet.stop(keep_logs=failed)
        if redis is not None:
            redis.close()
        kept = f" (logs kept in {fleet.log_dir})" if failed else ""
        print(f"panel up: stopped every process and removed its temp dirs{kept}", file=sys.stderr, flush=True)


def _start_flower(fleet: Fleet, port: int) -> subprocess.Popen[bytes]:
    args = [sys.executable, "-m", "celery", "-A", "workers.app", "flower", f"--port={port}", "--address=127.0.0.1"]
    log = open(Path(fleet.log_dir) / "flower.log", "ab")
    proc = start_owned(args, stdout=log, stderr=subprocess.STDOUT, env=fleet.worker_env())
    wait_port("127.0.0.1", port, timeout=60, proc=proc)
    return proc
