"""OpenAI's Batch API on panels: each line of an uploaded file becomes a batch-lane job (`mode:
batch`: members go through the providers' batch APIs at batch prices); the output file has one
line per `custom_id` in OpenAI's batch output format, each completion carrying its receipt.

    POST /v1/batches {input_file_id, endpoint: /v1/chat/completions, completion_window: 24h}
    GET  /v1/batches/{id}          in_progress -> completed (output_file_id, error_file_id)
    POST /v1/batches/{id}/cancel   -> cancelled: decided lines in the output, the rest as errors

As OpenAI does, a file with any invalid line fails as a whole (status `failed`, `errors` naming
each line and field) and nothing is queued. A batch is finalised by whichever replica first
finds all its jobs done (a SET NX), so any replica can answer for it. Cancelling stops the
batch's accounting; jobs already queued still run to their decision (the fleet has no job
cancel yet) and stay readable at /v1/jobs.
"""

from __future__ import annotations

import secrets
import time
from datetime import UTC, datetime
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.context import Gateway, admit, gw, json_body
from gateway.errors import ApiError, BadRequest, NotFound, from_contract
from gateway.files import Files, files_of, limit_param
from gateway.jobs import json_response
from gateway.openai_shapes import completion, panel_extension, parse_chat, to_job
from gateway.submission import Draft, draft
from gateway.tenants import Caller
from producer import job_json, keys
from producer.contract import Result
from producer.errors import ContractError

ENDPOINTS = ("/v1/chat/completions",)
MAX_LINE_ERRORS = 100

WINDOW_S = 24 * 3600  # completion_window: 24h, the only one OpenAI offers


def batch_key(batch_id: str) -> str:
    """Hash: tenant, object (the batch object as JSON); list `:lines` of [custom_id, job id, model]."""
    return keys.gw_batch(batch_id)


def tenant_batches(tenant: str) -> str:
    """Zset: batch id -> created_at, the tenant's batches (GET /v1/batches)."""
    return keys.gw_batches(tenant)


def batch_object(batch_id: str, req: dict[str, Any], status: str, total: int) -> dict[str, Any]:
    now = int(time.time())
    return {"id": batch_id, "object": "batch", "endpoint": req["endpoint"], "errors": None,
            "input_file_id": req["input_file_id"], "completion_window": req["completion_window"], "status": status,
            "output_file_id": None, "error_file_id": None, "created_at": now,
            "in_progress_at": now if status == "in_progress" else None, "expires_at": now + WINDOW_S,
            "finalizing_at": None, "completed_at": None, "failed_at": now if status == "failed" else None,
            "expired_at": None, "cancelling_at": None, "cancelled_at": None,
            "request_counts": {"total": total, "completed": 0, "failed": 0}, "metadata": req.get("metadata")}  # fmt: skip


def check_request(data: Any) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise BadRequest("expected a JSON object", param="body", code="invalid_type")
    allowed = {"input_file_id", "endpoint", "completion_window", "metadata", "output_expires_after"}
    for k in data:
        if k not in allowed:
            shown = k[:60] if k.isprintable() else repr(k[:60])
            raise BadRequest(f"{shown}: unknown parameter; remove it", param=shown, code="unknown_parameter")
    if not isinstance(data.get("input_file_id"), str):
        raise BadRequest("input_file_id: required, the id of a file uploaded with purpose batch", param="input_file_id",
                         code="invalid_value")  # fmt: skip
    if data.get("endpoint") not in ENDPOINTS:
        raise BadRequest(f"endpoint: panels serve {', '.join(ENDPOINTS)}", param="endpoint", code="invalid_value")
    if data.get("completion_window") != "24h":
        raise BadRequest("completion_window: only 24h", param="completion_window", code="invalid_value")
    meta = data.get("metadata")
    if meta is not None and (not isinstance(meta, dict) or len(meta) > 16
                             or not all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items())):  # fmt: skip
        raise BadRequest("metadata: up to 16 string keys with string values", param="metadata", code="invalid_value")
    return data


