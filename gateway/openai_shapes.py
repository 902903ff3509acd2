"""OpenAI's chat completion request, checked, and turned into a contract Job; a Result turned
back into a chat completion (or its chunks). Shared by /v1/chat/completions and batch lines.

Sampling parameters (temperature, max_tokens, ...) are accepted and ignored: a panel's members
run as the policy configures them. Tools and n > 1 are refused by name.
"""

from __future__ import annotations

import time
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictStr, ValidationError

from gateway.catalogue import Catalogue
from gateway.errors import BadRequest
from producer.contract import Receipt, Result

UNSUPPORTED = ("tools", "tool_choice", "functions", "function_call", "parallel_tool_calls", "audio", "modalities",
               "prediction", "web_search_options", "logit_bias")  # fmt: skip


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TextPart(_Strict):
    type: Literal["text"]
    text: StrictStr


class ChatMessage(_Strict):
    role: Literal["system", "developer", "user", "assistant"]
    content: StrictStr | list[TextPart]
    name: StrictStr | None = None


class StreamOptions(_Strict):
    include_usage: StrictBool = False
    include_obfuscation: StrictBool | None = None


class PanelOptions(_Strict):
    """Our extension (`extra_body={"panel": {...}}` in the SDKs)."""

    flags: list[StrictStr] = Field(default_factory=list)
    lane: Literal["single", "panel", "cascade"] | None = None
    budget_usd: float | None = None
    deadline: StrictStr | None = None
    callback_url: StrictStr | None = None
    cache: Literal["use", "bypass"] | None = None  # the answer cache of classes that opt in


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="allow")  # unknown names are refused below, by name

    model: StrictStr
    messages: list[ChatMessage] = Field(min_length=1)
    stream: StrictBool = False
    stream_options: StreamOptions | None = None
    n: int | None = Field(default=None, ge=1, le=1)
    response_format: dict[str, Any] | None = None
    metadata: dict[str, StrictStr] | None = None
    user: StrictStr | None = None
    temperature: float | None = None
    top_p: float | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    seed: int | None = None
    stop: StrictStr | list[StrictStr] | None = None
    store: StrictBool | None = None
    service_tier: StrictStr | None = None
    logprobs: StrictBool | None = None
    top_logprobs: int | None = None
    reasoning_effort: StrictStr | None = None
    panel: PanelOptions | None = None


def param_of(loc: tuple[Any, ...], prefix: str = "") -> str:
    """('messages', 0, 'content') -> 'messages[0].content', OpenAI's way of naming a field."""
    out = prefix
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part not in ("str", "list[TextPart]", "constrained-str") and not str(part).startswith(("function-", "list[")):
            out += f".{part}" if out else str(part)
    return out or "body"


def parse_chat(data: Any, prefix: str = "") -> ChatRequest:
    if not isinstance(data, dict):
        raise BadRequest(f"expected a JSON object (a chat completion request), got {type(data).__name__}",
                         param=prefix.rstrip(".") or "body", code="invalid_type")  # fmt: skip
    for name in UNSUPPORTED:
        if data.get(name) is not None:
            raise BadRequest(f"{name}: not supported by panels (a panel decides one text answer)", param=prefix + name,
                             code="unsupported_parameter")  # fmt: skip
    try:
        req = ChatRequest.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        where = param_of(err["loc"], prefix.rstrip("."))
        msg = "field required" if err["type"] == "missing" else err["msg"]
        raise BadRequest(f"{where}: {msg}", param=where, code="invalid_value") from None
    for extra in req.model_extra or {}:
        shown = extra if len(extra) <= 60 and extra.isprintable() else repr(extra[:60])
        raise BadRequest(f"{shown}: unknown parameter; remove it", param=prefix + shown, code="unknown_parameter")
    return req


