"""A state command on a hung Redis (its process stopped: the TCP connection stays up, nothing
answers) fails with redis-py's TimeoutError or ConnectionError instead of hanging its caller,
whatever redis-py's own default timeout is: pyproject allows redis>=6.4, and before redis-py 8 a
client with no timeout of its own waited forever (producer/connect.py SOCKET_TIMEOUT_S)."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
import redis.asyncio.connection as aconnection
import redis.connection as sconnection
import redis.sentinel

from producer import connect, keys
from producer.embedded import free_port, redis_server_binary, start_owned, stop_process, wait_port
from producer.settings import Settings
from tests.waiting import eventually
from workers import runtime as runtime_module
from workers.runtime import Runtime

DEADLINE_S = 60.0  # generous: a few socket timeouts, a loaded 2-core machine


@pytest.fixture
def stoppable_redis() -> Iterator[tuple[str, Callable[[], None]]]:
    """A redis-server of this test's own, and a function that stops it (SIGSTOP) until the test ends."""
    port = free_port()
    proc = start_owned([redis_server_binary(), "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                        "--appendonly", "no"])  # fmt: skip
    stopped = False

    def stop() -> None:
        nonlocal stopped
        os.kill(proc.pid, signal.SIGSTOP)
        stopped = True

    try:
        wait_port("127.0.0.1", port, proc=proc)
        yield f"redis://127.0.0.1:{port}/0", stop
    finally:
        if stopped:
            os.kill(proc.pid, signal.SIGCONT)
        stop_process(proc, timeout=10)


@pytest.fixture(params=["redis-py defaults", "no default timeout (redis-py before 8)"])
def defaults(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run each spec as it is, and again with redis-py's connections given no timeout unless the
    caller names one, as redis-py 6.4 and 7 do."""
    if request.param.startswith("no default"):
        for module in (sconnection, aconnection):
            init = module.AbstractConnection.__init__

            def no_default(self: Any, *args: Any, __init: Any = init, **kwargs: Any) -> None:
                kwargs.setdefault("socket_timeout", None)
                kwargs.setdefault("socket_connect_timeout", None)
                __init(self, *args, **kwargs)

            monkeypatch.setattr(module.AbstractConnection, "__init__", no_default)
    return str(request.param)


def outcome_within(call: Callable[[], object], deadline_s: float) -> BaseException | object:
    """What `call` returned or raised, or AssertionError if it still runs after `deadline_s`."""
    box: list[BaseException | object] = []

    def run() -> None:
        try:
            box.append(call())
        except BaseException as e:  # the outcome under test
            box.append(e)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(deadline_s)
    assert box, f"still waiting on the stopped Redis after {deadline_s:.0f} s"
    return box[0]


def test_a_sync_state_command_on_a_stopped_redis_fails_instead_of_hanging(
    stoppable_redis: tuple[str, Callable[[], None]], defaults: str
) -> None:
    url, stop = stoppable_redis
    client = Settings(redis_url=url, redis_socket_timeout_s=2.0).state_client("pf-test")  # the least allowed: a shorter test
    client.set("k", "v")  # a live connection in the pool, as a worker has one
    stop()
    got = outcome_within(lambda: client.get("k"), DEADLINE_S)
    assert isinstance(got, redis.TimeoutError | redis.ConnectionError), got


def test_an_async_state_command_and_a_pubsub_read_on_a_stopped_redis_fail_instead_of_hanging(
    stoppable_redis: tuple[str, Callable[[], None]], defaults: str
) -> None:
    url, stop = stoppable_redis

    async def hang() -> list[object]:
        commands, pubsub_client = connect.async_state_clients(url, client_name="pf-test", socket_timeout_s=2.0)
        await commands.set("k", "v")
        pubsub = pubsub_client.pubsub()
        await pubsub.subscribe("pf-test-channel")
        await pubsub.get_message(timeout=1.0)  # the subscribe reply
        stop()
        seen: list[object] = []
        try:
            await commands.get("k")
        except (redis.TimeoutError, redis.ConnectionError) as e:
            seen.append(e)
        seen.append(await pubsub.get_message(timeout=1.0))  # the decision watch's read (workers/runtime.py)
        return seen

    got = outcome_within(lambda: asyncio.run(hang()), DEADLINE_S)
    assert isinstance(got, list), got
    assert isinstance(got[0], redis.TimeoutError | redis.ConnectionError), got
    assert got[1] is None, "a quiet pub/sub read is not a timeout"


def test_the_socket_timeout_stays_above_the_fleets_one_second_blocking_reads() -> None:
    with pytest.raises(ValueError):
        Settings(redis_socket_timeout_s=1.0)
    assert Settings().redis_socket_timeout_s == connect.SOCKET_TIMEOUT_S


@pytest.mark.parametrize("listen_waits", [True, False], ids=["listen", "timed reads (redis-py before 8.0.1)"])
def test_the_decision_watch_outlasts_a_quiet_channel_longer_than_the_socket_timeout(
    redis_client: redis.Redis,
    redis_url: str,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    listen_waits: bool,
) -> None:
    """redis-py before 8.0.1 applies that timeout to `listen()`'s wait, which dropped and re-made
    the subscription on every quiet spell: there the watch reads for less than the socket timeout
    at a time. Both ways of reading are run here on the installed redis-py."""
    monkeypatch.setattr(runtime_module, "LISTEN_WAITS", listen_waits)
    rt = Runtime(Settings(redis_url=redis_url, redis_socket_timeout_s=2.0))
    try:
        eventually(lambda: rt._subscribed, "the decision watch subscribed")
        time.sleep(3.0)  # the quiet spell itself, longer than the socket timeout
        decided = asyncio.Event()
        rt._add_waiter("job-quiet.1", decided)
        redis_client.publish(keys.DECIDED_CHANNEL, "job-quiet.1")
        eventually(decided.is_set, "the decision reaching the panel's waiting call")
        assert rt._subscribed and "reconnecting" not in caplog.text
    finally:
        rt.close()


@pytest.fixture
def mute_primary() -> Iterator[int]:
    """A port that takes connections and never answers: a primary the sentinels still name while
    this client gets no reply from it (stopped, before the sentinels' down-after-milliseconds; a
    hung proxy or sidecar in front of it)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    held: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                held.append(server.accept()[0])
            except OSError:  # closed at the end of the test
                return

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield server.getsockname()[1]
    finally:
        server.close()
        for conn in held:
            conn.close()


def test_a_sentinel_primary_that_never_answers_fails_a_call_after_the_failover_ride_not_forty_reads(
    mute_primary: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The primary's reads retry on TimeoutError to ride out a failover, but each try costs a whole
    read timeout: by count alone (41 tries of 30 s) a call was held about 21 minutes. Scaled down
    here (reads of 1 s, a ride of 3 s), it fails within seconds instead of after 41 reads."""
    monkeypatch.setattr(redis.sentinel.Sentinel, "discover_master", lambda self, name: ("127.0.0.1", mute_primary))
    monkeypatch.setattr(connect, "SENTINEL_MASTER_TIMEOUT_S", 1.0)  # 30 s in production
    monkeypatch.setattr(connect, "FAILOVER_RIDE_S", 3.0, raising=False)  # 40 s in production
    client = connect.state_client("sentinel://127.0.0.1:26379", sentinel_master="pfmaster", client_name="pf-test",
                                  socket_timeout_s=2.0)  # fmt: skip
    got = outcome_within(lambda: client.get("k"), 45.0)  # 41 reads of 1 s and their backoff: ~80 s
    assert isinstance(got, redis.TimeoutError | redis.ConnectionError), got


def test_a_failover_still_rides_out_fast_failures_within_its_ride() -> None:
    """Refused connections and READONLY replies fail fast: those are retried with backoff as before."""
    failures = iter([redis.ConnectionError("refused")] * 5 + [redis.ReadOnlyError("READONLY")])
    seen: list[Exception] = []

    def call() -> str:
        error = next(failures, None)
        if error is not None:
            raise error
        return "answered"

    retry = connect.FailoverRetry(connect.ExponentialBackoff(cap=1.0, base=0.05), retries=40,
                                  supported_errors=(redis.ConnectionError, redis.ReadOnlyError))  # fmt: skip
    assert retry.call_with_retry(call, seen.append) == "answered"
    assert len(seen) == 6


def test_the_decision_watch_reads_a_burst_of_decisions_without_a_timer_per_message(
    redis_client: redis.Redis, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every worker process reads every decision of the fleet, so the read is on the hot path: a
    timed read (`get_message(timeout=...)`) arms and cancels an asyncio timer per message (~3 us
    more CPU per message than `listen()`, measured here). Where redis-py's `listen()` waits past the
    socket timeout (8.0.1 on), the watch listens; before that it needs the timed read."""
    rt = Runtime(Settings(redis_url=redis_url, redis_socket_timeout_s=2.0))
    try:
        eventually(lambda: rt._subscribed, "the decision watch subscribed")
        armed: list[float] = []
        real = aconnection.async_timeout

        def counting(delay: float | None) -> Any:
            armed.append(time.monotonic())
            return real(delay)

        monkeypatch.setattr(aconnection, "async_timeout", counting)
        last = asyncio.Event()
        rt._add_waiter("job-burst.199", last)
        pipe = redis_client.pipeline(transaction=False)
        for i in range(200):
            pipe.publish(keys.DECIDED_CHANNEL, f"job-burst.{i}")
        pipe.execute()
        eventually(last.is_set, "the burst's last decision reaching its waiting call")
        assert len(armed) < 100, f"{len(armed)} timers armed for 200 decision messages"
    finally:
        rt.close()


def test_the_decision_watch_gives_its_connection_back_each_time_it_resubscribes(
    redis_client: redis.Redis, redis_url: str
) -> None:
    """A Redis blip drops the watch's connection and it subscribes again on a new one. The old one
    must go back to the IO loop's pool: kept, each blip took a connection for good, and once the
    pool was spent the watch could not subscribe again and the loop's commands waited for one."""
    rt = Runtime(Settings(redis_url=redis_url, redis_max_connections=3, redis_pool_timeout_s=1.0))
    try:

        def subscribed_on_a_new_connection(before: set[int]) -> bool:
            now = {int(c["id"]) for c in redis_client.client_list(_type="pubsub")}
            return rt._subscribed and bool(now) and not now & before

        eventually(lambda: subscribed_on_a_new_connection(set()), "the decision watch subscribed")
        for blip in range(5):  # more blips than the pool has connections
            before = {int(c["id"]) for c in redis_client.client_list(_type="pubsub")}
            redis_client.client_kill_filter(_type="pubsub")
            eventually(
                lambda b=before: subscribed_on_a_new_connection(b), f"the watch subscribed again after blip {blip}"
            )
        assert rt.run(rt._aredis.ping(), timeout=30), "the IO loop's commands found no free connection"
    finally:
        rt.close()
