"""Anthropic Message Batches: create with `requests: [{custom_id, params}]`, poll
`processing_status` (in_progress → canceling → ended), then read JSONL results from the absolute
`results_url`, one line per request: succeeded | errored | canceled | expired.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from sim import anthropic_api
from sim.batch import BatchJob, BatchLine, BatchStore, LineResult
from sim.responses import request_id
from sim.serve import BadRequest, json_response

MAX_REQUESTS = 100_000


def _store(request: Request) -> BatchStore:
    store: BatchStore = request.app.state.batches
    return store


def _error(status: int, message: str) -> Response:
    return json_response(anthropic_api.error_body(status, message), status)


def _iso(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


def _parse(body: Any, resolve: Any) -> list[BatchLine]:
    """Anthropic validates every request's params at create time and refuses the whole batch."""
    requests = body.get("requests") if isinstance(body, dict) else None
    if not isinstance(requests, list) or not requests:
        raise BadRequest(400, "requests: a non-empty list is required")
    if len(requests) > MAX_REQUESTS:
        raise BadRequest(413, f"requests: at most {MAX_REQUESTS} per batch")
    lines: list[BatchLine] = []
    seen: set[str] = set()
    for i, req in enumerate(requests):
        custom_id = req.get("custom_id") if isinstance(req, dict) else None
        if not isinstance(custom_id, str) or not custom_id:
            raise BadRequest(400, f"requests.{i}.custom_id: a non-empty string is required")
        if custom_id in seen:
            raise BadRequest(400, f"requests.{i}.custom_id: {custom_id!r} is not unique")
        seen.add(custom_id)
        try:
            parsed = anthropic_api.parse_params(req.get("params"), resolve)
        except BadRequest as e:
            raise BadRequest(400, f"requests.{i}.params.{e.message}") from None
        lines.append(BatchLine(custom_id, parsed.wire_model, parsed.spec))
    return lines


def _batch_object(request: Request, store: BatchStore, job: BatchJob) -> dict[str, object]:
    phase = job.phase()
    ended = phase in ("ended", "cancelled")
    counts = dict.fromkeys(("processing", "succeeded", "errored", "canceled", "expired"), 0)
    if ended:
        for r in store.results(job):
            counts[r.kind] += 1
    else:
        counts["processing"] = len(job.lines)
    end_wall = job.created_wall + job.delay_s if phase == "ended" else (job.cancel_wall or 0) + 0.1 * job.delay_s
    results_url = str(request.url_for("anthropic_batch_results", batch_id=job.id)) if ended else None
    return {
        "id": job.id, "type": "message_batch",
        "processing_status": "ended" if ended else "canceling" if phase == "cancelling" else "in_progress",
        "request_counts": counts, "ended_at": _iso(end_wall) if ended else None,
        "created_at": _iso(job.created_wall), "expires_at": _iso(job.created_wall + 86_400),
        "archived_at": None, "cancel_initiated_at": _iso(job.cancel_wall), "results_url": results_url,
    }  # fmt: skip


def _result_line(r: LineResult) -> dict[str, object]:
    if r.kind == "succeeded" and r.reply is not None:
        result: dict[str, object] = {"type": "succeeded", "message": anthropic_api.message_body(r.wire_model, r.reply, request_id("msg_"))}
    elif r.kind == "errored":
        result = {"type": "errored", "error": anthropic_api.error_body(500, "simulated batch line error (batch_line_error_rate)")}
    else:
        result = {"type": r.kind}
    return {"custom_id": r.custom_id, "result": result}


def _authorised(request: Request) -> Response | None:
    try:
        anthropic_api.WIRE.authenticate(request)
    except BadRequest as e:
        return _error(e.status, e.message)
    return None


async def create_batch(request: Request) -> Response:
    store = _store(request)
    if (denied := _authorised(request)) is not None:
        return denied
    try:
        body = orjson.loads(await request.body())
        lines = _parse(body, store.sim.aliases.resolve)
    except orjson.JSONDecodeError:
        return _error(400, "the request body is not JSON")
    except BadRequest as e:
        return _error(e.status, e.message)
    return json_response(_batch_object(request, store, store.create("msgbatch_", lines)))


def _job(request: Request) -> BatchJob | None:
    return _store(request).jobs.get(request.path_params["batch_id"])


async def get_batch(request: Request) -> Response:
    store, job = _store(request), _job(request)
    store.sim.stats.batch["batch_polls"] += 1
    if (denied := _authorised(request)) is not None:
        return denied
    if job is None:
        return _error(404, f"message batch {request.path_params['batch_id']} not found")
    return json_response(_batch_object(request, store, job))


async def cancel_batch(request: Request) -> Response:
    store, job = _store(request), _job(request)
    if (denied := _authorised(request)) is not None:
        return denied
    if job is None:
        return _error(404, f"message batch {request.path_params['batch_id']} not found")
    if job.phase() not in ("ended", "cancelled"):
        job.cancel()
    return json_response(_batch_object(request, store, job))


async def batch_results(request: Request) -> Response:
    store, job = _store(request), _job(request)
    if (denied := _authorised(request)) is not None:
        return denied
    if job is None:
        return _error(404, f"message batch {request.path_params['batch_id']} not found")
    if job.phase() not in ("ended", "cancelled"):
        return _error(400, "results are available once processing_status is 'ended'")
    body = b"".join(orjson.dumps(_result_line(r)) + b"\n" for r in store.results(job))
    return Response(body, media_type="application/binary")
