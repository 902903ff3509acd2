"""Anthropic Messages on the wire: `x-api-key` and `anthropic-version` required, `system` as a
top-level parameter, Anthropic's error shape and statuses (529 for overload), and its
`anthropic-ratelimit-*` headers. Base URL for clients: `http://127.0.0.1:PORT`.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from sim.answers import Reply
from sim.calls import CallSpec
from sim.limits import Admission
from sim.prompt import Prompt, PromptError
from sim.prompt_cache import anthropic_prefix
from sim.serve import BadRequest, Parsed, json_response, serve

_ERRORS = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
           404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error",
           500: "api_error", 529: "overloaded_error"}  # fmt: skip


def anthropic_status(status: int) -> int:
    """Anthropic reports an unavailable service as 529 overloaded, not 503."""
    return 529 if status == 503 else status


def message_body(wire_model: str, reply: Reply, rid: str, empty: bool = False) -> dict[str, Any]:
    return {
        "id": rid, "type": "message", "role": "assistant", "model": wire_model,
        "content": [] if empty else [{"type": "text", "text": reply.text}],
        "stop_reason": "max_tokens" if reply.finish == "length" else "end_turn", "stop_sequence": None,
        # input_tokens is what follows the last cache breakpoint; reads and writes are apart
        "usage": {"input_tokens": reply.tokens_in - reply.cached_read - reply.cache_write,
                  "output_tokens": reply.tokens_out, "cache_creation_input_tokens": reply.cache_write,
                  "cache_read_input_tokens": reply.cached_read},
    }  # fmt: skip


def error_body(status: int, message: str) -> dict[str, Any]:
    kind = _ERRORS.get(status, "api_error" if status >= 500 else "invalid_request_error")
    return {"type": "error", "error": {"type": kind, "message": message}}


def parse_params(params: Any, resolve: Any) -> Parsed:
    """Messages params, shared by live calls and batch requests."""
    if not isinstance(params, dict):
        raise BadRequest(400, "params: must be an object")
    model = params.get("model")
    if not isinstance(model, str) or not model:
        raise BadRequest(400, "model: Field required")
    max_tokens = params.get("max_tokens")
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
        raise BadRequest(400, "max_tokens: Field required (a positive integer)")
    messages = params.get("messages")
    if isinstance(messages, list) and any(isinstance(m, dict) and m.get("role") == "system" for m in messages):
        raise BadRequest(400, "messages: Unexpected role \"system\"; use the top-level system parameter")
    try:
        prompt = Prompt.from_wire(messages, params.get("system"))
    except PromptError as e:
        raise BadRequest(400, str(e)) from None
    return Parsed(model, CallSpec(resolve(model), prompt, False, max_tokens, cache_prefix=anthropic_prefix(params.get("system"))))


class AnthropicWire:
    api = "anthropic"
    request_id_header = "request-id"
    id_prefix = "msg_"

    def authenticate(self, request: Request) -> None:
        if not request.headers.get("x-api-key"):
            raise BadRequest(401, "x-api-key header is required")
        if not request.headers.get("anthropic-version"):
            raise BadRequest(400, "anthropic-version header is required")

    def parse(self, body: dict[str, Any], resolve: Any) -> Parsed:
        return parse_params(body, resolve)

    def body(self, wire_model: str, reply: Reply, rid: str, empty: bool = False) -> dict[str, Any]:
        return message_body(wire_model, reply, rid, empty)

    def error(self, status: int, message: str, headers: dict[str, str] | None = None) -> Response:
        status = anthropic_status(status)
        return json_response(error_body(status, message), status, headers)

    def limit_headers(self, a: Admission) -> dict[str, str]:
        now = datetime.now(UTC)

        def at(seconds: float) -> str:  # Anthropic gives resets as RFC 3339 instants
            return (now + timedelta(seconds=seconds)).isoformat().replace("+00:00", "Z")

        headers: dict[str, str] = {}
        if a.limit_requests is not None:
            headers.update({"anthropic-ratelimit-requests-limit": str(a.limit_requests),
                            "anthropic-ratelimit-requests-remaining": str(a.remaining_requests),
                            "anthropic-ratelimit-requests-reset": at(a.reset_requests_s)})  # fmt: skip
        if a.limit_tokens is not None:
            headers.update({"anthropic-ratelimit-tokens-limit": str(a.limit_tokens),
                            "anthropic-ratelimit-tokens-remaining": str(a.remaining_tokens),
                            "anthropic-ratelimit-tokens-reset": at(a.reset_tokens_s)})  # fmt: skip
        return headers


WIRE = AnthropicWire()


async def messages(request: Request) -> Response:
    return await serve(request, WIRE)
