"""One request through the simulator, for either wire API: parse, authenticate, run the call, render
the outcome, and count it in the stats exactly once, whatever happens (a hang-up included).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import orjson
from starlette.requests import Request
from starlette.responses import Response

from sim.answers import Reply
from sim.calls import CallSpec, Outcome, Simulator
from sim.limits import Admission, retry_after_header
from sim.prompt import Prompt, PromptError
from sim.responses import CutBody, Dropped, request_id, sleeper


class BadRequest(Exception):
    def __init__(self, status: int, message: str) -> None:
        self.status, self.message = status, message
        super().__init__(message)


@dataclass(frozen=True)
class Parsed:
    wire_model: str
    spec: CallSpec


class Wire(Protocol):
    """What differs between the OpenAI and Anthropic APIs; the flow around it is shared."""

    api: str
    id_prefix: str
    request_id_header: str

    def authenticate(self, request: Request) -> None: ...  # raises BadRequest
    def parse(self, body: dict[str, Any], resolve: Any) -> Parsed: ...  # raises BadRequest
    def body(self, wire_model: str, reply: Reply, rid: str, empty: bool = False) -> dict[str, Any]: ...
    def error(self, status: int, message: str, headers: dict[str, str] | None = None) -> Response: ...
    def limit_headers(self, admission: Admission) -> dict[str, str]: ...


def json_response(payload: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(payload), status_code=status, headers=headers, media_type="application/json")


def _peek_model(body: Any, resolve: Any) -> tuple[str, str]:
    """The model to count a request under, even one that fails validation."""
    model = body.get("model") if isinstance(body, dict) else None
    if not isinstance(model, str):
        return "(unknown)", ""
    try:
        sha = Prompt.from_wire(body.get("messages"), body.get("system")).sha
    except PromptError:
        sha = ""
    return resolve(model), sha


async def serve(request: Request, wire: Wire) -> Response:
    sim: Simulator = request.app.state.sim
    raw = await request.body()
    try:
        body: Any = orjson.loads(raw)
    except orjson.JSONDecodeError:
        body = None
    model, sha = _peek_model(body, sim.aliases.resolve)
    rec = sim.stats.start(model, wire.api, sha)
    status, kind, tokens, dropped = 500, "error", None, None
    try:
        try:
            wire.authenticate(request)
            if not isinstance(body, dict):
                raise BadRequest(400, "the request body is not a JSON object")
            parsed = wire.parse(body, sim.aliases.resolve)
        except BadRequest as e:
            status, kind = e.status, "bad_request"
            return wire.error(e.status, e.message)
        outcome = await sim.run(parsed.spec, sleeper(request))
        response = _render(wire, parsed, outcome)
        status, kind = response.status_code if outcome.status else 0, outcome.kind
        if outcome.delivers_answer and outcome.reply is not None:
            tokens = (outcome.reply.tokens_in, outcome.reply.tokens_out)
        elif outcome.kind == "disconnected" and outcome.reply is not None:
            dropped = outcome.reply.tokens_in  # the prompt was read; a provider may bill it
        return response
    finally:
        # A cancelled handler (server shutdown) still closes its record; 499 as nginx logs a hang-up.
        sim.stats.finish(rec, status if status else 0, None if kind in ("answered", "error") else kind, tokens, dropped)


def _render(wire: Wire, parsed: Parsed, outcome: Outcome) -> Response:
    headers = wire.limit_headers(outcome.admission) if outcome.admission else {}
    if outcome.retry_after_s is not None:
        headers["retry-after"] = retry_after_header(outcome.retry_after_s)
    # Clients log the provider's request id with a failure; both APIs send one on every response.
    headers[wire.request_id_header] = request_id("req_")
    if outcome.kind == "timeout":
        return Dropped()
    if outcome.status != 200:
        messages = {
            "down": "the model is down (simulated outage)", "fail_next": "scripted failure (fail_next)",
            "rate_limit": f"rate limit reached for {parsed.wire_model}", "disconnected": "client closed the request",
        }  # fmt: skip
        return wire.error(outcome.status, messages.get(outcome.kind, f"simulated {outcome.kind} fault"), headers)
    assert outcome.reply is not None
    rid = request_id(wire.id_prefix)
    if outcome.kind == "malformed":
        # What a proxy's error page or a half-written body looks like to a JSON decoder.
        return Response(f'{{"id": "{rid}", "choices": [<html>upstream'.encode(), 200, headers, "application/json")
    payload = orjson.dumps(wire.body(parsed.wire_model, outcome.reply, rid, empty=outcome.kind == "empty_choices"))
    if outcome.kind == "truncated":
        return CutBody(payload, 200, headers, "application/json")
    return Response(payload, 200, headers, "application/json")
