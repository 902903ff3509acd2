"""The runtime's HTTP transport (workers/providers/network.py) against llmock on loopback: httpx's
own pool and error mapping, with the pool's per-request liveness check of every pooled connection
answered from the socket looked up once, not from anyio's attribute table rebuilt each time."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from anyio._backends import _asyncio as anyio_asyncio

from tests.providers.conftest import Llmock
from workers.providers import network
from workers.providers.base import ChatRequest
from workers.providers.openai import OpenAIChat

pytestmark = pytest.mark.anyio
LIMITS = httpx.Limits(max_connections=100, max_keepalive_connections=50)


@pytest.fixture
def attribute_tables() -> Iterator[list[int]]:
    """How many times anyio built a socket's attribute table (its `extra_attributes`)."""
    built = [0]
    real = anyio_asyncio.SocketStream.extra_attributes

    def counted(self: Any) -> Any:
        built[0] += 1
        return real.fget(self)  # type: ignore[attr-defined]

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(anyio_asyncio.SocketStream, "extra_attributes", property(counted))
        yield built


async def burst(client: httpx.AsyncClient, url: str, rounds: int = 5, width: int = 8) -> None:
    """`rounds` bursts of `width` concurrent requests: a pool of ~`width` connections, reused."""
    for _ in range(rounds):
        got = await asyncio.gather(*[client.get(url) for _ in range(width)])
        assert all(r.status_code == 200 for r in got)


async def test_the_pools_liveness_checks_look_each_socket_up_once(llmock: Llmock, attribute_tables: list[int]) -> None:
    url = f"{llmock.origin}/v1/models"
    async with httpx.AsyncClient(transport=network.transport(LIMITS)) as client:
        await burst(client, url, rounds=1)  # the pool is made: its connections looked up at connect
        pooled, made = len(client._transport._pool.connections), attribute_tables[0]  # type: ignore[attr-defined]
        await burst(client, url, rounds=5)  # 40 more requests on those connections
        assert len(client._transport._pool.connections) == pooled  # type: ignore[attr-defined]
    assert 1 <= pooled <= 8 and attribute_tables[0] == made
    async with httpx.AsyncClient(limits=LIMITS) as plain:  # httpx's default: a table per check, per request
        await burst(plain, url, rounds=1)
        made = attribute_tables[0]
        await burst(plain, url, rounds=5)
    assert attribute_tables[0] - made >= 40


async def test_a_provider_call_through_the_transport_answers_and_reuses_its_connection(llmock: Llmock) -> None:
    client = httpx.AsyncClient(transport=network.transport(LIMITS))
    chat = OpenAIChat("openai", llmock.openai_base, "sk-test", client=client)
    request = ChatRequest(model="gpt-4o-mini", messages=[{"role": "user", "content": "yes or no?"}], max_tokens=16,
                          timeout_s=5)  # fmt: skip
    try:
        first = await chat.complete(request)
        second = await chat.complete(request)
        [conn] = client._transport._pool.connections  # type: ignore[attr-defined]  # kept alive, reused
        assert isinstance(conn._connection._network_stream, network.Stream)
    finally:
        await client.aclose()
    assert first.text and second.text and first.tokens_in > 0


async def test_the_runtimes_pools_take_requests_in_turn_each_keeping_its_connection(llmock: Llmock) -> None:
    """`Pools`: requests dealt to the pools in turn, each pool an n-th of the limits, and each
    keeps (and reuses) its own connection: one pool's bookkeeping stays small (httpcore#1035)."""
    pools = network.Pools(httpx.Limits(max_connections=2000, max_keepalive_connections=500), n=4)
    assert [(p._pool._max_connections, p._pool._max_keepalive_connections) for p in pools.pools] == [(500, 125)] * 4
    client = httpx.AsyncClient(transport=pools)
    chat = OpenAIChat("openai", llmock.openai_base, "sk-test", client=client)
    request = ChatRequest(model="gpt-4o-mini", messages=[{"role": "user", "content": "yes or no?"}], max_tokens=16,
                          timeout_s=5)  # fmt: skip
    try:
        for _ in range(8):
            assert (await chat.complete(request)).text
        held = [p._pool.connections for p in pools.pools]
        assert [len(c) for c in held] == [1, 1, 1, 1]  # two requests each, on one kept-alive connection
        assert all(c[0]._connection._request_count == 2 for c in held)  # type: ignore[attr-defined]
    finally:
        await client.aclose()


def test_a_socket_reads_as_readable_once_its_peer_closes_and_not_before() -> None:
    """What the pool asks of an idle keep-alive connection: readable means the server hung up."""
    ours, peer = socket.socketpair()
    try:
        assert network.readable(ours) is False
        peer.close()
        assert network.readable(ours) is True
    finally:
        ours.close()
    assert network.readable(ours) is True  # closed here: gone, dropped by the pool
    assert network.readable(None) is True


async def test_a_refused_connection_is_httpxs_connect_error(llmock: Llmock) -> None:
    from producer.embedded import free_port

    async with httpx.AsyncClient(transport=network.transport(LIMITS)) as client:
        with pytest.raises(httpx.ConnectError):
            await client.get(f"http://127.0.0.1:{free_port()}/")


async def test_a_proxy_named_in_the_environment_is_still_used(monkeypatch: pytest.MonkeyPatch) -> None:
    """httpx honours HTTP(S)_PROXY only in a client whose transport it builds: with a proxy named,
    the runtime's client is httpx's own (before: our transport bypassed the proxy silently, and a
    provider behind an egress proxy could not be reached)."""
    seen: list[bytes] = []

    async def proxy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append((await reader.readuntil(b"\r\n\r\n")).split(b"\r\n", 1)[0])
        body = b'{"data": []}'
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(proxy, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    for name in ("NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{port}")
    target = "http://127.0.0.1:9/v1/models"  # nothing listens there: only the proxy answers
    async with server, network.client(LIMITS, httpx.Timeout(10.0)) as client:
        got = await client.get(target)
    assert got.status_code == 200 and seen == [f"GET {target} HTTP/1.1".encode()]
    monkeypatch.delenv("HTTP_PROXY")
    async with network.client(LIMITS, httpx.Timeout(10.0)) as client:  # no proxy named: our transport
        pools = client._transport.pools  # type: ignore[attr-defined]
        assert len(pools) == network.POOLS and all(isinstance(p._pool._network_backend, network.Backend) for p in pools)
