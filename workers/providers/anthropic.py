"""Anthropic Messages: `POST {base_url}/v1/messages` with `x-api-key`, parsed into one `Completion`;
system turns lifted to `system`, stop reasons in the OpenAI vocabulary.

Anthropic Messages returns no log-probabilities: `ChatRequest.logprobs` is not sent and
`Completion.logprob` stays None (a policy putting a cascade's `logprob` check on an Anthropic
model is refused at load; use agreement or self_reported there).

    claude = AnthropicMessages("anthropic", "https://api.anthropic.com", key, client=http)
    completion = await claude.complete(ChatRequest(model="claude-sonnet-4-6", messages=[...]))
"""

from __future__ import annotations

import time
from typing import Any

from workers.providers._http import HTTPClient, json_object, token_count
from workers.providers.base import ChatRequest, Completion, MalformedResponse
from workers.providers.caching import mark_stable_prefix

API_VERSION = "2023-06-01"
# Messages has no JSON mode (no response_format): the ask goes in the system prompt instead.
JSON_INSTRUCTION = "Reply with a single JSON object and nothing else."
# stop_reason in the OpenAI vocabulary, so `finish_reason == "length"` means truncated everywhere.
_FINISH = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length", "refusal": "content_filter"}


class AnthropicMessages(HTTPClient):
    """One Messages endpoint. Never retries: `retry.call_with_retries` decides. 529 (overloaded)
    maps to ProviderUnavailable like any 5xx."""

    def headers(self) -> dict[str, str]:
        headers = {"anthropic-version": API_VERSION}
        if self._key:
            headers["x-api-key"] = self._key
        return headers

    async def complete(self, request: ChatRequest) -> Completion:
        started = time.perf_counter()
        response = await self.send(
            "POST",
            f"{self.base_url}/v1/messages",
            headers=self.headers(),
            body=mark_stable_prefix(request_body(request)),
            timeout_s=request.timeout_s,
        )
        latency_ms = (time.perf_counter() - started) * 1000
        return parse_message(self.name, json_object(self.name, response), latency_ms, request.model)


def request_body(request: ChatRequest) -> dict[str, Any]:
    """The Messages body; also the `params` of a batch request. System turns are lifted to the
    top-level `system` (the API refuses a "system" role inside `messages`)."""
    system = [m["content"] for m in request.messages if m.get("role") == "system"]
    if request.json_mode:
        system.append(JSON_INSTRUCTION)
    body: dict[str, Any] = {
        "model": request.model,
        "messages": [
            {"role": m["role"], "content": m["content"]} for m in request.messages if m.get("role") != "system"
        ],
        "max_tokens": request.max_tokens,
        "temperature": request.temperature,
    }
    if system:
        body["system"] = "\n\n".join(system)
    return body


def parse_message(provider: str, body: dict[str, Any], latency_ms: float, model: str) -> Completion:
    """A Messages response as a `Completion`; MalformedResponse when it holds no text block."""
    content = body.get("content")
    if not isinstance(content, list):
        raise MalformedResponse(provider, "no content list in the message")
    texts = [
        b["text"] for b in content if isinstance(b, dict) and b.get("type") == "text" and isinstance(b.get("text"), str)
    ]
    if not texts:
        raise MalformedResponse(provider, f"no text block in the message (stop_reason {body.get('stop_reason')!r})")
    usage = body.get("usage")
    usage = usage if isinstance(usage, dict) else {}
    stop = str(body.get("stop_reason") or "unknown")
    # input_tokens counts only what is after the last cache breakpoint; the prompt is all three
    cache_read = token_count(usage.get("cache_read_input_tokens"))
    cache_write = token_count(usage.get("cache_creation_input_tokens"))
    return Completion(
        text="".join(texts),
        tokens_in=token_count(usage.get("input_tokens")) + cache_read + cache_write,
        tokens_cached=cache_read,
        tokens_cache_write=cache_write,
        tokens_out=token_count(usage.get("output_tokens")),
        latency_ms=latency_ms,
        model=str(body.get("model") or model),
        provider=provider,
        finish_reason=_FINISH.get(stop, stop),
    )
