"""HTTP behaviour of a misbehaving provider that a normal Response cannot express: a body cut off
mid-transfer, a connection dropped without a status, and noticing a client that hung up.
"""

from __future__ import annotations

import asyncio
import secrets

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from sim.calls import Sleeper


def request_id(prefix: str) -> str:
    return f"{prefix}{secrets.token_hex(12)}"


class CutBody(Response):
    """Declares the full Content-Length, sends the first half, then ends: the client sees the
    connection close mid-body (uvicorn closes a response the app left incomplete)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        await send({"type": "http.response.body", "body": self.body[: len(self.body) // 2], "more_body": True})


class Dropped(Response):
    """Starts a 200 that never completes: to the client, the server hung up without answering."""

    def __init__(self) -> None:
        super().__init__(b"x", status_code=200, media_type="application/json")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})


def sleeper(request: Request) -> Sleeper:
    """A `Sleeper` bound to this request: returns early (True) if the client disconnects."""

    async def sleep(seconds: float) -> bool:
        if seconds <= 0:
            return False

        async def gone() -> None:
            # The body is already read, so the next ASGI message is the disconnect.
            while (await request.receive())["type"] != "http.disconnect":
                pass

        watcher = asyncio.ensure_future(gone())
        try:
            done, _ = await asyncio.wait({watcher}, timeout=seconds)
            return bool(done)
        finally:
            watcher.cancel()

    return sleep
