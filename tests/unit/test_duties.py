"""The fleet's periodic duties in turns (workers/duties.py) on a real redis-server: control workers
that tick together run each duty once per interval between them, a slow batch flush or poll does
not hold up the deadline sweep, a run that raises does not stop the next, a warm stop waits for a
run in progress, and only workers that consume `control` run them (the bootstep starts the sweep,
the flush and the poll, and no beat schedule is left to send them)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from itertools import pairwise
from pathlib import Path
from types import SimpleNamespace

import redis

from producer import keys
from producer.settings import Settings
from tests.waiting import eventually
from workers import duties
from workers.duties import Duty

REPO = Path(__file__).resolve().parents[2]
DUTIES = ("sweep", "flush", "poll")


class Runs:
    """When each duty started, and how many runs ended, from whichever thread ran them. A run may
    hold until `released` is set (a flush waiting on its upload)."""

    def __init__(self) -> None:
        self.at: dict[str, list[float]] = {}
        self.ended: dict[str, int] = {}
        self.lock = threading.Lock()
        self.released = threading.Event()

    def of(self, name: str, holds: bool = False) -> Callable[[], int]:
        def run() -> int:
            with self.lock:
                self.at.setdefault(name, []).append(time.monotonic())
            if holds:
                self.released.wait()
            with self.lock:
                self.ended[name] = self.ended.get(name, 0) + 1
            return 0

        return run

    def count(self, name: str) -> int:
        with self.lock:
            return len(self.at.get(name, []))


# One control worker process's duty threads, as its bootstep starts them; each run is recorded in Redis.
WORKER = """
import sys, time
import redis
from producer import keys
from workers import duties
from workers.duties import Duty

r, interval = redis.Redis.from_url(sys.argv[1]), float(sys.argv[2])
def run(name):
    return lambda: r.rpush(f"test:runs:{name}", f"{time.time()} {duties.WHO}")
duties.start(r, Duty("deadline sweep", keys.SWEEP_TURN, interval, run("sweep")),
             Duty("batch flush", keys.BATCH_FLUSH_TURN, interval, run("flush")),
             Duty("batch poll", keys.BATCH_POLL_TURN, interval, run("poll")))
print("ticking", flush=True)
time.sleep(600)
"""


def test_two_worker_processes_on_one_redis_run_each_duty_once_per_interval(redis_url: str,
                                                                          redis_client: redis.Redis) -> None:  # fmt: skip
    interval = 0.2
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, redis_url, str(interval)], cwd=REPO,
                              env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.PIPE) for _ in range(2)]  # fmt: skip
    try:
        for p in procs:
            assert p.stdout is not None and p.stdout.readline() == b"ticking\n"
        eventually(lambda: all(redis_client.llen(f"test:runs:{n}") >= 8 for n in DUTIES), "eight runs of each duty")
    finally:
        for p in procs:
            p.kill()
            p.wait()
    for name in DUTIES:
        at = sorted(float(e.split()[0]) for e in redis_client.lrange(f"test:runs:{name}", 0, -1))
        gaps = [b - a for a, b in pairwise(at)]
        # A turn lasts TURN_SHARE (0.8) of the interval, so runs are that far apart, less the jitter
        # between taking the turn and recording the run. Two processes each running every interval
        # on their own would leave gaps of p and interval - p for some phase p: one at most half.
        assert min(gaps) >= interval * 0.6, (name, gaps)


def test_a_slow_batch_flush_and_poll_do_not_hold_up_the_sweep(redis_client: redis.Redis) -> None:
    runs = Runs()
    running = duties.start(redis_client, Duty("deadline sweep", keys.SWEEP_TURN, 0.05, runs.of("sweep")),
                           Duty("batch flush", keys.BATCH_FLUSH_TURN, 0.05, runs.of("flush", holds=True)),
                           Duty("batch poll", keys.BATCH_POLL_TURN, 0.05, runs.of("poll", holds=True)))  # fmt: skip
    try:
        eventually(lambda: runs.count("flush") and runs.count("poll"), "a flush and a poll waiting on the provider")
        sweeps = runs.count("sweep")
        eventually(lambda: runs.count("sweep") >= sweeps + 5, "sweeps while the flush and the poll wait")
        assert runs.count("flush") == 1 and runs.count("poll") == 1 and not runs.ended.get("flush")
    finally:
        runs.released.set()
        running.stop()


def test_a_run_that_raises_does_not_stop_the_next(redis_client: redis.Redis) -> None:
    calls: list[int] = []

    def sweep() -> int:
        calls.append(1)
        if len(calls) == 1:
            raise ConnectionError("redis went away")
        return 0

    running = duties.start(redis_client, Duty("deadline sweep", keys.SWEEP_TURN, 0.05, sweep))
    try:
        eventually(lambda: len(calls) >= 3, "sweeps after the one that raised")
    finally:
        running.stop()


def test_a_warm_stop_waits_for_a_flush_under_way_and_starts_no_other(redis_client: redis.Redis) -> None:
    runs = Runs()
    running = duties.start(redis_client, Duty("batch flush", keys.BATCH_FLUSH_TURN, 0.05, runs.of("flush", holds=True)))
    eventually(lambda: runs.count("flush") == 1, "a flush waiting on its upload")
    threading.Timer(0.3, runs.released.set).start()  # the upload ends while the worker is stopping
    running.stop(wait_s=30.0)
    assert runs.ended.get("flush") == 1, "stop returned before the flush's upload ended"
    assert not any(t.is_alive() for t in running.threads) and runs.count("flush") == 1


def test_only_workers_taking_control_run_the_duties() -> None:
    def app(consume_from: dict[str, object] | None) -> SimpleNamespace:
        return SimpleNamespace(amqp=SimpleNamespace(queues=SimpleNamespace(consume_from=consume_from)))

    assert duties.consumes_control(app({"control": object()}))
    assert duties.consumes_control(app(None)), "no -Q: every queue, control too"
    assert not duties.consumes_control(app({"llm.economy": object(), "llm.frontier": object()}))


def test_control_workers_run_the_sweep_and_the_batch_ticks_on_their_settings_and_no_beat_sends_them() -> None:
    from workers.app import Duties, app
    from workers.tasks import control_duties, run_batch_flush, run_batch_poll, run_sweep

    s = Settings(sweep_interval_s=0.7, batch_tick_s=3.0)
    assert [(d.name, d.turn_key, d.interval_s, d.run) for d in control_duties(s)] == [
        ("deadline sweep", keys.SWEEP_TURN, 0.7, run_sweep),
        ("batch flush", keys.BATCH_FLUSH_TURN, 3.0, run_batch_flush),
        ("batch poll", keys.BATCH_POLL_TURN, 3.0, run_batch_poll),
    ]
    assert len({d.turn_key for d in control_duties(s)}) == 3, "a turn per duty: one must not skip another's"
    assert Duties in app.steps["worker"]
    assert not app.conf.beat_schedule, "a beat would send the batch ticks again, beside the control workers' own"