def parse_lines(g: Gateway, content: bytes, caller: Caller, endpoint: str) -> tuple[list[tuple[int, str, str, Draft]], list[dict[str, Any]]]:
    """Every line of an input file: (line, custom_id, model, Draft), or an error naming line and param."""
    good: list[tuple[int, str, str, Draft]] = []
    errors: list[dict[str, Any]] = []
    seen: set[str] = set()
    # a line's job has the batch's completion window, not its class's deadline_s (counted from
    # submission, that would fail the later lines of a large file while they wait their turn)
    window_end = datetime.fromtimestamp(time.time() + WINDOW_S, UTC).isoformat()
    lines = content.split(b"\n")
    if len(lines) > g.settings.max_batch_lines + 1:
        raise BadRequest(f"input_file_id: {len(lines)} lines; at most {g.settings.max_batch_lines}", param="input_file_id",
                         code="too_many_lines")  # fmt: skip
    for n, line in job_json.jsonl(lines):  # the producer's reader: a NaN or a 65-bit integer names its field
        try:
            if isinstance(line, ContractError):
                raise line_error(line)
            if not isinstance(line, dict):
                raise BadRequest("expected a JSON object", param=None, code="invalid_type")
            extra = set(line) - {"custom_id", "method", "url", "body"}
            if extra:
                raise BadRequest(f"{sorted(extra)[0][:60]!r}: unknown field", param=sorted(extra)[0][:60], code="unknown_parameter")
            cid = line.get("custom_id")
            if not isinstance(cid, str) or not cid or len(cid) > 512:
                raise BadRequest("custom_id: a non-empty string up to 512 characters", param="custom_id", code="invalid_value")
            if cid in seen:
                raise BadRequest(f"custom_id {cid!r} repeats; each must be unique in the file", param="custom_id",
                                 code="duplicate_custom_id")  # fmt: skip
            seen.add(cid)
            if line.get("method") != "POST":
                raise BadRequest("method: only POST", param="method", code="invalid_value")
            if line.get("url") != endpoint:
                raise BadRequest(f"url: must be the batch's endpoint {endpoint}", param="url", code="invalid_value")
            req = parse_chat(line.get("body"), prefix="body.")
            if req.stream:
                raise BadRequest("body.stream: not in a batch", param="body.stream", code="invalid_value")
            body = to_job(req, g.catalogue, mode="batch", prefix="body.")
            body.setdefault("deadline", window_end)  # the panel extension may name an earlier one
            good.append((n, cid, req.model, draft(body, caller, prefix="body.", private_ok=g.settings.callback_private_hosts)))
        except ApiError as e:
            err = e.body()["error"]
            errors.append({"code": err["code"], "message": f"line {n}: {err['message']}", "param": err["param"], "line": n})
    return good, errors


def line_error(e: ContractError) -> BadRequest:
    """A line `job_json` could not read: not UTF-8 or not JSON (the line's fault), or a NaN or a
    65-bit integer (its field's)."""
    if e.field != "(line)":
        return from_contract(e)
    msg = e.problems[0][1] if e.problems else str(e)
    code = "invalid_encoding" if msg.startswith("not UTF-8") else "invalid_json"
    return BadRequest(f"{msg}; one request object per line", param=None, code=code)


async def create(request: Request) -> Response:
    caller = await admit(request)
    g = gw(request)
    req = check_request(await json_body(request))
    files = files_of(request)
    content = await files.content(req["input_file_id"], caller.tenant, param="input_file_id")
    batch_id = f"batch_{secrets.token_hex(12)}"
    good, errors = parse_lines(g, content, caller, req["endpoint"])
    if errors or not good:
        obj = batch_object(batch_id, req, "failed", 0)
        errors = errors or [{"code": "empty_file", "message": "the file has no requests", "param": None, "line": None}]
        obj["errors"] = {"object": "list", "data": errors[:MAX_LINE_ERRORS]}
        await save(g, batch_id, caller.tenant, obj, [])
        return json_response(obj)
    caller.check_budget()
    report = await g.blocking(g.submitter.submit_many, [(n, d) for n, _, _, d in good], caller)
    if report.errors:  # a line refused at queueing (unknown task class, budget): nothing else is lost
        obj = batch_object(batch_id, req, "failed", 0)
        obj["errors"] = {"object": "list", "data": [{"code": e["code"], "message": f"line {e['line']}: {e['message']}",
                                                     "param": e["param"], "line": e["line"]} for e in report.errors]}  # fmt: skip
    else:
        obj = batch_object(batch_id, req, "in_progress", len(good))
    by_line = dict(report.submitted)
    rows = [[cid, by_line[n], model] for n, cid, model, _ in good if n in by_line]
    await save(g, batch_id, caller.tenant, obj, rows)
    return json_response(obj)


async def save(g: Gateway, batch_id: str, tenant: str, obj: dict[str, Any], rows: list[list[str]]) -> None:
    key = batch_key(batch_id)
    pipe = g.redis.pipeline(transaction=True)
    pipe.hset(key, mapping={"tenant": tenant, "object": orjson.dumps(obj)})
    if rows:
        pipe.rpush(key + ":lines", *[orjson.dumps(r) for r in rows])
        pipe.expire(key + ":lines", g.settings.file_ttl_s)
    pipe.expire(key, g.settings.file_ttl_s)
    pipe.zadd(tenant_batches(tenant), {batch_id: obj["created_at"]})
    pipe.expire(tenant_batches(tenant), g.settings.file_ttl_s)
    await pipe.execute()


async def load(g: Gateway, batch_id: str, tenant: str) -> dict[str, Any]:
    row = await g.redis.hmget(batch_key(batch_id), ["tenant", "object"]) if len(batch_id) <= 256 else [None, None]
    if row[0] is None or row[0].decode() != tenant:
        raise NotFound(f"no batch {batch_id[:80]!r} for this API key", param="batch_id", code="batch_not_found")
    return orjson.loads(row[1])  # type: ignore[no-any-return]


