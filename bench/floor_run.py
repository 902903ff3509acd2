"""Running the floor (bench/floor_task.py) inside `bench.hotpath`: its forms, its worker processes
(each started as the bare worker is), sending panels to it and reading its decisions."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from dataclasses import dataclass

import redis

from bench.overhead import MEMBERS
from producer.embedded import child_env
from producer.fleet import Fleet


@dataclass(frozen=True)
class FloorForm:
    """One way of running the floor (bench/floor_task.py): which pair of floor worker processes
    (`fleet`: the pair run with BARE_AS=fleet), whether the producer sends one start task per panel
    to the control queue or the three members itself, and how the control publishes and the
    members call."""

    label: str
    fleet: bool = False
    hop: bool = True
    batch: bool = False  # the control's three publishes in one kombu batch (one pipeline)
    http: str = "sync"  # "async": one asyncio loop thread per process, as the fleet's runtime

    def queue(self, role: str) -> str:
        return f"bench.floor{'.fleet' if self.fleet else ''}.{role}"


FLOORS = (
    FloorForm("floor, with the control hop"),
    FloorForm("floor, producer publishes members", hop=False),
    FloorForm("floor, with the control hop, the three members in one batch publish (as the fleet's control)", batch=True),
    FloorForm("floor, with the control hop, httpx async on one loop thread per process (as the fleet's runtime)",
              http="async"),
    FloorForm("floor with the fleet's Celery settings (BARE_AS=fleet), with the control hop", fleet=True),
    FloorForm("floor with the fleet's Celery settings (BARE_AS=fleet), producer publishes members", fleet=True, hop=False),
    # the closest to the fleet: what its code adds beyond these choices is fleet / this floor
    FloorForm("floor with each choice the fleet made: its Celery settings, the control hop, one batch publish, "
              "httpx async", fleet=True, batch=True, http="async"),
)  # fmt: skip


def run_floor(fleet: Fleet, r: redis.Redis, panels: int, rate: float, form: FloorForm) -> dict[str, float]:
    """Send `panels` panels at `rate` and wait for every member to finish (as `run_bare`); returns
    each panel's id and when it was sent."""
    from bench import floor_task

    floor_task.app.conf.broker_url = fleet.redis_url
    r.delete("bench:floor:done")
    sent: dict[str, float] = {}
    kwargs = {"http": form.http} if form.http != "sync" else {}
    for _ in range(panels):
        t = time.perf_counter()
        panel_id = uuid.uuid4().hex
        prompt = f"floor {panel_id} A) x B) y"
        sent[panel_id] = time.time()
        if form.hop:
            floor_task.start.apply_async(args=[fleet.sim_url, prompt, panel_id], queue=form.queue("control"),
                                         kwargs={**kwargs, "batch": True} if form.batch else kwargs)  # fmt: skip
        else:
            for i, m in enumerate(MEMBERS):
                floor_task.member.apply_async(args=[fleet.sim_url, m, prompt, panel_id, f"m{i}"], kwargs=kwargs,
                                              queue=form.queue("members"))  # fmt: skip
        time.sleep(max(0.0, 1 / rate - (time.perf_counter() - t)))
    end = time.time() + 120
    while int(r.get("bench:floor:done") or 0) < panels * len(MEMBERS) and time.time() < end:
        time.sleep(0.1)
    return sent


def floor_decisions(r: redis.Redis, sent: dict[str, float]) -> tuple[list[float], int]:
    """Each decided panel's latency (send to the decision's write, the worker's clock) and how many
    panels were not decided."""
    from bench.floor_task import panel_keys

    pipe = r.pipeline(transaction=False)
    for panel_id in sent:
        pipe.hget(panel_keys(panel_id)[2], "at")
    got = [(float(at) - t) for at, t in zip(pipe.execute(), sent.values(), strict=True) if at is not None]
    return got, len(sent) - len(got)


def start_floor_workers(redis_url: str, member_threads: int, processes: int) -> dict[bool, dict[str, subprocess.Popen[bytes]]]:
    """Per pair of settings (fleet settings or Celery's defaults): a control process (16 threads,
    as the fleet's) and `processes` member processes, started as the bare worker is."""
    floors: dict[bool, dict[str, subprocess.Popen[bytes]]] = {}  # fleet settings? -> role -> process
    for as_fleet in sorted({f.fleet for f in FLOORS}):
        q = FloorForm("", fleet=as_fleet).queue
        env = child_env({"PANEL_REDIS_URL": redis_url, "FLOOR_MEMBERS_QUEUE": q("members"),
                         **({"BARE_AS": "fleet"} if as_fleet else {})})  # fmt: skip
        roles = [("floor control", q("control"), 16)] + [
            (f"floor members{f' {i + 1}' if processes > 1 else ''}", q("members"), member_threads)
            for i in range(processes)]  # fmt: skip
        floors[as_fleet] = {
            role: subprocess.Popen(
                [sys.executable, "-m", "celery", "-A", "bench.floor_task", "worker", "-Q", queue, "--pool", "threads",
                 "-c", str(threads), "--without-mingle", "--without-gossip", "-E", "--loglevel", "INFO",
                 "-n", f"{role.replace(' ', '-')}{'-fleet' if as_fleet else ''}@%h"], env=env,
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            for role, queue, threads in roles}  # fmt: skip
    return floors
