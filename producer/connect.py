"""Where the broker and the state live, and the Redis clients that reach them.

Two URLs (producer/settings.py): `PANEL_BROKER_URL` (Celery's queues) and `PANEL_STATE_URL` (jobs,
panels, limits, budgets, the ledger; producer/keys.py); both default to `PANEL_REDIS_URL`, so one
Redis still serves everything (the embedded demo). Forms accepted:

    redis://h:6379/0, rediss://h:6380/0        one Redis (rediss: TLS)                broker, state
    sentinel://h1:26379;sentinel://h2:26379    Sentinel-managed primary; the master
                                               name is PANEL_SENTINEL_MASTER           broker, state
    redis+cluster://h1:7000,h2:7001            Redis Cluster (rediss+cluster: TLS)     state only

Redis Cluster cannot be the broker: kombu has no cluster transport (celery#2852, open since 2015;
kombu PR #2204 unmerged), so `BrokerUrlError` names Sentinel and RabbitMQ instead.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, TypedDict, TypeVar, cast
from urllib.parse import unquote, urlsplit

import redis
import redis.asyncio as aredis
from redis._parsers.base import BaseParser
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.backoff import ExponentialBackoff
from redis.cluster import ClusterNode, RedisCluster
from redis.retry import Retry
from redis.sentinel import Sentinel, SentinelManagedConnection

from producer.errors import PanelError

Kind = Literal["redis", "sentinel", "cluster"]
# A RedisCluster takes the same commands the code uses; typed as Redis so callers need no union.
StateClient = redis.Redis
CLUSTER_SCHEMES = ("redis+cluster", "rediss+cluster")
T = TypeVar("T")


class NoReplicasError(redis.ConnectionError):
    """NOREPLICAS: a primary whose replica is gone (promoted by Sentinel mid-failover) refused a
    write. The write did not happen, so it is safe to retry once the client finds the new primary:
    a ConnectionError makes redis-py (and kombu, for the broker) reconnect and retry."""


# Primaries run with `min-replicas-to-write 1` (docs/cluster.md) so a write never lands on a primary
# that is being failed over; redis-py maps error prefixes to exception types in this table.
BaseParser.EXCEPTION_CLASSES.setdefault("NOREPLICAS", NoReplicasError)
# Across a failover (~1-3 s: promotion, then the old primary re-pointed) commands retry with backoff:
# 40 fast failures (refused connects, READONLY, no primary named yet) ride out about 37 s of it.
# No retry starts later than this after a call's first failure (FailoverRetry).
FAILOVER_RIDE_S = 40.0


class FailoverRetry(Retry):
    """Retry's count and backoff, within a time: no retry starts FAILOVER_RIDE_S after a call's
    first failure. A try that times out (a primary the sentinels still name, taking connections
    and answering nothing) costs a whole read timeout, so by count alone 41 tries of
    SENTINEL_MASTER_TIMEOUT_S held a call about 21 minutes; now about the ride and two reads."""

    def call_with_retry(self, do: Callable[[], T], fail: Callable[..., Any], *args: Any, **kwargs: Any) -> T:
        first_failure: list[float] = []

        def fail_within_ride(error: Exception, *rest: Any) -> Any:
            fail(error, *rest)  # redis-py's own handler first: it closes the connection
            now = time.monotonic()
            if not first_failure:
                first_failure.append(now)
            elif now - first_failure[0] >= FAILOVER_RIDE_S:
                raise error

        return super().call_with_retry(do, fail_within_ride, *args, **kwargs)


FAILOVER_RETRY = FailoverRetry(ExponentialBackoff(cap=1.0, base=0.05), retries=40)
# A read or connect to a hung Redis (a stopped process, a dead peer behind a live TCP path) fails after
# this long instead of waiting forever: redis-py's default, 5 s, is only redis-py 8's (none before, and
# pyproject allows redis>=6.4), so every state client says it. Above every blocking read the fleet makes
# (BLMOVE/BLPOP/XREADGROUP BLOCK of at most 1 s, the decision watch's 1 s pub/sub read), which would
# otherwise fail with TimeoutError; PANEL_REDIS_SOCKET_TIMEOUT_S (producer/settings.py) sets it.
SOCKET_TIMEOUT_S = 5.0
# Reads on a Sentinel-managed primary: 30 s since Sentinel support came in (3b1c55b), kept as it was; a
# read that times out is retried there (FAILOVER_RETRY), so a hung primary holds a call for about
# FAILOVER_RIDE_S and two of these.
SENTINEL_MASTER_TIMEOUT_S = 30.0


class Timeouts(TypedDict):
    socket_timeout: float
    socket_connect_timeout: float


def timeouts(socket_timeout_s: float = SOCKET_TIMEOUT_S) -> Timeouts:
    """redis-py's read and connect timeouts, as keyword arguments of any of its clients (one made
    outside `state_client` too: a status panel, the embedded Redis's start check)."""
    return Timeouts(socket_timeout=socket_timeout_s, socket_connect_timeout=socket_timeout_s)


