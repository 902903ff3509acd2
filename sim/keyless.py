"""`panel-sim --keyless`: accept requests that carry no API key (docker compose's default, a
keyless `panel up` by hand). A request without a key is given a placeholder one before the wire's
own check, so everything else (the 400 on a missing `anthropic-version`, limits, faults) is
unchanged, and without the flag a missing key is still a 401 as at the real providers."""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

PLACEHOLDER = b"sim-keyless"


class Keyless:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            headers = [(k, v) for k, v in scope["headers"]]
            names = {k.lower() for k, _ in headers}
            if b"authorization" not in names or not dict(headers).get(b"authorization", b"").strip():
                headers = [(k, v) for k, v in headers if k.lower() != b"authorization"]
                headers.append((b"authorization", b"Bearer " + PLACEHOLDER))
            if b"x-api-key" not in names:
                headers.append((b"x-api-key", PLACEHOLDER))
            scope = {**scope, "headers": headers}
        await self.app(scope, receive, send)
