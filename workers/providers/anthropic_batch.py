"""Anthropic's Message Batches: `POST {base_url}/v1/messages/batches` with `{requests: [{custom_id,
params}]}`, polled until `ended`, results as JSONL from the batch's `results_url`.

Limits per batch: 100,000 requests or 256 MB; custom ids of 1-64 `[A-Za-z0-9_-]`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import httpx
import orjson

from workers.providers._http import HTTPClient, classify, error_message, json_object
from workers.providers.anthropic import API_VERSION, parse_message, request_body
from workers.providers.base import ChatRequest, InputRejected, MalformedResponse, ProviderError, ProviderUnavailable
from workers.providers.batch import BatchResult, BatchState, BatchStatus, counts, epoch, split

MAX_REQUESTS = 100_000
MAX_BYTES = 256_000_000  # the documented 256 MB, read as decimal to stay on the safe side
_CUSTOM_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
_ENVELOPE = len(b'{"requests":[]}')
# `errored` lines carry an API error type, not a status: the status each type is sent with.
_ERROR_STATUS = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "billing_error": 402,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "overloaded_error": 529,
}


def build_batch_bodies(
    items: Sequence[tuple[str, ChatRequest]],
    *,
    max_requests: int = MAX_REQUESTS,
    max_bytes: int = MAX_BYTES,
    provider: str = "anthropic",
) -> list[bytes]:
    """The JSON bodies for `(custom_id, request)` pairs, in order, split at the request and byte
    limits. Raises InputRejected for a custom id the API would refuse, a duplicate, or one request
    over the byte limit: better here, by name, than as a 400 for the whole batch."""
    encoded = []
    for custom_id, request in items:
        if not _CUSTOM_ID.fullmatch(custom_id):
            raise InputRejected(provider, f"custom_id {custom_id!r}: Anthropic takes 1-64 of [A-Za-z0-9_-]")
        encoded.append((custom_id, orjson.dumps({"custom_id": custom_id, "params": request_body(request)})))
    groups = split(provider, encoded, max_items=max_requests, max_bytes=max_bytes - _ENVELOPE, overhead=1)
    return [b'{"requests":[' + b",".join(group) + b"]}" for group in groups]


class AnthropicBatches(HTTPClient):
    """The Message Batches endpoints under an Anthropic `base_url` (the origin, no "/v1")."""

    transfer_timeout_s = 300.0  # bodies and results up to 256 MB
    timeout_s = 30.0

    def headers(self) -> dict[str, str]:
        headers = {"anthropic-version": API_VERSION}
        if self._key:
            headers["x-api-key"] = self._key
        return headers

    async def submit(self, items: Sequence[tuple[str, ChatRequest]]) -> list[BatchStatus]:
        """One batch per size-limited body. Not atomic: an error on a later body leaves the earlier
        batches running; to record each id as it starts, call `build_batch_bodies` and `create`."""
        return [await self.create(body) for body in build_batch_bodies(items, provider=self.name)]

    async def create(self, body: bytes) -> BatchStatus:
        response = await self.send(
            "POST", self._url(), headers=self.headers(), body=body, timeout_s=self.transfer_timeout_s
        )
        return self._status(response)

    async def status(self, batch_id: str) -> BatchStatus:
        response = await self.send("GET", self._url(batch_id), headers=self.headers(), timeout_s=self.timeout_s)
        return self._status(response)

    async def cancel(self, batch_id: str) -> BatchStatus:
        response = await self.send(
            "POST", self._url(batch_id, "cancel"), headers=self.headers(), timeout_s=self.timeout_s
        )
        return self._status(response)

    async def results(self, status: BatchStatus) -> list[BatchResult]:
        """Every line at `results_url`; a line's failure is its ProviderError."""
        if status.raw_status != "ended" or not status.results_url:
            return []
        response = await self.send(
            "GET", self.results_location(status.results_url), headers=self.headers(), timeout_s=self.transfer_timeout_s
        )
        out: list[BatchResult] = []
        for raw in response.content.splitlines():
            if raw.strip() and (result := parse_result_line(self.name, raw, status.elapsed_ms)) is not None:
                out.append(result)
        return out

    def results_location(self, results_url: str) -> str:
        """`results_url` joined to the base origin (emulators answer it relative). The key goes only
        to the origin it was configured for: a results_url elsewhere is refused, not followed."""
        base = httpx.URL(self.base_url)
        url = base.join(results_url)
        if (url.scheme, url.host, url.port) != (base.scheme, base.host, base.port):
            raise MalformedResponse(self.name, f"results_url points off the API origin ({url.host})")
        return str(url)

    def _url(self, *parts: str) -> str:
        return "/".join([f"{self.base_url}/v1/messages/batches", *parts])

    def _status(self, response: httpx.Response) -> BatchStatus:
        body = json_object(self.name, response)
        raw = str(body.get("processing_status"))
        if not isinstance(body.get("id"), str) or raw not in ("in_progress", "canceling", "ended"):
            raise MalformedResponse(self.name, f"not a message batch (processing_status {raw!r})")
        tally = counts(body.get("request_counts"))
        return BatchStatus(
            id=body["id"],
            state=_state(raw, body, tally),
            raw_status=raw,
            counts=tally,
            created_at=epoch(body.get("created_at")),
            ended_at=epoch(body.get("ended_at")),
            results_url=body.get("results_url") or None,
        )


def _state(raw: str, body: dict[str, Any], tally: dict[str, int]) -> BatchState:
    # Anthropic says only "ended"; how it ended is read from who cancelled and what ran.
    if raw != "ended":
        return "pending"
    if body.get("cancel_initiated_at"):
        return "cancelled"
    if tally.get("expired") and not tally.get("succeeded") and not tally.get("errored"):
        return "expired"
    return "done"


def parse_result_line(provider: str, raw: bytes, latency_ms: float) -> BatchResult | None:
    """One results line as `(custom_id, Completion | ProviderError)`; None without a custom id."""
    try:
        line = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(line, dict) or not isinstance(line.get("custom_id"), str):
        return None
    custom_id: str = line["custom_id"]
    result = line.get("result")
    if not isinstance(result, dict):
        return custom_id, MalformedResponse(provider, "result line without a result")
    kind = result.get("type")
    if kind == "succeeded" and isinstance(result.get("message"), dict):
        message = result["message"]
        try:
            return custom_id, parse_message(provider, message, latency_ms, str(message.get("model") or ""))
        except ProviderError as e:
            return custom_id, e
    if kind in ("canceled", "expired"):  # never ran: the request itself may be fine
        return custom_id, ProviderUnavailable(provider, f"batch line {kind}")
    if kind == "errored":
        err = result.get("error")
        inner = err.get("error") if isinstance(err, dict) and isinstance(err.get("error"), dict) else err
        status = _ERROR_STATUS.get(str(inner.get("type")) if isinstance(inner, dict) else "", 500)
        return custom_id, classify(provider, status, error_message({"error": err}) or "batch line errored")
    return custom_id, MalformedResponse(provider, f"result line of unknown type {kind!r}")