class FailoverConnection(SentinelManagedConnection):
    """Asks the sentinels for the primary on every reconnect. redis-py 8 reconnects a dropped
    connection through `connect_check_health`, which reuses the old address, so a retry after a
    failover went back to the demoted primary until its retries ran out (measured: 38 s)."""

    def connect_check_health(self, check_health: bool = True, retry_socket_connect: bool = True) -> None:
        if self._sock is None and self.connection_pool.is_master:
            self.host, self.port = self.connection_pool.get_master_address()
        super().connect_check_health(check_health=check_health, retry_socket_connect=retry_socket_connect)

    def read_response(self, *args: Any, **kwargs: Any) -> Any:
        """A script's write refused with NOREPLICAS comes back as a script error: the refused write
        was its first (the fence holds for the whole script), so nothing was written; retry it."""
        try:
            return super().read_response(*args, **kwargs)
        except redis.ResponseError as e:
            if "NOREPLICAS" not in str(e) or isinstance(e, redis.ConnectionError):
                raise
            self.disconnect()  # type: ignore[no-untyped-call]
            raise NoReplicasError(str(e)) from e


class RedisUrlError(PanelError, ValueError):
    """A broker or state URL this fleet cannot use; the message names the setting and the fix."""


class BrokerUrlError(RedisUrlError):
    pass


@dataclass(frozen=True)
class Endpoint:
    kind: Kind
    url: str
    nodes: tuple[tuple[str, int], ...] = ()  # sentinels or cluster seed nodes
    tls: bool = False
    db: int = 0
    password: str | None = None


def shown(url: str) -> str:
    """The URL as an error may print it: any password masked."""
    return re.sub(r"(://[^:/@;,]*:)[^@/;]*@", r"\1***@", url)


def parse(url: str, setting: str = "PANEL_STATE_URL") -> Endpoint:
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme in ("redis", "rediss", "unix"):
        return Endpoint("redis", url, tls=scheme == "rediss")
    if scheme == "sentinel":
        nodes, db, password = [], 0, None
        for part in url.split(";"):
            u = urlsplit(part.strip())
            if u.scheme != "sentinel" or not u.hostname:
                raise RedisUrlError(f"{setting}: {shown(part)!r} is not sentinel://host:port (join several with ';')")
            nodes.append((u.hostname, u.port or 26379))
            db = int(u.path.strip("/") or db)
            password = unquote(u.password) if u.password else password
        return Endpoint("sentinel", url, tuple(nodes), db=db, password=password)
    if scheme in CLUSTER_SCHEMES:
        rest = url.split("://", 1)[1].split("/", 1)[0]
        auth, _, hosts = rest.rpartition("@")
        nodes = []
        for hp in hosts.split(","):
            host, _, port = hp.strip().rpartition(":")
            if not host or not port.isdigit():
                raise RedisUrlError(
                    f"{setting}: {hp!r} in {shown(url)!r} is not host:port (seed nodes joined with ',')"
                )
            nodes.append((host, int(port)))
        password = unquote(auth.rpartition(":")[2]) if auth else None
        return Endpoint("cluster", url, tuple(nodes), tls=scheme == "rediss+cluster", password=password)
    raise RedisUrlError(
        f"{setting}: unsupported URL {shown(url)!r}; use redis://host:6379/0, rediss://..., "
        "sentinel://h1:26379;sentinel://h2:26379 (+ PANEL_SENTINEL_MASTER), or redis+cluster://h1:7000,h2:7001 (state only)"
    )


def broker(url: str, sentinel_master: str, setting: str = "PANEL_BROKER_URL") -> tuple[str, dict[str, Any]]:
    """Celery's broker URL and the transport options it adds (the Sentinel master name)."""
    if url.split("://", 1)[0].lower() in ("amqp", "amqps", "pyamqp"):
        return url, {}
    ep = parse(url, setting)
    if ep.kind == "cluster":
        raise BrokerUrlError(
            f"{setting}: {shown(url)!r} is a Redis Cluster, which Celery cannot use as a broker: kombu has no "
            "cluster transport (celery#2852). Put the broker on a Sentinel-managed Redis "
            "(PANEL_BROKER_URL=sentinel://h1:26379;sentinel://h2:26379, PANEL_SENTINEL_MASTER=name) or on "
            "RabbitMQ (amqp://...), and the cluster for PANEL_STATE_URL."
        )
    return url, ({"master_name": sentinel_master} if ep.kind == "sentinel" else {})


