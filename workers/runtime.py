"""Per-process runtime: one asyncio loop in a background thread holding the process's single
httpx.AsyncClient, the Redis clients, the loaded policies, limiter and breaker.

Celery's threads pool runs task bodies in threads; each body hands its provider call to this loop
(`call`), which races it against the panel's decision: when another member wins the quorum the
call is cancelled mid-flight (the connection is closed), not awaited. An AsyncClient is never
shared across loops (encode/httpx#2473): there is exactly one loop per process.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager, suppress
from typing import Any, TypeVar

import httpx
import redis

from producer import connect, keys
from producer.settings import Settings
from workers.budget import Budget
from workers.errors import Cancelled
from workers.jobstore import JobStore
from workers.limits import BreakerConfig, CircuitBreaker, RateLimiter
from workers.panel.admission import Admissions
from workers.panel.calls import ModelCaller
from workers.panel.ports import Chord
from workers.panel.state import PanelStore
from workers.policy import PolicyTable
from workers.providers.base import Provider
from workers.registry import Registry

__all__ = ["Cancelled", "Runtime", "runtime"]

log = logging.getLogger("panel.runtime")
# httpx logs every request line at INFO: one line per provider call is noise at fleet rates and
# costs CPU the calls need; our own call records and metrics carry what an operator reads.
logging.getLogger("httpx").setLevel(logging.WARNING)
T = TypeVar("T")
WATCH_READ_S = 1.0  # one wait of the decision watch: a quiet channel is no socket timeout
# redis-py 8.0.1 on (redis-py#4119): pub/sub's listen() waits past the socket timeout, with no timer
# per read; before, it fails a quiet channel's wait after the socket timeout (8.0.0: after its 5 s default)
_REDIS_PY = tuple(int(n) for n in re.findall(r"\d+", redis.__version__)[:3])
LISTEN_WAITS = _REDIS_PY >= (8, 0, 1)


class Runtime:
    _instance: Runtime | None = None
    _pid = 0
    _lock = threading.Lock()

    @classmethod
    def get(cls) -> Runtime:
        """The process's runtime, made on first use (after any fork)."""
        with cls._lock:
            if cls._instance is None or cls._pid != os.getpid():
                cls._instance = cls(Settings.from_env())
                cls._pid = os.getpid()
            return cls._instance

    def __init__(self, settings: Settings):
        self.settings = settings
        self.registry = Registry.load()
        self.policies = PolicyTable.load(self.registry)
        # redis-py 8 pools raise MaxConnectionsError past 100 connections; 256 task threads would
        # hit it under load and fail their tasks. A blocking pool makes a thread wait its turn.
        # The state store (PANEL_STATE_URL: one Redis, Sentinel or Cluster; producer/connect.py).
        self.redis: redis.Redis = settings.state_client("pf-worker")  # RedisCluster: same commands
        self.store = PanelStore(self.redis, self.settings.lease_s)
        self.jobs = JobStore(self.redis, self.policies, settings.result_ttl_s)
        self.limiter = RateLimiter(self.redis)
        self.breaker = CircuitBreaker(self.redis, BreakerConfig(
            window_s=settings.breaker_window_s, min_calls=settings.breaker_min_calls,
            failure_rate=settings.breaker_failure_rate, open_s=settings.breaker_open_s))  # fmt: skip
        self.budget = Budget(self.redis, settings.tenant_budget_usd)
        # the narrow view the panel path is given (workers/panel/ports.py)
        self.chord = Chord(store=self.store, registry=self.registry, jobs=self.jobs, caller=ModelCaller(self),
                           admission=Admissions(self))  # fmt: skip
        self._providers: dict[str, Provider] = {}
        self._waiters: dict[str, set[asyncio.Event]] = {}  # panel id -> its calls' events (any thread adds)
        self._waiters_lock = threading.Lock()
        self._watch = threading.local()  # the panel this thread's member task watches (`watching`)
        self._subscribed = False  # the decided channel is subscribed now: a watched call needs no check
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="panel-io", daemon=True)
        self._thread.start()
        self._http: httpx.AsyncClient = self.run(self._make_http())
        self._aredis, self._apubsub = connect.async_state_clients(
            settings.state, sentinel_master=settings.sentinel_master,
            max_connections=settings.redis_max_connections, pool_timeout_s=settings.redis_pool_timeout_s, client_name="pf-worker-io",
            socket_timeout_s=settings.redis_socket_timeout_s)  # fmt: skip
        asyncio.run_coroutine_threadsafe(self._watch_decisions(), self.loop)
        from workers import metrics

        metrics.serve(settings.metrics_port)

    async def _make_http(self) -> httpx.AsyncClient:
        from workers.providers import network  # its pool's liveness check made cheap (the module says)

        return network.client(httpx.Limits(max_connections=2000, max_keepalive_connections=500),
                              httpx.Timeout(self.settings.call_timeout_s, connect=10.0))  # fmt: skip

    def run(self, coro: Awaitable[T], timeout: float | None = None) -> T:
        fut: Future[T] = asyncio.run_coroutine_threadsafe(coro, self.loop)  # type: ignore[arg-type]
        return fut.result(timeout)

    def provider(self, name: str) -> Provider:
        if name not in self._providers:
            from workers.providers import make_provider

            self._providers[name] = make_provider(name, self.registry.providers[name], self._http)
        return self._providers[name]

    # --- cancellation: one pub/sub subscription per process fans decisions out to local calls
    async def _watch_decisions(self) -> None:
        while True:
            pubsub = self._apubsub.pubsub()
            try:
                await pubsub.subscribe(keys.DECIDED_CHANNEL)
                async for msg in _messages(pubsub):
                    if msg.get("type") == "subscribe":
                        self._subscribed = True
                    elif msg.get("type") == "message":
                        with self._waiters_lock:
                            events = tuple(self._waiters.get(msg["data"].decode(), ()))
                        for ev in events:
                            ev.set()
            except asyncio.CancelledError:
                raise
            except Exception as e:  # a Redis blip: resubscribe; calls check `decided` on start meanwhile
                log.warning("decision watch reconnecting after %s", type(e).__name__)
            finally:
                self._subscribed = False
                with suppress(Exception):  # its connection back to the pool, or each blip keeps one for good
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
            await asyncio.sleep(0.5)

    def _add_waiter(self, panel_id: str, ev: asyncio.Event) -> None:
        with self._waiters_lock:
            self._waiters.setdefault(panel_id, set()).add(ev)

    def _drop_waiter(self, panel_id: str, ev: asyncio.Event) -> None:
        with self._waiters_lock:
            waiters = self._waiters.get(panel_id)
            if waiters is not None:
                waiters.discard(ev)
                if not waiters:
                    self._waiters.pop(panel_id, None)

    @contextmanager
    def watching(self, panel_id: str) -> Iterator[None]:
        """Watch `panel_id`'s decided message for this thread's member task, from before its
        start read (PanelStore.turn, which reads `decided`) until it ends: a decision after that
        read sets the event, one before it is seen by the read, so the member's calls need no
        `decided` check of their own (one round trip less per member call). A call made while
        the channel is not subscribed (the process starting, a Redis blip) still checks."""
        ev = asyncio.Event()  # bound to the IO loop when first awaited there (Python >= 3.10)
        self._add_waiter(panel_id, ev)
        prior = getattr(self._watch, "current", None)
        self._watch.current = (panel_id, ev)
        try:
            yield
        finally:
            self._watch.current = prior
            self._drop_waiter(panel_id, ev)

    async def _race(self, panel_id: str, make: Callable[[], Awaitable[T]],
                    watched: asyncio.Event | None = None) -> T:  # fmt: skip
        ev = watched or asyncio.Event()
        if watched is None:
            self._add_waiter(panel_id, ev)
        try:
            if watched is None and await self._aredis.hexists(keys.panel(panel_id), "decided"):
                raise Cancelled(panel_id)
            if ev.is_set():  # decided since the member's start read: nothing sent
                raise Cancelled(panel_id)
            call = asyncio.ensure_future(make())
            stop = asyncio.ensure_future(ev.wait())
            done, _ = await asyncio.wait({call, stop}, return_when=asyncio.FIRST_COMPLETED)
            if call in done:
                stop.cancel()
                return call.result()
            if call.done() and not call.cancelled() and call.exception() is None:
                return call.result()  # the answer came back with the decision: it is paid, so keep it
            call.cancel()  # closes the HTTP request: the straggler is cancelled, not awaited
            try:
                await call
            except (asyncio.CancelledError, Exception):
                pass
            raise Cancelled(panel_id, sent=True)
        finally:
            if watched is None:
                self._drop_waiter(panel_id, ev)

    def call(self, panel_id: str | None, make: Callable[[], Awaitable[T]]) -> T:
        """Run `make()` on the IO loop; with a panel id, cancel it if the panel is decided first."""
        if panel_id is None:
            return self.run(make())
        current = getattr(self._watch, "current", None)
        watched = current[1] if current is not None and current[0] == panel_id and self._subscribed else None
        return self.run(self._race(panel_id, make, watched))

    def close(self) -> None:
        async def _close() -> None:
            await self._http.aclose()
            await self._aredis.aclose()
            if self._apubsub is not self._aredis:
                await self._apubsub.aclose()

        try:
            self.run(_close(), timeout=5)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)


async def _messages(pubsub: Any) -> AsyncIterator[dict[str, Any]]:
    """The subscription's messages as they come. Every process reads every decision of the fleet,
    so where `listen()` outwaits the socket timeout it is used: a timed read arms and cancels an
    asyncio timer per message (~3 us of CPU more each, measured); before, reads of WATCH_READ_S."""
    if LISTEN_WAITS:
        async for msg in pubsub.listen():
            yield msg
        return
    while True:
        msg = await pubsub.get_message(timeout=WATCH_READ_S)
        if msg is not None:
            yield msg


def runtime() -> Runtime:
    return Runtime.get()


