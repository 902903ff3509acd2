"""`POST /v1/chat/completions`, OpenAI-compatible: `model` names a policy (`panel/code_review`)
or a registry model (one lane). The reply is the decided answer as a chat completion, usage
summed over every call of the job, the receipt in the `panel` extension field and a summary in
the `x-panel-receipt` header; `stream: true` sends the decided answer as chunks once decided.
Also `GET /v1/models`: what `model` may name.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import orjson
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from gateway.context import Gateway, admit, gw, json_body
from gateway.errors import ApiError, JobFailed, Unavailable
from gateway.jobs import idempotency_header, json_response
from gateway.openai_shapes import chunks, completion, parse_chat, receipt_header, to_job
from gateway.submission import draft
from gateway.tenants import Caller
from producer.contract import Result

WAITING_COMMENT_S = 10.0


async def decided(g: Gateway, job_id: str, caller: Caller, timeout: float) -> Result:
    row = await g.jobs.wait(job_id, caller.tenant, timeout)
    if b"result" not in row or row[b"status"] not in (b"decided", b"failed"):
        raise Unavailable(f"job {job_id} not decided after {timeout:g} s; read it later at GET /v1/jobs/{job_id}",
                          code="timeout", headers={"x-panel-job-id": job_id})  # fmt: skip
    result = Result.model_validate_json(row[b"result"])
    if result.status != "decided":
        raise JobFailed(f"job {job_id} failed: {result.error}", code="panel_failed", headers={"x-panel-job-id": job_id})
    return result


async def chat_completions(request: Request) -> Response:
    caller = await admit(request)
    g = gw(request)
    req = parse_chat(await json_body(request))
    d = draft(to_job(req, g.catalogue), caller, idempotency_header(request), private_ok=g.settings.callback_private_hosts)
    # an idempotent submit may wait on the key's first job (producer/client.py): never on the loop
    job_id = await g.blocking(g.submitter.submit, d, caller, short=not d.job.idempotency_key)
    if req.stream:
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        return StreamingResponse(stream(g, job_id, caller, req.model, include_usage), media_type="text/event-stream",
                                 headers={"x-panel-job-id": job_id, "Cache-Control": "no-cache"})  # fmt: skip
    result = await decided(g, job_id, caller, g.settings.chat_timeout_s)
    return json_response(completion(result, req.model), 200,
                         {"x-panel-job-id": job_id, "x-panel-receipt": receipt_header(result)})  # fmt: skip


async def stream(g: Gateway, job_id: str, caller: Caller, model: str, include_usage: bool) -> AsyncIterator[bytes]:
    """Comments (ignored by SSE clients) keep the connection open while the panel decides; an
    error after the stream began is an `error` object, as OpenAI sends one mid-stream."""
    task = asyncio.ensure_future(decided(g, job_id, caller, g.settings.chat_timeout_s))
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=WAITING_COMMENT_S)
            if done:
                break
            yield b": deciding\n\n"
        try:
            result = task.result()
        except ApiError as e:
            yield b"data: " + orjson.dumps(e.body()) + b"\n\n"
            return
        for c in chunks(result, model, include_usage):
            yield b"data: " + orjson.dumps(c) + b"\n\n"
        yield b"data: [DONE]\n\n"
    finally:
        task.cancel()


async def list_models(request: Request) -> Response:
    await admit(request)
    now = int(time.time())
    data = [{"id": name, "object": "model", "created": now, "owned_by": "panel-fleet"} for name in gw(request).catalogue.names()]
    return json_response({"object": "list", "data": data})


routes = [
    Route("/v1/chat/completions", chat_completions, methods=["POST"]),
    Route("/v1/models", list_models, methods=["GET"]),
]