def is_cluster(client: Any) -> bool:
    """A cluster client: a MULTI must keep to one slot, so cross-slot writes go in separate steps."""
    return isinstance(client, RedisCluster)


def state_client(url: str, *, sentinel_master: str = "mymaster", max_connections: int = 512,
                 pool_timeout_s: float = 30.0, client_name: str | None = None,
                 socket_timeout_s: float = SOCKET_TIMEOUT_S) -> StateClient:  # fmt: skip
    """A sync client for the state store. A plain Redis gets a blocking pool (threads wait their
    turn rather than fail past the pool size); Sentinel re-resolves the primary after a failover.
    A hung Redis fails a command with TimeoutError after `socket_timeout_s` (the Sentinel-managed
    primary's reads: SENTINEL_MASTER_TIMEOUT_S)."""
    ep = parse(url)
    if ep.kind == "redis":
        return redis.Redis(connection_pool=redis.BlockingConnectionPool.from_url(
            url, max_connections=max_connections, timeout=pool_timeout_s, health_check_interval=30,
            socket_keepalive=True, client_name=client_name, **timeouts(socket_timeout_s)))  # fmt: skip
    if ep.kind == "sentinel":
        s = Sentinel(list(ep.nodes), password=ep.password, **timeouts(socket_timeout_s))  # type: ignore[no-untyped-call]
        return s.master_for(  # type: ignore[no-untyped-call,no-any-return]
            sentinel_master, db=ep.db, password=ep.password, socket_timeout=SENTINEL_MASTER_TIMEOUT_S,
                            socket_connect_timeout=socket_timeout_s, client_name=client_name,
                            max_connections=max_connections, health_check_interval=30, retry=FAILOVER_RETRY,
                            connection_class=FailoverConnection, retry_on_error=[redis.ConnectionError, redis.ReadOnlyError, redis.TimeoutError])  # fmt: skip
    nodes = [ClusterNode(h, p) for h, p in ep.nodes]  # type: ignore[no-untyped-call]
    cluster = RedisCluster(startup_nodes=nodes, ssl=ep.tls, password=ep.password, max_connections=max_connections,
                           client_name=client_name, **timeouts(socket_timeout_s))  # fmt: skip
    return cast(redis.Redis, cluster)


def async_state_clients(url: str, *, sentinel_master: str = "mymaster",
                        max_connections: int = 512, pool_timeout_s: float = 30.0,
                        client_name: str | None = None, health_check_interval: int = 0,
                        socket_timeout_s: float = SOCKET_TIMEOUT_S) -> tuple[Any, aredis.Redis]:  # fmt: skip
    """(commands, pub/sub) async clients. A cluster's commands go through the cluster client; its
    pub/sub through one plain connection to a seed node (classic PUBLISH reaches every node).
    A hung Redis fails a command with TimeoutError after `socket_timeout_s`; a pub/sub reader on
    redis-py before 8.0.1 reads for less than that at a time (`get_message(timeout=...)`): there
    `listen()`'s wait on a quiet channel fails after the socket timeout (workers/runtime.py)."""
    ep = parse(url)
    limits = timeouts(socket_timeout_s)
    if ep.kind == "redis":
        c = aredis.Redis(connection_pool=aredis.BlockingConnectionPool.from_url(
            url, max_connections=max_connections, timeout=pool_timeout_s, client_name=client_name,
            health_check_interval=health_check_interval, **limits))  # fmt: skip
        return c, c
    if ep.kind == "sentinel":
        from redis.asyncio.sentinel import Sentinel as AsyncSentinel

        s = AsyncSentinel(list(ep.nodes), password=ep.password, **limits)  # type: ignore[no-untyped-call]
        c = s.master_for(sentinel_master, db=ep.db, password=ep.password, max_connections=max_connections,
                         client_name=client_name, health_check_interval=health_check_interval, **limits)  # fmt: skip
        return c, c
    cluster = AsyncRedisCluster(startup_nodes=[aredis.cluster.ClusterNode(h, p) for h, p in ep.nodes],
                                ssl=ep.tls, password=ep.password, max_connections=max_connections,
                                client_name=client_name, **limits)  # fmt: skip
    host, port = ep.nodes[0]
    return cluster, aredis.Redis(host=host, port=port, ssl=ep.tls, password=ep.password, client_name=client_name,
                                 **limits)  # fmt: skip
