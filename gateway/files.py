"""OpenAI's Files API, enough for batches: upload (purpose `batch`), retrieve, download, delete.
Files live in Redis beside the jobs (bounded by PANEL_GATEWAY_MAX_FILE_BYTES), owned by a tenant;
another tenant's file id answers 404 like a missing one."""

from __future__ import annotations

import secrets
import time
from typing import Any

import redis.asyncio as aredis
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.context import admit, body, gw
from gateway.errors import BadRequest, NotFound
from gateway.jobs import json_response
from producer import keys

PURPOSES = ("batch",)


def file_key(file_id: str) -> str:
    """Hash: tenant, filename, purpose, bytes, created_at, content."""
    return f"{keys.PREFIX}gw:file:{file_id}"


def tenant_files(tenant: str) -> str:
    """Zset: file id -> created_at, the tenant's files (GET /v1/files)."""
    return f"{keys.PREFIX}gw:files:{tenant}"


def file_object(file_id: str, meta: dict[bytes, bytes]) -> dict[str, Any]:
    return {"id": file_id, "object": "file", "bytes": int(meta[b"bytes"]), "created_at": int(float(meta[b"created_at"])),
            "filename": meta[b"filename"].decode(), "purpose": meta[b"purpose"].decode(), "status": "processed",
            "expires_at": None, "status_details": None}  # fmt: skip


class Files:
    def __init__(self, r: aredis.Redis, ttl_s: int):
        self.r = r
        self.ttl_s = ttl_s

    async def put(self, tenant: str, filename: str, purpose: str, content: bytes) -> dict[str, Any]:
        file_id = f"file-{secrets.token_hex(12)}"
        meta = {"tenant": tenant, "filename": filename, "purpose": purpose, "bytes": len(content),
                "created_at": time.time(), "content": content}  # fmt: skip
        pipe = self.r.pipeline(transaction=True)
        pipe.hset(file_key(file_id), mapping=meta)  # type: ignore[arg-type]
        pipe.expire(file_key(file_id), self.ttl_s)
        pipe.zadd(tenant_files(tenant), {file_id: meta["created_at"]})  # type: ignore[dict-item]
        pipe.expire(tenant_files(tenant), self.ttl_s)
        await pipe.execute()
        return file_object(file_id, {k.encode(): str(v).encode() for k, v in meta.items() if k != "content"})

    async def meta(self, file_id: str, tenant: str, param: str = "file_id") -> dict[bytes, bytes]:
        fields = ["tenant", "filename", "purpose", "bytes", "created_at"]
        vals = await self.r.hmget(file_key(file_id), fields) if len(file_id) <= 256 else [None] * len(fields)
        meta = {f.encode(): v for f, v in zip(fields, vals, strict=True) if v is not None}
        if meta.get(b"tenant", b"").decode() != tenant:
            raise NotFound(f"no file {file_id[:80]!r} for this API key", param=param, code="file_not_found")
        return meta

    async def content(self, file_id: str, tenant: str, param: str = "file_id") -> bytes:
        await self.meta(file_id, tenant, param)
        return await self.r.hget(file_key(file_id), "content") or b""


def files_of(request: Request) -> Files:
    return Files(gw(request).redis, gw(request).settings.file_ttl_s)


async def upload(request: Request) -> Response:
    caller = await admit(request)
    g = gw(request)
    ctype = request.headers.get("content-type", "")
    if not ctype.startswith("multipart/form-data"):
        raise BadRequest("send multipart/form-data with fields `purpose` and `file`", param="content-type",
                         code="unsupported_media_type")  # fmt: skip
    raw = await body(request, g.settings.max_file_bytes + 64 * 1024, param="file")
    sent = False

    async def replay() -> dict[str, Any]:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": raw, "more_body": False}

    try:
        form = await Request(request.scope, replay).form(max_files=1, max_fields=8)
    except Exception as e:  # multipart's parser raises its own types for a broken body
        raise BadRequest(f"body: not a valid multipart form ({type(e).__name__}); send `purpose` and `file`",
                         param="file", code="invalid_multipart") from None  # fmt: skip
    purpose = form.get("purpose")
    upload_ = form.get("file")
    if purpose not in PURPOSES:
        raise BadRequest(f"purpose: give one of {', '.join(PURPOSES)}", param="purpose", code="invalid_value")
    if not isinstance(upload_, UploadFile):
        raise BadRequest("file: missing; attach the JSONL file as the `file` part", param="file", code="missing")
    content = await upload_.read()
    if len(content) > g.settings.max_file_bytes:
        raise BadRequest(f"file: {len(content)} bytes is over the limit of {g.settings.max_file_bytes}; split it",
                         param="file", code="file_too_large")  # fmt: skip
    if not content.strip():
        raise BadRequest("file: empty; give one request per line", param="file", code="empty_file")
    obj = await files_of(request).put(caller.tenant, (upload_.filename or "upload.jsonl")[:255], str(purpose), content)
    return json_response(obj)


async def retrieve(request: Request) -> Response:
    caller = await admit(request)
    file_id = request.path_params["file_id"]
    return json_response(file_object(file_id, await files_of(request).meta(file_id, caller.tenant)))


async def download(request: Request) -> Response:
    caller = await admit(request)
    content = await files_of(request).content(request.path_params["file_id"], caller.tenant)
    return Response(content, media_type="application/jsonl")


async def delete(request: Request) -> Response:
    caller = await admit(request)
    file_id = request.path_params["file_id"]
    await files_of(request).meta(file_id, caller.tenant)
    await gw(request).redis.delete(file_key(file_id))
    await gw(request).redis.zrem(tenant_files(caller.tenant), file_id)
    return json_response({"id": file_id, "object": "file", "deleted": True})


def limit_param(request: Request) -> int:
    raw = request.query_params.get("limit", "20")
    if not raw.isdigit() or not 1 <= int(raw) <= 10_000:
        raise BadRequest("limit: give 1 to 10000", param="limit", code="invalid_value")
    return int(raw)


async def listing(request: Request) -> Response:
    """The tenant's files, newest first (`limit`, default 20); expired ones drop out."""
    caller = await admit(request)
    r = gw(request).redis
    ids = [i.decode() for i in await r.zrevrange(tenant_files(caller.tenant), 0, limit_param(request) - 1)]
    pipe = r.pipeline(transaction=False)
    for file_id in ids:
        pipe.hmget(file_key(file_id), ["tenant", "filename", "purpose", "bytes", "created_at"])
    rows = await pipe.execute()
    names = (b"tenant", b"filename", b"purpose", b"bytes", b"created_at")
    data = [file_object(fid, dict(zip(names, row, strict=True))) for fid, row in zip(ids, rows, strict=True) if row[0]]
    return json_response({"object": "list", "data": data, "has_more": False})


routes = [
    Route("/v1/files", upload, methods=["POST"]),
    Route("/v1/files", listing, methods=["GET"]),
    Route("/v1/files/{file_id}", retrieve, methods=["GET"]),
    Route("/v1/files/{file_id}", delete, methods=["DELETE"]),
    Route("/v1/files/{file_id}/content", download, methods=["GET"]),
]
