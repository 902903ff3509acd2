"""The OpenAPI 3.1 document served at /openapi.json, built from the pydantic models the routes
validate with (the contract's Job and Result, the chat request), so it cannot drift from them."""

from __future__ import annotations

from functools import cache
from typing import Any

from pydantic import BaseModel

from gateway.openai_shapes import ChatRequest
from producer.contract import Job, Result

ERROR = {"type": "object", "required": ["error"], "properties": {"error": {
    "type": "object", "required": ["message", "type", "param", "code"],
    "properties": {"message": {"type": "string"}, "type": {"type": "string"},
                   "param": {"type": ["string", "null"], "description": "the field at fault"},
                   "code": {"type": ["string", "null"]}}}}}  # fmt: skip
OBJ = {"type": "object"}


def _schemas() -> dict[str, Any]:
    out: dict[str, Any] = {"Error": ERROR}
    for model in (Job, Result, ChatRequest):
        schema = _model(model)
        out.update(schema.pop("$defs", {}))
        out[model.__name__] = schema
    job = out["Job"]
    job["properties"]["callback_url"] = {"type": "string", "format": "uri",
                                         "description": "gateway extension: POSTed, signed, once the job is decided"}  # fmt: skip
    return out


def _model(model: type[BaseModel]) -> dict[str, Any]:
    return model.model_json_schema(ref_template="#/components/schemas/{model}")


def _op(summary: str, body: dict[str, Any] | None = None, ok: dict[str, Any] | None = None,
        params: list[dict[str, Any]] | None = None, ctype: str = "application/json") -> dict[str, Any]:  # fmt: skip
    op: dict[str, Any] = {"summary": summary, "security": [{"bearer": []}], "responses": {
        "200": {"description": "OK", "content": {"application/json": {"schema": ok or OBJ}}},
        "default": {"description": "an error in OpenAI's shape", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}},
    }}  # fmt: skip
    if body is not None:
        op["requestBody"] = {"required": True, "content": {ctype: {"schema": body}}}
    if params:
        op["parameters"] = params
    return op


def _path(name: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}


def ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


@cache
def document() -> dict[str, Any]:
    wait = {"name": "wait", "in": "query", "required": False, "schema": {"type": "number", "minimum": 0},
            "description": "long-poll: wait up to this many seconds for the decision"}  # fmt: skip
    idem = {"name": "Idempotency-Key", "in": "header", "required": False, "schema": {"type": "string"}}
    jsonl = {"type": "string", "description": "JSONL: one Job a line"}
    multipart = {"type": "object", "required": ["purpose", "file"], "properties": {
        "purpose": {"type": "string", "enum": ["batch"]}, "file": {"type": "string", "format": "binary"}}}  # fmt: skip
    batch_req = {"type": "object", "required": ["input_file_id", "endpoint", "completion_window"], "properties": {
        "input_file_id": {"type": "string"}, "endpoint": {"type": "string", "enum": ["/v1/chat/completions"]},
        "completion_window": {"type": "string", "enum": ["24h"]}, "metadata": OBJ}}  # fmt: skip
    return {
        "openapi": "3.1.0",
        "info": {"title": "panel-fleet gateway", "version": "1",
                 "description": "Jobs API, OpenAI-compatible chat completions and Batch API on LLM panels."},
        "components": {"schemas": _schemas(), "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
        "paths": {
            "/v1/jobs": {"post": _op("submit one job", ref("Job"), params=[idem])},
            "/v1/jobs:batch": {"post": _op("submit JSONL jobs; per-line errors", jsonl, ctype="application/jsonl")},
            "/v1/jobs/{job_id}": {"get": _op("a job: status, result, receipt", params=[_path("job_id"), wait])},
            "/v1/jobs/{job_id}/events": {"get": _op("Server-Sent Events of a job", params=[_path("job_id")])},
            "/v1/chat/completions": {"post": _op("OpenAI-compatible chat completion decided by a panel",
                                                 ref("ChatRequest"), params=[idem])},  # fmt: skip
            "/v1/models": {"get": _op("the names `model` may take")},
            "/v1/files": {"post": _op("upload a batch input file", multipart, ctype="multipart/form-data"),
                          "get": _op("the caller's files, newest first")},
            "/v1/files/{file_id}": {"get": _op("a file object", params=[_path("file_id")]),
                                    "delete": _op("delete a file", params=[_path("file_id")])},
            "/v1/files/{file_id}/content": {"get": _op("a file's bytes", params=[_path("file_id")])},
            "/v1/batches": {"post": _op("start a batch of panel jobs", batch_req),
                            "get": _op("the caller's batches, newest first")},
            "/v1/batches/{batch_id}": {"get": _op("a batch's status and files", params=[_path("batch_id")])},
            "/v1/batches/{batch_id}/cancel": {"post": _op("cancel a batch", params=[_path("batch_id")])},
        },
    }
