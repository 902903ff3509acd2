"""The jobs API: the producer contract over HTTP.

    POST /v1/jobs                 one Job as JSON (+ `callback_url`); `Idempotency-Key` header
    POST /v1/jobs:batch           JSONL, one Job a line: good lines run, bad ones are reported by line
    GET  /v1/jobs/{id}?wait=S     status, result and receipt; waits up to S s for the decision
    GET  /v1/jobs/{id}/events     Server-Sent Events: queued, lane, member, panel_decided, decided|failed
"""

from __future__ import annotations

from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from gateway import events
from gateway.context import admit, body, gw, json_body
from gateway.errors import BadRequest
from gateway.submission import draft, parse_jsonl
from gateway.waiting import view

JSONL_TYPES = ("application/jsonl", "application/x-ndjson", "application/json-lines", "text/plain",
               "application/octet-stream", "")  # fmt: skip


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(data), status_code=status, media_type="application/json", headers=headers)


def idempotency_header(request: Request) -> str | None:
    key = request.headers.get("idempotency-key")
    if key is not None and not key:
        raise BadRequest("Idempotency-Key header is empty; give a key or leave the header out",
                         param="Idempotency-Key", code="invalid_value")  # fmt: skip
    return key


async def create_job(request: Request) -> Response:
    caller = await admit(request)
    g = gw(request)
    d = draft(await json_body(request), caller, idempotency_header(request), private_ok=g.settings.callback_private_hosts)
    # an idempotent submit may wait on the key's first job (producer/client.py): never on the loop
    job_id = await g.blocking(g.submitter.submit, d, caller, short=not d.job.idempotency_key)
    return json_response({"id": job_id, "object": "panel.job", "status": "queued"}, 202,
                         {"Location": f"/v1/jobs/{job_id}"})  # fmt: skip


async def create_jobs(request: Request) -> Response:
    caller = await admit(request)
    g = gw(request)
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype not in JSONL_TYPES:
        raise BadRequest(f"content-type {ctype!r}: send JSONL (application/jsonl), one Job a line",
                         param="content-type", code="unsupported_media_type")  # fmt: skip
    raw = await body(request, g.settings.max_file_bytes)
    drafts, errors = parse_jsonl(raw, caller, g.settings.max_batch_lines, g.settings.callback_private_hosts)
    if not drafts and not errors:
        raise BadRequest("body: no jobs; send one JSON Job per line", param="body", code="empty")
    report = await g.blocking(g.submitter.submit_many, drafts, caller)
    errors = sorted(errors + report.errors, key=lambda e: e["line"])
    out = {"object": "panel.job_batch", "submitted": [{"line": n, "id": j} for n, j in report.submitted],
           "errors": errors, "total": len(report.submitted) + len(errors)}  # fmt: skip
    if not report.submitted:  # nothing ran: a client error, with the first line's reason on top
        first = errors[0]
        return json_response({"error": {"message": f"no line was queued; line {first['line']}: {first['message']}",
                                         "type": "invalid_request_error", "param": first["param"], "code": first["code"]},
                              **out}, 400)  # fmt: skip
    return json_response(out, 200)


def wait_param(request: Request, most: float) -> float:
    raw = request.query_params.get("wait")
    if raw is None:
        return 0.0
    try:
        wait = float(raw)
    except ValueError:
        raise BadRequest(f"wait: {raw[:40]!r} is not a number of seconds", param="wait", code="invalid_value") from None
    if not 0 <= wait <= most:
        raise BadRequest(f"wait: give 0 to {most:g} seconds", param="wait", code="invalid_value")
    return wait


async def get_job(request: Request) -> Response:
    caller = await admit(request)
    g = gw(request)
    job_id = request.path_params["job_id"]
    wait = wait_param(request, g.settings.wait_max_s)
    row = await (g.jobs.wait(job_id, caller.tenant, wait) if wait else g.jobs.owned(job_id, caller.tenant))
    return json_response(view(job_id, row))


async def job_events(request: Request) -> Response:
    caller = await admit(request)
    g = gw(request)
    job_id = request.path_params["job_id"]
    await g.jobs.owned(job_id, caller.tenant)
    stream = events.stream(g.redis, job_id, g.settings.sse_poll_s, request.headers.get("last-event-id"))
    return StreamingResponse(stream, media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})  # fmt: skip


routes = [
    Route("/v1/jobs", create_job, methods=["POST"]),
    Route("/v1/jobs:batch", create_jobs, methods=["POST"]),
    Route("/v1/jobs/{job_id}", get_job, methods=["GET"]),
    Route("/v1/jobs/{job_id}/events", job_events, methods=["GET"]),
]
