"""The HTTP plumbing every provider client shares: one pooled client, one mapping from what
went wrong on the wire to the typed errors of `base.py`, and key-free reprs and messages."""

from __future__ import annotations

import email.utils
import time
from collections.abc import Callable, Mapping
from typing import Any

import httpx
import orjson

from workers.providers.base import (
    InputRejected,
    MalformedResponse,
    ProviderError,
    ProviderUnavailable,
    RateLimited,
)

# A provider's fallback when neither retry-after-ms nor Retry-After came with a 429.
ResetHint = Callable[[httpx.Headers], float | None]

_MAX_MESSAGE = 300  # an error message is one terminal line, not a provider's whole body
CONNECT_TIMEOUT_S = 10.0


class HTTPClient:
    """Owns (or borrows) an `httpx.AsyncClient` and holds the key where `repr` cannot see it."""

    def __init__(
        self,
        name: str,
        base_url: str,
        api_key: str | None,
        client: httpx.AsyncClient | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.name = name
        self.base_url = base_url.rstrip("/")
        self._key = api_key or None
        # A borrowed client is the process's shared pool: closing it is its owner's job.
        self._owns_client = client is None
        self._client = client if client is not None else httpx.AsyncClient(transport=transport)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, base_url={_strip_userinfo(self.base_url)!r})"

    __str__ = __repr__

    async def aclose(self) -> None:
        if self._owns_client:
            await self._client.aclose()

    def redact(self, text: str) -> str:
        return text.replace(self._key, "[redacted]") if self._key else text

    async def send(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str],
        timeout_s: float,
        body: Any = None,
        files: Mapping[str, tuple[str, bytes, str]] | None = None,
        data: Mapping[str, str] | None = None,
        reset_hint: ResetHint | None = None,
    ) -> httpx.Response:
        """One request; a 2xx response with its body read, or a typed `ProviderError`."""
        all_headers = dict(headers)
        content = None
        if body is not None:  # bytes are JSON already encoded (a batch sized before sending)
            content = body if isinstance(body, bytes) else orjson.dumps(body)
            all_headers["content-type"] = "application/json"
        timeout = httpx.Timeout(timeout_s, connect=min(CONNECT_TIMEOUT_S, timeout_s))
        try:
            response = await self._client.request(
                method, url, headers=all_headers, content=content, files=files, data=data, timeout=timeout
            )
        except httpx.TimeoutException as e:
            raise ProviderUnavailable(self.name, f"{type(e).__name__} after {timeout_s:g}s") from None
        except (httpx.TransportError, httpx.DecodingError) as e:
            # ConnectError, RemoteProtocolError (a body cut short), ReadError: the wire broke,
            # the request itself may be fine. The exception text names hosts, never headers.
            raise ProviderUnavailable(self.name, f"{type(e).__name__}: {self.redact(str(e))}") from None
        if response.is_success:
            return response
        raise error_for_status(self.name, response, reset_hint, self.redact)


def error_for_status(
    provider: str,
    response: httpx.Response,
    reset_hint: ResetHint | None = None,
    redact: Callable[[str], str] = str,
) -> ProviderError:
    """The typed error for a non-2xx response; the provider's message, never the request."""
    message = redact(_error_message(response))
    retry_after = parse_retry_after(response.headers)
    if response.status_code == 429 and retry_after is None and reset_hint is not None:
        retry_after = reset_hint(response.headers)
    return classify(provider, response.status_code, message, retry_after)


def classify(provider: str, status: int, message: str, retry_after: float | None = None) -> ProviderError:
    """The typed error for an HTTP status, wherever it was met (a response, a batch result line)."""
    if status == 429:
        return RateLimited(provider, message, status, retry_after)
    # 408 and 409 are the two 4xx the providers' own SDKs retry: a timeout and a lock conflict.
    if status >= 500 or status in (408, 409):
        return ProviderUnavailable(provider, message, status, retry_after)
    return InputRejected(provider, message, status)


def parse_retry_after(headers: httpx.Headers, now: float | None = None) -> float | None:
    """Seconds to wait from `retry-after-ms` (precise, read first as the SDKs do) or `Retry-After`
    (delta-seconds or an HTTP-date); None when neither is usable."""
    ms = _float(headers.get("retry-after-ms"))
    if ms is not None:
        return max(0.0, ms / 1000)
    raw = headers.get("retry-after")
    if raw is None:
        return None
    seconds = _float(raw)
    if seconds is not None:
        return max(0.0, seconds)
    try:
        when = email.utils.parsedate_to_datetime(raw)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:  # RFC 9110 dates are GMT; a naive parse means the zone was omitted
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def json_object(provider: str, response: httpx.Response) -> dict[str, Any]:
    """The body as a JSON object, or MalformedResponse (a truncated or non-JSON body)."""
    try:
        body = orjson.loads(response.content)
    except orjson.JSONDecodeError:
        raise MalformedResponse(
            provider, f"body is not JSON ({len(response.content)} bytes)", response.status_code
        ) from None
    if not isinstance(body, dict):
        raise MalformedResponse(provider, f"body is JSON {type(body).__name__}, not an object", response.status_code)
    return body


def error_message(body: Any) -> str | None:
    """`error.message` in the envelope both API families use, if there is one."""
    if isinstance(body, dict):
        err = body.get("error")
        if isinstance(err, dict):
            inner = err.get("error")  # Anthropic batch lines nest a whole error response
            if isinstance(inner, dict) and isinstance(inner.get("message"), str):
                return str(inner["message"])
            if isinstance(err.get("message"), str):
                return str(err["message"])
        if isinstance(err, str):
            return err
        if isinstance(body.get("message"), str):
            return str(body["message"])
    return None


def token_count(value: object) -> int:
    """A usage field as a count; 0 when a gateway left it out or sent nonsense."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


def _error_message(response: httpx.Response) -> str:
    try:
        body = orjson.loads(response.content)
    except orjson.JSONDecodeError:
        body = None
    text = error_message(body) or response.reason_phrase or "error"
    return " ".join(text.split())[:_MAX_MESSAGE]


def _float(raw: str | None) -> float | None:
    if raw is None:
        return None
    try:
        value = float(raw.strip())
    except ValueError:
        return None
    return value if value == value and value not in (float("inf"), float("-inf")) else None


def _strip_userinfo(url: str) -> str:
    try:
        return str(httpx.URL(url).copy_with(username=None, password=None))
    except Exception:  # a URL httpx cannot parse fails at the first request, with its own message
        return url
