"""Edge cases a real server rarely produces, on `httpx.MockTransport`: truncated and empty
bodies, Retry-After as an HTTP-date, OpenAI's reset headers, transport failures."""

from __future__ import annotations

import email.utils
import time
from collections.abc import Callable

import httpx
import pytest

from workers.providers import (
    AnthropicMessages,
    ChatRequest,
    InputRejected,
    MalformedResponse,
    OpenAIChat,
    ProviderUnavailable,
    RateLimited,
)
from workers.providers._http import parse_retry_after
from workers.providers.openai import parse_duration

pytestmark = pytest.mark.anyio
REQUEST = ChatRequest(model="m", messages=[{"role": "user", "content": "hi"}], timeout_s=5)
OK_BODY = {
    "model": "m",
    "choices": [{"message": {"role": "assistant", "content": "yes"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 3, "completion_tokens": 1},
}
Handler = Callable[[httpx.Request], httpx.Response]


def openai(handler: Handler) -> OpenAIChat:
    return OpenAIChat("p", "http://provider.test/v1", "sk-test", transport=httpx.MockTransport(handler))


def anthropic(handler: Handler) -> AnthropicMessages:
    return AnthropicMessages("a", "http://provider.test", "sk-test", transport=httpx.MockTransport(handler))


def answer(status: int = 200, content: bytes | None = None, **kw: object) -> Handler:
    return lambda request: httpx.Response(status, content=content, **kw)  # type: ignore[arg-type]


def fail_with(exc: type[httpx.TransportError]) -> Handler:
    def handler(request: httpx.Request) -> httpx.Response:
        raise exc("boom", request=request)

    return handler


async def test_a_well_formed_answer_parses() -> None:
    completion = await openai(answer(json=OK_BODY)).complete(REQUEST)
    assert (completion.text, completion.tokens_in, completion.tokens_out, completion.finish_reason) == (
        "yes",
        3,
        1,
        "stop",
    )


@pytest.mark.parametrize(
    ("content", "why"),
    [
        (b'{"choices": [{"message": {"content": "ye', "not JSON"),
        (b"<html>502 Bad Gateway</html>", "not JSON"),
        (b"[]", "not an object"),
        (b'{"choices": []}', "no choices"),
        (b'{"choices": [{"message": {"role": "assistant", "content": null}}]}', "content is missing"),
        (b'{"error": {"message": "upstream timed out"}}', "upstream timed out"),
    ],
)
async def test_a_200_without_an_answer_is_malformed_and_retryable(content: bytes, why: str) -> None:
    with pytest.raises(MalformedResponse, match=why) as caught:
        await openai(answer(content=content)).complete(REQUEST)
    assert caught.value.retryable


async def test_missing_usage_counts_zero_rather_than_failing_a_paid_answer() -> None:
    completion = await openai(answer(json={"choices": OK_BODY["choices"]})).complete(REQUEST)
    assert (completion.tokens_in, completion.tokens_out, completion.model) == (0, 0, "m")


@pytest.mark.parametrize(
    "exc", [httpx.ReadTimeout, httpx.ConnectTimeout, httpx.ConnectError, httpx.RemoteProtocolError, httpx.ReadError]
)
async def test_transport_failures_are_provider_unavailable(exc: type[httpx.TransportError]) -> None:
    with pytest.raises(ProviderUnavailable, match=exc.__name__) as caught:
        await openai(fail_with(exc)).complete(REQUEST)
    assert caught.value.retryable and caught.value.__cause__ is None


async def test_retry_after_as_an_http_date_becomes_seconds() -> None:
    when = email.utils.formatdate(time.time() + 30, usegmt=True)
    with pytest.raises(RateLimited) as caught:
        await openai(answer(429, headers={"Retry-After": when})).complete(REQUEST)
    assert caught.value.retry_after is not None and 28 <= caught.value.retry_after <= 31


def test_retry_after_ms_is_read_before_retry_after() -> None:
    assert parse_retry_after(httpx.Headers({"retry-after": "1", "retry-after-ms": "250"})) == 0.25
    assert parse_retry_after(httpx.Headers({"retry-after": "2.5"})) == 2.5
    past = email.utils.formatdate(time.time() - 60, usegmt=True)
    assert parse_retry_after(httpx.Headers({"retry-after": past})) == 0.0
    assert parse_retry_after(httpx.Headers({"retry-after": "soon"})) is None
    assert parse_retry_after(httpx.Headers({})) is None


async def test_openai_reset_headers_stand_in_for_a_missing_retry_after() -> None:
    headers = {"x-ratelimit-remaining-requests": "5", "x-ratelimit-remaining-tokens": "0",
               "x-ratelimit-reset-requests": "120ms", "x-ratelimit-reset-tokens": "1m30s"}  # fmt: skip
    with pytest.raises(RateLimited) as caught:
        await openai(answer(429, headers=headers)).complete(REQUEST)
    assert caught.value.retry_after == 90.0
    with pytest.raises(RateLimited) as caught:
        await openai(answer(429, headers={"x-ratelimit-reset-requests": "6m0s"})).complete(REQUEST)
    assert caught.value.retry_after == 360.0


@pytest.mark.parametrize(
    ("raw", "seconds"), [("1s", 1.0), ("20ms", 0.02), ("1h2m3.5s", 3723.5), ("7", 7.0), ("1x", None), ("", None)]
)
def test_parse_duration_reads_go_durations(raw: str, seconds: float | None) -> None:
    assert parse_duration(raw) == seconds


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (500, ProviderUnavailable),
        (502, ProviderUnavailable),
        (529, ProviderUnavailable),
        (408, ProviderUnavailable),
        (400, InputRejected),
        (401, InputRejected),
        (404, InputRejected),
        (422, InputRejected),
    ],
)
async def test_statuses_map_to_typed_errors(status: int, error: type[Exception]) -> None:
    body = {"type": "error", "error": {"type": "x", "message": "the provider says why"}}
    with pytest.raises(error, match="the provider says why"):
        await anthropic(answer(status, json=body)).complete(REQUEST)


async def test_anthropic_sends_its_headers_and_joins_text_blocks() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        content = [
            {"type": "text", "text": "a"},
            {"type": "tool_use", "id": "t", "name": "n", "input": {}},
            {"type": "text", "text": "b"},
        ]
        return httpx.Response(
            200,
            json={"content": content, "stop_reason": "max_tokens", "usage": {"input_tokens": 4, "output_tokens": 2}},
        )

    completion = await anthropic(handler).complete(
        ChatRequest(model="c", messages=[{"role": "user", "content": "hi"}], json_mode=True)
    )
    assert (completion.text, completion.finish_reason, completion.tokens_in, completion.tokens_out) == (
        "ab",
        "length",
        4,
        2,
    )
    [request] = seen
    assert request.url == "http://provider.test/v1/messages"
    assert request.headers["x-api-key"] == "sk-test" and request.headers["anthropic-version"] == "2023-06-01"
    assert b"JSON object" in request.content  # Messages has no JSON mode: the ask rides in `system`


async def test_anthropic_without_a_text_block_is_malformed() -> None:
    with pytest.raises(MalformedResponse, match="no text block"):
        await anthropic(answer(json={"content": [], "stop_reason": "end_turn"})).complete(REQUEST)
