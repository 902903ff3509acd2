"""OpenAI's Batch API: JSONL files uploaded to `/files` (purpose `batch`), one `/batches` job per
file over `/v1/chat/completions` in a 24 h window, results downloaded from output and error files.

Limits per file: one model, 50,000 lines, 200 MB; `build_batch_files` splits to fit.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import httpx
import orjson

from workers.providers._http import HTTPClient, classify, error_message, json_object
from workers.providers.base import ChatRequest, MalformedResponse, ProviderError, ProviderUnavailable
from workers.providers.batch import BatchResult, BatchState, BatchStatus, counts, epoch, split
from workers.providers.openai import parse_completion, request_body

MAX_LINES = 50_000
MAX_BYTES = 200_000_000  # the documented 200 MB, read as decimal to stay on the safe side
ENDPOINT = "/v1/chat/completions"
_STATES: dict[str, BatchState] = {
    "validating": "pending",
    "in_progress": "pending",
    "finalizing": "pending",
    "cancelling": "pending",
    "completed": "done",
    "failed": "failed",
    "expired": "expired",
    "cancelled": "cancelled",
}
# Lines the batch never ran (window expired, batch cancelled): the request itself may be fine.
_NOT_RUN = {"batch_expired", "batch_cancelled"}


@dataclass(frozen=True)
class BatchFile:
    model: str
    content: bytes  # JSONL, one request a line
    lines: int


def build_batch_files(
    items: Sequence[tuple[str, ChatRequest]],
    *,
    max_lines: int = MAX_LINES,
    max_bytes: int = MAX_BYTES,
    provider: str = "openai",
) -> list[BatchFile]:
    """The JSONL files for `(custom_id, request)` pairs: grouped by model (the API takes one model
    per file), in order, split at the line and byte limits. Raises InputRejected (duplicate
    custom id, one line over the byte limit)."""
    by_model: dict[str, list[tuple[str, bytes]]] = {}
    for custom_id, request in items:
        line = {"custom_id": custom_id, "method": "POST", "url": ENDPOINT, "body": request_body(request)}
        by_model.setdefault(request.model, []).append((custom_id, orjson.dumps(line)))
    files: list[BatchFile] = []
    for model, lines in by_model.items():
        for group in split(provider, lines, max_items=max_lines, max_bytes=max_bytes, overhead=1):
            files.append(BatchFile(model, b"\n".join(group) + b"\n", len(group)))
    return files


class OpenAIBatches(HTTPClient):
    """The Files and Batches endpoints under an OpenAI-compatible `base_url` (".../v1")."""

    transfer_timeout_s = 300.0  # uploads and downloads of files up to 200 MB
    timeout_s = 30.0

    def headers(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self._key}"} if self._key else {}

    async def submit(self, items: Sequence[tuple[str, ChatRequest]]) -> list[BatchStatus]:
        """Upload one file per model and size limit and start a batch on each. Not atomic: an error
        on a later file leaves the earlier batches running; a caller that must record every batch
        id as it starts calls `build_batch_files`, `upload` and `create` itself."""
        statuses = []
        for file in build_batch_files(items, provider=self.name):
            statuses.append(await self.create(await self.upload(file.content)))
        return statuses

    async def upload(self, jsonl: bytes, filename: str = "batch.jsonl") -> str:
        """The id of the uploaded input file."""
        response = await self.send(
            "POST",
            f"{self.base_url}/files",
            headers=self.headers(),
            files={"file": (filename, jsonl, "application/jsonl")},
            data={"purpose": "batch"},
            timeout_s=self.transfer_timeout_s,
        )
        file_id = json_object(self.name, response).get("id")
        if not isinstance(file_id, str):
            raise MalformedResponse(self.name, "file upload answered without an id")
        return file_id

    async def create(self, input_file_id: str, metadata: dict[str, str] | None = None) -> BatchStatus:
        body: dict[str, Any] = {"input_file_id": input_file_id, "endpoint": ENDPOINT, "completion_window": "24h"}
        if metadata:
            body["metadata"] = metadata
        response = await self.send(
            "POST", f"{self.base_url}/batches", headers=self.headers(), body=body, timeout_s=self.timeout_s
        )
        return self._status(response)

    async def status(self, batch_id: str) -> BatchStatus:
        response = await self.send(
            "GET", f"{self.base_url}/batches/{batch_id}", headers=self.headers(), timeout_s=self.timeout_s
        )
        return self._status(response)

    async def cancel(self, batch_id: str) -> BatchStatus:
        response = await self.send(
            "POST", f"{self.base_url}/batches/{batch_id}/cancel", headers=self.headers(), timeout_s=self.timeout_s
        )
        return self._status(response)

    async def download(self, file_id: str) -> bytes:
        response = await self.send(
            "GET", f"{self.base_url}/files/{file_id}/content", headers=self.headers(), timeout_s=self.transfer_timeout_s
        )
        return response.content

    async def results(self, status: BatchStatus) -> list[BatchResult]:
        """Every line of the output and error files; a line's failure is its ProviderError."""
        out: list[BatchResult] = []
        for file_id in (status.output_file_id, status.error_file_id):
            if file_id:
                for raw in (await self.download(file_id)).splitlines():
                    if raw.strip() and (result := parse_result_line(self.name, raw, status.elapsed_ms)) is not None:
                        out.append(result)
        return out

    def _status(self, response: httpx.Response) -> BatchStatus:
        body = json_object(self.name, response)
        raw = str(body.get("status"))
        if not isinstance(body.get("id"), str) or raw not in _STATES:
            raise MalformedResponse(self.name, f"not a batch object (status {raw!r})")
        ended = next(
            (body.get(k) for k in ("completed_at", "failed_at", "expired_at", "cancelled_at") if body.get(k)), None
        )
        errors = (body.get("errors") or {}).get("data") if isinstance(body.get("errors"), dict) else None
        first = errors[0] if isinstance(errors, list) and errors and isinstance(errors[0], dict) else {}
        return BatchStatus(
            id=body["id"],
            state=_STATES[raw],
            raw_status=raw,
            counts=counts(body.get("request_counts")),
            created_at=epoch(body.get("created_at")),
            ended_at=epoch(ended),
            message=str(first["message"]) if first.get("message") else None,
            output_file_id=body.get("output_file_id") or None,
            error_file_id=body.get("error_file_id") or None,
        )


def parse_result_line(provider: str, raw: bytes, latency_ms: float) -> BatchResult | None:
    """One output or error file line as `(custom_id, Completion | ProviderError)`; None for a
    line with no custom id, which no caller could match anyway."""
    try:
        line = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(line, dict) or not isinstance(line.get("custom_id"), str):
        return None
    custom_id: str = line["custom_id"]
    error, response = line.get("error"), line.get("response")
    if isinstance(error, dict):
        message = str(error.get("message") or error.get("code") or "line failed")
        if error.get("code") in _NOT_RUN:
            return custom_id, ProviderUnavailable(provider, message)
        return custom_id, classify(provider, 400, message)
    if not isinstance(response, dict) or not isinstance(response.get("body"), dict):
        return custom_id, MalformedResponse(provider, "result line without a response body")
    status, body = response.get("status_code"), response["body"]
    if status != 200:
        code = status if isinstance(status, int) else 500
        return custom_id, classify(provider, code, error_message(body) or f"HTTP {code}")
    try:
        return custom_id, parse_completion(provider, body, latency_ms, str(body.get("model") or ""))
    except ProviderError as e:
        return custom_id, e
