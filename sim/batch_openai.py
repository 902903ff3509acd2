"""OpenAI Files and Batch APIs: upload a JSONL of chat requests, create a batch, poll it through
validating → in_progress → finalizing → completed (or failed, expired, cancelling → cancelled),
then read the output and error files. Results match requests by `custom_id`.

Upload only checks that the file is JSONL; request-level problems (custom_id, method, url, body,
one model per file, ≤ 50,000 lines) fail the batch during `validating` with `errors.data[].line`,
as the real API reports them.
"""

from __future__ import annotations

import email.parser
import email.policy
import secrets
import time
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from sim import openai_api
from sim.batch import BatchJob, BatchLine, BatchStore, LineResult
from sim.serve import BadRequest, json_response

MAX_LINES = 50_000
ENDPOINT = "/v1/chat/completions"
_FORM_PARSER = email.parser.BytesParser(policy=email.policy.HTTP)


def _store(request: Request) -> BatchStore:
    store: BatchStore = request.app.state.batches
    return store


def _error(status: int, message: str) -> Response:
    return json_response(openai_api.error_body(status, message), status)


def _form(request: Request, body: bytes) -> dict[str, tuple[str | None, bytes]]:
    """multipart/form-data by the stdlib parser: no runtime dependency on python-multipart."""
    ctype = request.headers.get("content-type", "")
    if not ctype.startswith("multipart/form-data"):
        raise BadRequest(400, "expected multipart/form-data with 'file' and 'purpose'")
    msg = _FORM_PARSER.parsebytes(b"Content-Type: " + ctype.encode() + b"\r\n\r\n" + body)
    fields: dict[str, tuple[str | None, bytes]] = {}
    for part in msg.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if isinstance(name, str):
            payload = part.get_payload(decode=True)
            fields[name] = (part.get_filename(), payload if isinstance(payload, bytes) else b"")
    return fields


def _file_object(file_id: str, filename: str, purpose: str, size: int) -> dict[str, object]:
    return {"id": file_id, "object": "file", "bytes": size, "created_at": int(time.time()),
            "filename": filename, "purpose": purpose, "status": "processed", "status_details": None}  # fmt: skip


def _save(store: BatchStore, content: bytes, filename: str, purpose: str) -> dict[str, object]:
    file_id = f"file-{secrets.token_hex(12)}"
    store.files[file_id] = _file_object(file_id, filename, purpose, len(content))
    store.contents[file_id] = content
    return store.files[file_id]


async def upload_file(request: Request) -> Response:
    store = _store(request)
    try:
        openai_api.WIRE.authenticate(request)
        fields = _form(request, await request.body())
        if "file" not in fields or "purpose" not in fields:
            raise BadRequest(400, "'file' and 'purpose' are required")
        purpose = fields["purpose"][1].decode()
        filename, content = fields["file"]
        if purpose == "batch":
            for n, line in enumerate(content.splitlines(), 1):
                if line.strip() and not isinstance(_loads(line), dict):
                    raise BadRequest(400, f"Invalid file format for Batch API: line {n} is not a JSON object")
    except BadRequest as e:
        return _error(e.status, e.message)
    store.sim.stats.batch["batch_files"] += 1
    return json_response(_save(store, content, filename or "upload.jsonl", purpose))


def _loads(line: bytes) -> Any:
    try:
        return orjson.loads(line)
    except orjson.JSONDecodeError:
        return None


def _denied(request: Request) -> Response | None:
    try:
        openai_api.WIRE.authenticate(request)
    except BadRequest as e:
        return _error(e.status, e.message)
    return None


async def file_content(request: Request) -> Response:
    store = _store(request)
    if (denied := _denied(request)) is not None:
        return denied
    content = store.contents.get(request.path_params["file_id"])
    if content is None:
        return _error(404, f"No such File object: {request.path_params['file_id']}")
    return Response(content, media_type="application/octet-stream")


