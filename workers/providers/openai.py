"""OpenAI-compatible chat completions (OpenAI, Fireworks, OpenRouter, Together, Groq, vLLM, Ollama):
`POST {base_url}/chat/completions` with Bearer auth, parsed into one `Completion`.
A request with `logprobs=True` asks for token log-probabilities; their sum is `Completion.logprob`.

    chat = OpenAIChat("fireworks", "https://api.fireworks.ai/inference/v1", key, client=http)
    completion = await chat.complete(ChatRequest(model="accounts/fireworks/models/...", messages=[...]))
"""

from __future__ import annotations

import math
import re
import time
from typing import Any

import httpx

from workers.providers._http import HTTPClient, error_message, json_object, token_count
from workers.providers.base import ChatRequest, Completion, MalformedResponse
from workers.providers.caching import openai_cached_tokens

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")
_UNIT_S = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}


class OpenAIChat(HTTPClient):
    """One OpenAI-compatible endpoint. Never retries: `retry.call_with_retries` decides."""

    def headers(self) -> dict[str, str]:
        # Local servers (vLLM, Ollama, the simulator) may run keyless: then no Authorization at all.
        return {"authorization": f"Bearer {self._key}"} if self._key else {}

    async def complete(self, request: ChatRequest) -> Completion:
        started = time.perf_counter()
        response = await self.send(
            "POST",
            f"{self.base_url}/chat/completions",
            headers=self.headers(),
            body=request_body(request),
            timeout_s=request.timeout_s,
            reset_hint=reset_hint,
        )
        latency_ms = (time.perf_counter() - started) * 1000
        return parse_completion(self.name, json_object(self.name, response), latency_ms, request.model)


def request_body(request: ChatRequest) -> dict[str, Any]:
    """The chat completions body; also the `body` of a batch file line. `metadata` stays home."""
    body: dict[str, Any] = {
        "model": request.model,
        "messages": request.messages,
        "max_tokens": request.max_tokens,
        "temperature": request.temperature,
    }
    if request.json_mode:
        body["response_format"] = {"type": "json_object"}
    if request.logprobs:
        body["logprobs"] = True
    return body


def parse_completion(provider: str, body: dict[str, Any], latency_ms: float, model: str) -> Completion:
    """A chat completion body as a `Completion`; MalformedResponse when it carries no answer."""
    choices = body.get("choices")
    if not isinstance(choices, list) or not choices:
        # OpenRouter answers some upstream failures with HTTP 200 and an error object
        detail = error_message(body)
        raise MalformedResponse(provider, f"no choices in the response{f': {detail}' if detail else ''}")
    choice = choices[0]
    message = choice.get("message") if isinstance(choice, dict) else None
    text = message.get("content") if isinstance(message, dict) else None
    if not isinstance(text, str):
        raise MalformedResponse(provider, "choices[0].message.content is missing")
    usage = body.get("usage")
    usage = usage if isinstance(usage, dict) else {}  # some gateways omit usage; count it as 0
    return Completion(
        text=text,
        tokens_in=token_count(usage.get("prompt_tokens")),
        tokens_out=token_count(usage.get("completion_tokens")),
        latency_ms=latency_ms,
        model=str(body.get("model") or model),
        provider=provider,
        finish_reason=str(choice.get("finish_reason") or "unknown"),
        logprob=sequence_logprob(choice.get("logprobs")),
        tokens_cached=openai_cached_tokens(usage),
    )


def sequence_logprob(logprobs: Any) -> float | None:
    """The sum of `logprobs.content[].logprob` (the completion's log-probability), or None when the
    server returned none (not asked, or a server without them, such as llmock) or a malformed one."""
    content = logprobs.get("content") if isinstance(logprobs, dict) else None
    if not isinstance(content, list) or not content:
        return None
    values = [t.get("logprob") if isinstance(t, dict) else None for t in content]
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v <= 0 for v in values):
        return None
    return math.fsum(values)  # type: ignore[arg-type]


def reset_hint(headers: httpx.Headers) -> float | None:
    """OpenAI's `x-ratelimit-reset-*` ("1s", "6m0s", "20ms") when a 429 came without Retry-After:
    the window that ran out (remaining 0) decides, requests by default."""
    for kind in ("tokens", "requests"):
        if headers.get(f"x-ratelimit-remaining-{kind}") == "0":
            found = parse_duration(headers.get(f"x-ratelimit-reset-{kind}"))
            if found is not None:
                return found
    return parse_duration(headers.get("x-ratelimit-reset-requests"))


def parse_duration(raw: str | None) -> float | None:
    """Go-style durations as OpenAI writes them ("1h2m3.5s", "20ms"), or bare seconds."""
    if not raw:
        return None
    raw = raw.strip()
    try:
        return max(0.0, float(raw))
    except ValueError:
        pass
    parts = _DURATION.findall(raw)
    if not parts or "".join(n + u for n, u in parts) != raw:
        return None
    return sum(float(n) * _UNIT_S[u] for n, u in parts)
