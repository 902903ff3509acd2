"""Every error the gateway answers, in OpenAI's shape, naming the field at fault:

    {"error": {"message": "...", "type": "invalid_request_error", "param": "messages[0].content", "code": null}}

Routes raise these; one exception handler renders them (gateway/app.py).
"""

from __future__ import annotations

from typing import Any

import orjson
from starlette.responses import Response

from producer.errors import ContractError


class ApiError(Exception):
    status = 400
    type = "invalid_request_error"

    def __init__(self, message: str, param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None):  # fmt: skip
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> Response:
        return Response(orjson.dumps(self.body()), status_code=self.status, media_type="application/json",
                        headers=self.headers)  # fmt: skip


class BadRequest(ApiError):
    pass


class Unauthorized(ApiError):
    status = 401
    type = "authentication_error"


class NotFound(ApiError):
    status = 404
    type = "not_found_error"


class Conflict(ApiError):
    status = 409


class PayloadTooLarge(ApiError):
    status = 413


class UnsupportedMediaType(ApiError):
    status = 415


class BudgetExhausted(ApiError):
    """402: the tenant's daily budget is spent; nothing was queued."""

    status = 402
    type = "insufficient_quota"


class RateLimited(ApiError):
    status = 429
    type = "rate_limit_error"


class JobFailed(ApiError):
    """A chat completion whose panel failed: the upstream calls failed, not the request."""

    status = 502
    type = "api_error"


class Unavailable(ApiError):
    status = 503
    type = "api_error"


def from_json(e: ContractError, where: str) -> BadRequest:
    """A ContractError of `producer.job_json` (reading JSON, before any field is checked) as a 400:
    not UTF-8 / not JSON stay the codes a client branches on; a NaN or a 65-bit integer names its
    field. `where` is "body" or "line N"."""
    msg = e.problems[0][1] if e.problems else str(e)
    if e.field == "(line)":
        code = "invalid_encoding" if msg.startswith("not UTF-8") else "invalid_json"
        return BadRequest(f"{where}: {msg}", param="body" if where == "body" else "(line)", code=code)
    return from_contract(e)


def from_contract(e: ContractError, prefix: str = "") -> BadRequest:
    """A contract error naming `field` becomes a 400 whose param is that field (under `prefix`)."""
    field = e.field if e.field not in ("", "(job)", "(line)") else None
    param = f"{prefix}{field}" if field else (prefix.rstrip(".") or "body")
    return BadRequest(str(e), param=param, code="invalid_value")