def _validate(store: BatchStore, content: bytes) -> tuple[list[BatchLine], list[dict[str, object]]]:
    lines: list[BatchLine] = []
    errors: list[dict[str, object]] = []
    seen: set[str] = set()
    models: set[str] = set()

    def fail(n: int, code: str, message: str) -> None:
        errors.append({"code": code, "message": message, "param": None, "line": n})

    rows = [(n, raw) for n, raw in enumerate(content.splitlines(), 1) if raw.strip()]
    if len(rows) > MAX_LINES:
        fail(len(rows), "too_many_requests", f"a batch holds at most {MAX_LINES} requests, this file has {len(rows)}")
    for n, raw in rows[:MAX_LINES]:
        row = _loads(raw)
        if not isinstance(row, dict):
            fail(n, "invalid_json", "the line is not a JSON object")
        elif not isinstance(row.get("custom_id"), str) or not row["custom_id"]:
            fail(n, "invalid_request", "custom_id: a non-empty string is required")
        elif row["custom_id"] in seen:
            fail(n, "duplicate_custom_id", f"custom_id {row['custom_id']!r} is used more than once")
        elif row.get("method") != "POST":
            fail(n, "invalid_request", "method: must be POST")
        elif row.get("url") != ENDPOINT:
            fail(n, "invalid_url", f"url: must be {ENDPOINT}")
        elif not isinstance(row.get("body"), dict):
            fail(n, "invalid_request", "body: an object is required")
        else:
            try:
                parsed = openai_api.WIRE.parse(row["body"], store.sim.aliases.resolve)
            except BadRequest as e:
                fail(n, "invalid_request", e.message)
                continue
            seen.add(row["custom_id"])
            models.add(parsed.wire_model)
            if len(models) > 1:
                fail(n, "mismatched_model", f"one model per file: line {n} uses {parsed.wire_model}")
            lines.append(BatchLine(row["custom_id"], parsed.wire_model, parsed.spec))
    return lines, errors


async def create_batch(request: Request) -> Response:
    store = _store(request)
    try:
        openai_api.WIRE.authenticate(request)
        body = _loads(await request.body())
        if not isinstance(body, dict):
            raise BadRequest(400, "the request body is not a JSON object")
        if body.get("endpoint") != ENDPOINT:
            raise BadRequest(400, f"endpoint: only {ENDPOINT} is simulated")
        if body.get("completion_window") != "24h":
            raise BadRequest(400, "completion_window: must be '24h'")
        content = store.contents.get(str(body.get("input_file_id")))
        if content is None:
            raise BadRequest(400, f"input_file_id: no such file {body.get('input_file_id')!r}")
    except BadRequest as e:
        return _error(e.status, e.message)
    lines, errors = _validate(store, content)
    job = store.create("batch_", [] if errors else lines)
    job.validation_errors = errors
    job.extra.update(input_file_id=body["input_file_id"], metadata=body.get("metadata"))
    return json_response(_batch_object(store, job))


def _result_line(r: LineResult) -> dict[str, object]:
    rid = f"req_{secrets.token_hex(12)}"
    line_id = f"batch_req_{secrets.token_hex(12)}"
    if r.kind == "succeeded" and r.reply is not None:
        body = openai_api.completion_body(r.wire_model, r.reply, f"chatcmpl-{secrets.token_hex(12)}")
        return {"id": line_id, "custom_id": r.custom_id, "response": {"status_code": 200, "request_id": rid, "body": body}, "error": None}
    if r.kind == "errored":
        body = openai_api.error_body(500, "simulated batch line error (batch_line_error_rate)")
        return {"id": line_id, "custom_id": r.custom_id, "response": {"status_code": 500, "request_id": rid, "body": body}, "error": None}
    code = "batch_expired" if r.kind == "expired" else "batch_cancelled"
    message = "This request could not be executed before the completion window expired." if r.kind == "expired" \
        else "This request was not executed because the batch was cancelled."  # fmt: skip
    return {"id": line_id, "custom_id": r.custom_id, "response": None, "error": {"code": code, "message": message}}