async def refresh(g: Gateway, obj: dict[str, Any], tenant: str, cancel: bool = False) -> dict[str, Any]:
    """Count the batch's done jobs; when all are done (or on cancel) write the output files once."""
    if obj["status"] not in ("in_progress", "finalizing"):
        return obj
    batch_id = obj["id"]
    rows = [orjson.loads(x) for x in await g.redis.lrange(batch_key(batch_id) + ":lines", 0, -1)]
    pipe = g.redis.pipeline(transaction=False)
    for _, job_id, _ in rows:
        pipe.hget(keys.job(job_id), "status")
    states = await pipe.execute()
    done = sum(1 for s in states if s in (b"decided", b"failed"))
    failed = sum(1 for s in states if s == b"failed")
    obj["request_counts"] = {"total": len(rows), "completed": done - failed, "failed": failed}
    if done < len(rows) and not cancel:
        return obj
    if not await g.redis.set(batch_key(batch_id) + ":finalising", 1, nx=True, ex=120):
        obj["status"] = "finalizing" if not cancel else "cancelling"
        return obj
    obj = await finalise(g, obj, tenant, rows, cancelled=done < len(rows))
    await g.redis.hset(batch_key(batch_id), "object", orjson.dumps(obj))
    return obj


async def finalise(g: Gateway, obj: dict[str, Any], tenant: str, rows: list[list[str]], cancelled: bool) -> dict[str, Any]:
    pipe = g.redis.pipeline(transaction=False)
    for _, job_id, _ in rows:
        pipe.hget(keys.job(job_id), "result")
    results = await pipe.execute()
    out: list[bytes] = []
    err: list[bytes] = []
    completed = failed = 0
    for (cid, job_id, model), raw in zip(rows, results, strict=True):
        line: dict[str, Any] = {"id": f"batch_req_{job_id}", "custom_id": cid, "response": None, "error": None}
        result = Result.model_validate_json(raw) if raw else None
        if result is not None and result.status == "decided":
            line["response"] = {"status_code": 200, "request_id": job_id, "body": completion(result, model)}
            out.append(orjson.dumps(line))
            completed += 1
            continue
        if result is None:
            line["error"] = {"code": "batch_cancelled", "message": f"the batch was cancelled before job {job_id} was decided"}
        else:
            line["response"] = {"status_code": 502, "request_id": job_id, "body": {
                "error": {"message": f"job {job_id} failed: {result.error}", "type": "api_error", "param": None,
                          "code": "panel_failed"}, "panel": panel_extension(result)}}  # fmt: skip
        err.append(orjson.dumps(line))
        failed += 1
    files = Files(g.redis, g.settings.file_ttl_s)
    now = int(time.time())
    if out:
        obj["output_file_id"] = (await files.put(tenant, f"{obj['id']}_output.jsonl", "batch_output", b"\n".join(out) + b"\n"))["id"]
    if err:
        obj["error_file_id"] = (await files.put(tenant, f"{obj['id']}_error.jsonl", "batch_output", b"\n".join(err) + b"\n"))["id"]
    obj["request_counts"] = {"total": len(rows), "completed": completed, "failed": failed}
    obj["finalizing_at"] = now
    if cancelled:
        obj.update(status="cancelled", cancelling_at=obj.get("cancelling_at") or now, cancelled_at=now)
    else:
        obj.update(status="completed", completed_at=now)
    return obj


async def retrieve(request: Request) -> Response:
    caller = await admit(request)
    g = gw(request)
    obj = await load(g, request.path_params["batch_id"], caller.tenant)
    return json_response(await refresh(g, obj, caller.tenant))


async def cancel(request: Request) -> Response:
    caller = await admit(request)
    g = gw(request)
    obj = await load(g, request.path_params["batch_id"], caller.tenant)
    return json_response(await refresh(g, obj, caller.tenant, cancel=True))


async def listing(request: Request) -> Response:
    """The tenant's batches, newest first (`limit`, default 20), as they were last refreshed."""
    caller = await admit(request)
    g = gw(request)
    ids = await g.redis.zrevrange(tenant_batches(caller.tenant), 0, limit_param(request) - 1)
    pipe = g.redis.pipeline(transaction=False)
    for batch_id in ids:
        pipe.hget(batch_key(batch_id.decode()), "object")
    data = [orjson.loads(raw) for raw in await pipe.execute() if raw]
    return json_response({"object": "list", "data": data, "has_more": False,
                          "first_id": data[0]["id"] if data else None, "last_id": data[-1]["id"] if data else None})  # fmt: skip


routes = [
    Route("/v1/batches", create, methods=["POST"]),
    Route("/v1/batches", listing, methods=["GET"]),
    Route("/v1/batches/{batch_id}", retrieve, methods=["GET"]),
    Route("/v1/batches/{batch_id}/cancel", cancel, methods=["POST"]),
]
