"""The floor of the fleet's shape, with no panel-fleet code: what any implementation of a panel
that keeps the fleet's guarantees on Redis pays per member call, measured in `bench.hotpath`
beside the bare task (bench/bare_task.py) it is modelled on. Same broker, pool, Celery settings
(`SAME`), task class, HTTP client and `BARE_AS` switch as the bare task; on top of it, the shape:

- `bench.floor.start(base_url, prompt, panel_id)` runs on a control queue and publishes the
  panel's three members to a members queue (`FLOOR_MEMBERS_QUEUE`): one publish each, or one
  kombu batch publish (`batch=True`: their LPUSHes in one pipeline, as the fleet's control sends
  them);
- `bench.floor.member(base_url, model, prompt, panel_id, member)` makes one Redis round trip
  before its call (floor_admit.lua: breaker flag, per-minute request and token counters, a daily
  budget, each capped), the bare task's HTTP call, and one after (floor_land.lua: records the
  call, counts the vote, writes the decision once an answer has a quorum of 2).

Run as workers: `celery -A bench.floor_task worker -Q bench.floor.control --pool threads -c 16`
and `celery -A bench.floor_task worker -Q bench.floor.members --pool threads -c 128`; the producer
may also send `bench.floor.member` itself (the shape without the control hop).

What the floor leaves out, so the fleet's extra cost over it is an upper bound on what its code
could save: the straggler is not cancelled (the bare task does not cancel either: the third
call runs to the end and lands a vote that decides nothing), no retry or deadline sweep, no
idempotency, no beat. Like the bare task, each member ends with one INCR that tells the benchmark
it finished (also when it fails, so a refusal shows as an undecided panel instead of a wait).
The call is sync httpx by default, as the bare task's; `http="async"` hands it to one asyncio
loop thread per process holding an `httpx.AsyncClient`, as the fleet's runtime does.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import httpx
import redis
from celery import Celery

from bench import bare_task
from bench.overhead import MEMBERS
from workers.app import PanelTask
from workers.app import app as fleet_app
from workers.deferred_ack import DeferredAcks
from workers.task_events import BufferedTaskEvents

CONTROL_QUEUE = "bench.floor.control"
MEMBERS_QUEUE = os.environ.get("FLOOR_MEMBERS_QUEUE", "bench.floor.members")
QUORUM = 2
KEYS_TTL_S = 3600
MAX_TOKENS = 256  # what admission reserves for the answer, beside the prompt's ~4 characters per token
RPM, TPM, BUDGET = 1_000_000, 1_000_000_000, 10**15  # caps far above the load: measure the cost, not the limit

app = Celery("floor", broker=bare_task.url, task_cls=PanelTask)
app.conf.update({k: fleet_app.conf[k] for k in bare_task.SAME}, task_default_queue=CONTROL_QUEUE)
# BARE_AS as for the bare task (importing it applied the kombu client's half of it to this process)
if "events" in bare_task.SETTINGS:
    app.steps["consumer"].add(BufferedTaskEvents)
if "acks" in bare_task.SETTINGS:
    app.steps["consumer"].add(DeferredAcks)
_http = bare_task._http  # the bare task's own client: same library, same limits
KEY = bare_task.KEY
_state = redis.Redis.from_url(bare_task.url, client_name="floor-state", decode_responses=True)
_done = redis.Redis.from_url(bare_task.url, client_name="bench-floor")
_here = Path(__file__).resolve().parent
_admit = _state.register_script((_here / "floor_admit.lua").read_text())
_land = _state.register_script((_here / "floor_land.lua").read_text())


class Refused(Exception):
    """Admission said no (breaker open, rate or budget cap): the floor does not wait or retry."""


class _Loop:
    """One asyncio loop thread per process with one `httpx.AsyncClient`, made on first use: the
    fleet runtime's way of making a call from a pool thread (workers/runtime.py), without its race
    against the panel's decision."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._client: httpx.AsyncClient | None = None

    def run(self, coro: Coroutine[Any, Any, httpx.Response]) -> httpx.Response:
        with self._lock:
            if self._loop is None:
                self._loop = asyncio.new_event_loop()
                threading.Thread(target=self._loop.run_forever, name="floor-io", daemon=True).start()
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    async def post(self, url: str, **kw: Any) -> httpx.Response:
        if self._client is None:  # on the loop's thread: the client is bound to this loop
            limits = httpx.Limits(max_connections=2000, max_keepalive_connections=500)  # the bare task's
            self._client = httpx.AsyncClient(timeout=30, limits=limits)
        return await self._client.post(url, **kw)


_loop = _Loop()


def post(base_url: str, model: str, prompt: str, http: str) -> httpx.Response:
    kw: dict[str, Any] = {"headers": {"Authorization": f"Bearer {KEY}"},
                          "json": {"model": model, "messages": [{"role": "user", "content": prompt}]}}  # fmt: skip
    url = f"{base_url}/v1/chat/completions"
    return _loop.run(_loop.post(url, **kw)) if http == "async" else _http.post(url, **kw)


def panel_keys(panel_id: str) -> list[str]:
    """The panel's calls, tally and decision hashes, in one hash slot."""
    return [f"floor:{{{panel_id}}}:{k}" for k in ("calls", "tally", "decision")]


@app.task(name="bench.floor.start", bind=True, acks_late=True)
def start(self: object, base_url: str, prompt: str, panel_id: str, batch: bool = False, http: str = "sync") -> None:
    sends = [([base_url, model, prompt, panel_id, f"m{i}"], {"http": http} if http != "sync" else {})
             for i, model in enumerate(MEMBERS)]  # fmt: skip
    if not batch:
        for args, kwargs in sends:
            member.apply_async(args=args, kwargs=kwargs, queue=MEMBERS_QUEUE)
        return
    with app.producer_or_acquire() as producer, producer.batch():
        for args, kwargs in sends:
            member.apply_async(args=args, kwargs=kwargs, queue=MEMBERS_QUEUE, producer=producer)


@app.task(name="bench.floor.member", bind=True, acks_late=True)
def member(self: object, base_url: str, model: str, prompt: str, panel_id: str, member: str, http: str = "sync") -> str:
    try:
        tokens = len(prompt) // 4 + MAX_TOKENS
        now = time.time()
        minute, day = int(now // 60), int(now // 86400)
        said = _admit(keys=[f"floor:breaker:{model}", f"floor:rpm:{model}:{minute}", f"floor:tpm:{model}:{minute}",
                            f"floor:budget:{day}"], args=[tokens, RPM, TPM, BUDGET, tokens])  # fmt: skip
        if said != "ok":
            raise Refused(f"{model}: {said}")
        t0 = time.perf_counter()
        r = post(base_url, model, prompt, http)
        r.raise_for_status()
        body = r.json()
        answer = str(body["choices"][0]["message"]["content"]).strip()
        used = int(body.get("usage", {}).get("total_tokens", 0))
        ms = int((time.perf_counter() - t0) * 1000)
        return str(_land(keys=panel_keys(panel_id),
                         args=[member, model, answer, ms, used, QUORUM, KEYS_TTL_S, f"{time.time():.6f}"]))  # fmt: skip
    finally:
        _done.incr("bench:floor:done")
