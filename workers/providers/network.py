"""The sockets under the runtime's httpx.AsyncClient: httpcore's anyio backend, with the pool's
per-connection liveness check made cheap.

httpcore's pool asks every pooled connection whether its socket is readable (a server that closed
an idle keep-alive connection) each time it assigns a request or takes one back: O(pool) checks per
request. Its anyio stream answers through `anyio`'s typed attributes, which rebuild the socket's
whole attribute table (a dict of lambdas) on every lookup: ~25% of an async request's client CPU
here (py-spy, `python3 -m bench.hotpath`). This stream looks the socket up once and polls it, as
httpcore's sync stream does; reads, writes, TLS and timeouts stay anyio's.

    client = network.client(limits, timeout)  # httpx.AsyncClient(transport=transport(limits), ...)
"""

from __future__ import annotations

import itertools
import select
import socket
import ssl
from collections.abc import Iterable
from typing import Any
from urllib.request import getproxies

import httpcore
import httpx

SocketOption = tuple[int, int, int] | tuple[int, int, bytes | bytearray] | tuple[int, int, None, int]  # httpcore's


def readable(sock: socket.socket | None) -> bool:
    """True when a read would not block: data, or the peer closed (what httpcore's check means);
    a socket already gone counts as readable, so the pool drops its connection."""
    if sock is None or sock.fileno() < 0:
        return True
    poll = select.poll()
    poll.register(sock, select.POLLIN)
    return bool(poll.poll(0))


class Stream(httpcore.AsyncNetworkStream):
    """An anyio stream with its raw socket looked up once (for `is_readable` and `socket`)."""

    def __init__(self, inner: httpcore.AsyncNetworkStream) -> None:
        self._inner = inner
        self._sock: socket.socket | None = inner.get_extra_info("socket")

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return await self._inner.read(max_bytes, timeout)

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        await self._inner.write(buffer, timeout)

    async def aclose(self) -> None:
        await self._inner.aclose()

    async def start_tls(self, ssl_context: ssl.SSLContext, server_hostname: str | None = None,
                        timeout: float | None = None) -> httpcore.AsyncNetworkStream:  # fmt: skip
        return Stream(await self._inner.start_tls(ssl_context, server_hostname, timeout))  # the same TCP socket

    def get_extra_info(self, info: str) -> Any:
        if info == "is_readable":
            return readable(self._sock)
        if info == "socket":
            return self._sock
        return self._inner.get_extra_info(info)


class Backend(httpcore.AsyncNetworkBackend):
    """httpcore's anyio backend, its streams wrapped in `Stream`."""

    def __init__(self, inner: httpcore.AsyncNetworkBackend | None = None) -> None:
        self._inner = inner or httpcore.AnyIOBackend()

    async def connect_tcp(self, host: str, port: int, timeout: float | None = None, local_address: str | None = None,
                          socket_options: Iterable[SocketOption] | None = None) -> httpcore.AsyncNetworkStream:  # fmt: skip
        return Stream(await self._inner.connect_tcp(host, port, timeout, local_address, socket_options))

    async def connect_unix_socket(self, path: str, timeout: float | None = None,
                                  socket_options: Iterable[SocketOption] | None = None) -> httpcore.AsyncNetworkStream:  # fmt: skip
        return Stream(await self._inner.connect_unix_socket(path, timeout, socket_options))

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


POOLS = 8  # pools per process; each holds an eighth of the limits


class Pools(httpx.AsyncBaseTransport):
    """`n` of `transport`'s pools, requests dealt to them in turn. httpcore's pool re-walks its
    requests and connections on every request it assigns and every response it closes
    (encode/httpcore#1035), so its CPU per request grows with the connections it holds: at 128 in
    flight one pool cost 14.3 ms CPU per request and served ~70 a second; eight pools of an
    eighth each, 0.71 ms (and 0.65 against 0.82 at 32 in flight): bench/RESULTS.md."""

    def __init__(self, limits: httpx.Limits, n: int = POOLS) -> None:
        def share(v: int | None) -> int | None:
            return None if v is None else max(1, v // n)

        each = httpx.Limits(max_connections=share(limits.max_connections),
                            max_keepalive_connections=share(limits.max_keepalive_connections),
                            keepalive_expiry=limits.keepalive_expiry)  # fmt: skip
        self.pools = [transport(each) for _ in range(n)]
        self._next = itertools.cycle(self.pools)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        return await next(self._next).handle_async_request(request)

    async def aclose(self) -> None:
        for pool in self.pools:
            await pool.aclose()


def client(limits: httpx.Limits, timeout: httpx.Timeout) -> httpx.AsyncClient:
    """The runtime's client: on `Pools`, unless the environment names a proxy (HTTP_PROXY,
    HTTPS_PROXY, ALL_PROXY), which httpx honours only in a client it builds the transport of:
    there httpx's own, so providers behind an egress proxy are still reached through it."""
    if any(scheme in ("http", "https", "all") for scheme in getproxies()):
        return httpx.AsyncClient(limits=limits, timeout=timeout)
    return httpx.AsyncClient(transport=Pools(limits), timeout=timeout)


def transport(limits: httpx.Limits) -> httpx.AsyncHTTPTransport:
    """httpx's own transport (its pool, limits, TLS, error mapping) on `Backend`. httpx takes no
    network backend, so it is set on the pool it built (httpcore's `_network_backend`, read each
    time the pool opens a connection); tests/providers/test_network.py fails if that changes."""
    t = httpx.AsyncHTTPTransport(limits=limits)
    pool = t._pool
    if not isinstance(pool, httpcore.AsyncConnectionPool) or not hasattr(pool, "_network_backend"):
        raise RuntimeError(f"httpx built a {type(pool).__name__} without a network backend to replace")
    pool._network_backend = Backend()
    return t