def _write_outputs(store: BatchStore, job: BatchJob) -> None:
    if "output_file_id" in job.extra:
        return
    results = store.results(job)
    ok = b"".join(orjson.dumps(_result_line(r)) + b"\n" for r in results if r.kind == "succeeded")
    bad = b"".join(orjson.dumps(_result_line(r)) + b"\n" for r in results if r.kind != "succeeded")
    job.extra["output_file_id"] = _save(store, ok, f"{job.id}_output.jsonl", "batch_output")["id"] if ok else None
    job.extra["error_file_id"] = _save(store, bad, f"{job.id}_error.jsonl", "batch_output")["id"] if bad else None


def _batch_object(store: BatchStore, job: BatchJob) -> dict[str, object]:
    phase = job.phase()
    n = len(job.lines)
    status: str = phase
    timestamps: dict[str, int | None] = dict.fromkeys(("in_progress_at", "finalizing_at", "completed_at", "failed_at",
                                                       "expired_at", "cancelling_at", "cancelled_at"))  # fmt: skip
    counts = {"total": n, "completed": job.lines_done(), "failed": 0}
    if job.validation_errors and phase not in ("validating",):
        status, timestamps["failed_at"] = "failed", job.phase_wall(0.1)
        counts = {"total": 0, "completed": 0, "failed": 0}
    elif phase in ("ended", "cancelled"):
        _write_outputs(store, job)
        results = store.results(job)
        counts["completed"] = sum(r.kind == "succeeded" for r in results)
        counts["failed"] = n - counts["completed"]
        if phase == "cancelled":
            timestamps["cancelled_at"] = int(time.time())
        elif job.expire:
            status, timestamps["expired_at"] = "expired", job.phase_wall(1.0)
        else:
            status, timestamps["completed_at"] = "completed", job.phase_wall(1.0)
    if phase == "cancelling":
        counts["completed"] = job.lines_done()
    if job.cancel_wall is not None:
        timestamps["cancelling_at"] = int(job.cancel_wall)
    if status in ("in_progress", "finalizing", "completed", "expired"):
        timestamps["in_progress_at"] = job.phase_wall(0.1)
    if status in ("finalizing", "completed", "expired"):
        timestamps["finalizing_at"] = job.phase_wall(0.8)
    return {
        "id": job.id, "object": "batch", "endpoint": ENDPOINT, "completion_window": "24h",
        "errors": {"object": "list", "data": job.validation_errors} if status == "failed" else None,
        "input_file_id": job.extra.get("input_file_id"), "status": status,
        "output_file_id": job.extra.get("output_file_id"), "error_file_id": job.extra.get("error_file_id"),
        "created_at": int(job.created_wall), "expires_at": int(job.created_wall) + 86_400,
        **timestamps, "request_counts": counts, "metadata": job.extra.get("metadata"),
    }  # fmt: skip


def _job(request: Request) -> BatchJob | None:
    return _store(request).jobs.get(request.path_params["batch_id"])


async def get_batch(request: Request) -> Response:
    store, job = _store(request), _job(request)
    store.sim.stats.batch["batch_polls"] += 1
    if (denied := _denied(request)) is not None:
        return denied
    if job is None:
        return _error(404, f"No batch found with id '{request.path_params['batch_id']}'")
    return json_response(_batch_object(store, job))


async def cancel_batch(request: Request) -> Response:
    store, job = _store(request), _job(request)
    if (denied := _denied(request)) is not None:
        return denied
    if job is None:
        return _error(404, f"No batch found with id '{request.path_params['batch_id']}'")
    status = _batch_object(store, job)["status"]
    if status not in ("validating", "in_progress", "finalizing", "cancelling"):
        return _error(400, f"Cannot cancel a batch with status {status}.")
    job.cancel()
    return json_response(_batch_object(store, job))