def response_schema(fmt: dict[str, Any] | None, param: str) -> dict[str, Any] | None:
    if fmt is None or fmt.get("type") == "text":
        return None
    if fmt.get("type") == "json_object":
        return {"type": "object"}
    if fmt.get("type") == "json_schema":
        schema = (fmt.get("json_schema") or {}).get("schema") if isinstance(fmt.get("json_schema"), dict) else None
        if not isinstance(schema, dict):
            raise BadRequest("response_format.json_schema.schema: give a JSON schema object",
                             param=f"{param}.json_schema.schema", code="invalid_value")  # fmt: skip
        return schema
    raise BadRequest("response_format.type: use text, json_object or json_schema", param=f"{param}.type",
                     code="invalid_value")  # fmt: skip


def to_job(req: ChatRequest, catalogue: Catalogue, mode: str = "realtime", prefix: str = "") -> dict[str, Any]:
    """The Job body (before tenant and contract checks) for a chat request."""
    route = catalogue.route(req.model, param=prefix + "model")
    messages = []
    for m in req.messages:
        text = m.content if isinstance(m.content, str) else "".join(p.text for p in m.content)
        messages.append({"role": "system" if m.role == "developer" else m.role, "content": text})
    job: dict[str, Any] = {"task_class": route.task_class, "messages": messages, "mode": mode}
    schema = response_schema(req.response_format, prefix + "response_format")
    if schema is not None:
        job["response_schema"] = schema
    if route.lane:
        job["lane"] = route.lane
    if req.metadata:
        job["metadata"] = dict(req.metadata)
    if req.panel:
        opts = req.panel.model_dump(exclude_none=True)
        if not opts.get("flags"):
            opts.pop("flags", None)
        if route.lane and "lane" in opts and opts["lane"] != route.lane:
            raise BadRequest(f"panel.lane: model {req.model!r} runs alone; name panel/<task_class> for a panel or cascade",
                             param=prefix + "panel.lane", code="invalid_value")  # fmt: skip
        job.update(opts)
    return job


def usage(receipt: Receipt | None) -> dict[str, int]:
    calls = receipt.calls if receipt else []
    p = sum(c.tokens_in for c in calls)
    c = sum(c.tokens_out for c in calls)
    return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}


def panel_extension(result: Result) -> dict[str, Any]:
    return {"job_id": result.job_id, "disagreement": result.disagreement,
            "receipt": result.receipt.model_dump(mode="json") if result.receipt else None}  # fmt: skip


def receipt_header(result: Result) -> str:
    """A one-line summary for the `x-panel-receipt` header (the full receipt is in the body)."""
    r = result.receipt
    if r is None:
        return f"job={result.job_id}; status={result.status}"
    lanes = ">".join(step.lane for step in r.lanes)
    return (f"job={r.job_id}; decision={r.decision}; lanes={lanes}; calls={len(r.calls)}; early_exit={str(r.early_exit).lower()}; "
            f"cost_usd={r.total_cost_usd:.8f}")  # fmt: skip


def completion(result: Result, model: str, created: int | None = None) -> dict[str, Any]:
    return {
        "id": f"chatcmpl-{result.job_id}", "object": "chat.completion", "created": created or int(time.time()),
        "model": model, "system_fingerprint": None, "service_tier": None,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": result.answer, "refusal": None},
                     "finish_reason": "stop", "logprobs": None}],
        "usage": usage(result.receipt), "panel": panel_extension(result),
    }  # fmt: skip


def chunks(result: Result, model: str, include_usage: bool, piece: int = 48) -> list[dict[str, Any]]:
    """The decided answer as chat.completion.chunk objects: role, content in pieces, stop."""
    created = int(time.time())
    base = {"id": f"chatcmpl-{result.job_id}", "object": "chat.completion.chunk", "created": created, "model": model,
            "system_fingerprint": None}  # fmt: skip

    def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> dict[str, Any]:
        return {**base, "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}], **extra}

    text = result.answer or ""
    out = [chunk({"role": "assistant", "content": ""})]
    out += [chunk({"content": text[i:i + piece]}) for i in range(0, len(text), piece)]
    out.append(chunk({}, "stop", panel=panel_extension(result)))
    if include_usage:
        out.append({**base, "choices": [], "usage": usage(result.receipt)})
    return out
