"""OpenAI chat completions on the wire: request parsing, the response and error shapes, and the
`x-ratelimit-*` headers. Base URL for clients: `http://127.0.0.1:PORT/v1`.
"""

from __future__ import annotations

import time
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from sim.answers import Reply
from sim.calls import CallSpec
from sim.limits import Admission
from sim.prompt import Prompt, PromptError
from sim.prompt_cache import openai_prefix
from sim.serve import BadRequest, Parsed, json_response, serve

_ERROR_TYPES = {400: ("invalid_request_error", None), 401: ("invalid_request_error", "invalid_api_key"),
                404: ("invalid_request_error", "not_found"), 429: ("requests", "rate_limit_exceeded")}  # fmt: skip


def _duration(seconds: float) -> str:
    """OpenAI writes resets as durations such as `1s` or `6m0s`."""
    s = max(0.0, seconds)
    return f"{int(s // 60)}m{s % 60:.0f}s" if s >= 60 else f"{s:.3f}".rstrip("0").rstrip(".") + "s"


def completion_body(wire_model: str, reply: Reply, rid: str, empty: bool = False) -> dict[str, Any]:
    choices = [] if empty else [{
        "index": 0,
        "message": {"role": "assistant", "content": reply.text, "refusal": None},
        "logprobs": None if reply.logprob is None else {"content": token_logprobs(reply), "refusal": None},
        "finish_reason": reply.finish,
    }]  # fmt: skip
    return {
        "id": rid, "object": "chat.completion", "created": int(time.time()), "model": wire_model,
        "choices": choices, "system_fingerprint": "fp_panel_sim",
        "usage": {"prompt_tokens": reply.tokens_in, "completion_tokens": reply.tokens_out,
                  "total_tokens": reply.tokens_in + reply.tokens_out,
                  "prompt_tokens_details": {"cached_tokens": reply.cached_read}},
    }  # fmt: skip


def token_logprobs(reply: Reply) -> list[dict[str, Any]]:
    """The reply cut into `tokens_out` pieces (at most one per character) whose log-probabilities
    sum to `reply.logprob`: equal shares, the last one taking the rounding remainder."""
    assert reply.logprob is not None
    text = reply.text or " "
    n = max(1, min(reply.tokens_out, len(text)))
    bounds = [len(text) * i // n for i in range(n + 1)]
    share = reply.logprob / n
    values = [share] * (n - 1) + [reply.logprob - share * (n - 1)]
    return [{"token": text[a:b], "logprob": min(0.0, v), "bytes": list(text[a:b].encode()), "top_logprobs": []}
            for a, b, v in zip(bounds[:-1], bounds[1:], values, strict=True)]  # fmt: skip


def error_body(status: int, message: str) -> dict[str, Any]:
    kind, code = _ERROR_TYPES.get(status, ("server_error" if status >= 500 else "invalid_request_error", None))
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


class OpenAIWire:
    api = "openai"
    request_id_header = "x-request-id"
    id_prefix = "chatcmpl-"

    def authenticate(self, request: Request) -> None:
        auth = request.headers.get("authorization", "")
        if not auth.startswith("Bearer ") or not auth[len("Bearer ") :].strip():
            raise BadRequest(401, "You didn't provide an API key. Send it as 'Authorization: Bearer YOUR_KEY'.")

    def parse(self, body: dict[str, Any], resolve: Any) -> Parsed:
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise BadRequest(400, "you must provide a model parameter")
        try:
            prompt = Prompt.from_wire(body.get("messages"))
        except PromptError as e:
            raise BadRequest(400, str(e)) from None
        fmt = body.get("response_format")
        # json_object is honoured loosely: the reply is JSON-shaped, nothing is enforced
        json_mode = isinstance(fmt, dict) and fmt.get("type") in ("json_object", "json_schema")
        max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
        if max_tokens is not None and (not isinstance(max_tokens, int) or max_tokens < 1):
            raise BadRequest(400, "max_tokens must be a positive integer")
        logprobs = body.get("logprobs", False)
        if not isinstance(logprobs, bool):
            raise BadRequest(400, "logprobs must be a boolean")
        return Parsed(model, CallSpec(resolve(model), prompt, json_mode, max_tokens, logprobs=logprobs,
                                      cache_prefix=openai_prefix(body.get("messages"))))  # fmt: skip

    def body(self, wire_model: str, reply: Reply, rid: str, empty: bool = False) -> dict[str, Any]:
        return completion_body(wire_model, reply, rid, empty)

    def error(self, status: int, message: str, headers: dict[str, str] | None = None) -> Response:
        return json_response(error_body(status, message), status, headers)

    def limit_headers(self, a: Admission) -> dict[str, str]:
        headers: dict[str, str] = {}
        if a.limit_requests is not None:
            headers.update({"x-ratelimit-limit-requests": str(a.limit_requests),
                            "x-ratelimit-remaining-requests": str(a.remaining_requests),
                            "x-ratelimit-reset-requests": _duration(a.reset_requests_s)})  # fmt: skip
        if a.limit_tokens is not None:
            headers.update({"x-ratelimit-limit-tokens": str(a.limit_tokens),
                            "x-ratelimit-remaining-tokens": str(a.remaining_tokens),
                            "x-ratelimit-reset-tokens": _duration(a.reset_tokens_s)})  # fmt: skip
        return headers


WIRE = OpenAIWire()


async def chat_completions(request: Request) -> Response:
    return await serve(request, WIRE)
