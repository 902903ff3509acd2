"""The realtime clients against llmock, a real HTTP server on loopback: parsing, the typed
errors, and `call_with_retries` judged by llmock's own resilience verdict."""

from __future__ import annotations

import time

import pytest

from tests.providers.conftest import Llmock
from workers.providers import (
    AnthropicMessages,
    ChatRequest,
    InputRejected,
    OpenAIChat,
    ProviderError,
    ProviderUnavailable,
    RateLimited,
    call_with_retries,
)

pytestmark = pytest.mark.anyio
PROMPT = "Is the sky blue? Answer yes or no."


def ask(model: str, **extra: object) -> ChatRequest:
    return ChatRequest(model=model, messages=[{"role": "user", "content": PROMPT}], max_tokens=64, timeout_s=5, **extra)  # type: ignore[arg-type]


def assert_verdict_clean(llmock: Llmock) -> dict[str, object]:
    verdict = llmock.verdict()
    codes = [f["code"] for f in verdict["findings"]]
    assert verdict["passed"], verdict
    assert "retry_after_ignored" not in codes and "retried_non_retryable" not in codes
    return verdict


async def test_openai_chat_parses_text_usage_and_finish_reason(llmock: Llmock) -> None:
    chat = OpenAIChat("openai", llmock.openai_base, "sk-test")
    try:
        completion = await chat.complete(ask("gpt-4o-mini", json_mode=True))
    finally:
        await chat.aclose()
    assert completion.text and completion.provider == "openai" and completion.model == "gpt-4o-mini"
    assert completion.tokens_in > 0 and completion.tokens_out > 0
    assert completion.finish_reason == "stop" and completion.latency_ms > 0
    [sent] = llmock.requests()
    assert sent["path"] == "/v1/chat/completions"
    assert sent["body"]["response_format"] == {"type": "json_object"}
    assert sent["body"]["max_tokens"] == 64 and "metadata" not in sent["body"]


async def test_anthropic_messages_lift_system_and_parse_usage(llmock: Llmock) -> None:
    claude = AnthropicMessages("anthropic", llmock.anthropic_base, "sk-ant-test")
    request = ChatRequest(
        model="claude-sonnet-4-6",
        messages=[{"role": "system", "content": "Be terse."}, {"role": "user", "content": PROMPT}],
        max_tokens=64,
    )
    try:
        completion = await claude.complete(request)
    finally:
        await claude.aclose()
    assert completion.text and completion.provider == "anthropic"
    assert completion.tokens_in > 0 and completion.tokens_out > 0
    assert completion.finish_reason in ("stop", "length")
    [sent] = llmock.requests()
    assert sent["path"] == "/anthropic/v1/messages"
    # the stable prefix (system) goes as one text block marked for Anthropic's prompt cache
    assert sent["body"]["system"] == [{"type": "text", "text": "Be terse.", "cache_control": {"type": "ephemeral"}}]
    assert [m["role"] for m in sent["body"]["messages"]] == ["user"]


async def test_retries_wait_out_429_retry_after_and_llmock_finds_no_early_retry(llmock: Llmock) -> None:
    llmock.script({"type": "fail", "status": 429, "retry_after": 0.4, "times": 2})
    seen: list[tuple[int, str | None]] = []
    chat = OpenAIChat("openai", llmock.openai_base, "sk-test")
    started = time.monotonic()
    try:
        completion = await call_with_retries(
            chat, ask("gpt-4o-mini"), deadline=time.time() + 20,
            on_attempt=lambda n, err: seen.append((n, type(err).__name__ if err else None)),
        )  # fmt: skip
    finally:
        await chat.aclose()
    assert completion.text
    assert seen == [(1, "RateLimited"), (2, "RateLimited"), (3, None)]
    assert time.monotonic() - started >= 0.8
    verdict = assert_verdict_clean(llmock)
    assert verdict["attempts"] == 3 and verdict["faults_injected"] == 2


async def test_a_429_carries_retry_after_from_the_headers(llmock: Llmock) -> None:
    llmock.script({"type": "fail", "status": 429, "retry_after": 1.5, "message": "slow down"})
    chat = OpenAIChat("openai", llmock.openai_base, "sk-test")
    try:
        with pytest.raises(RateLimited) as caught:
            await chat.complete(ask("gpt-4o-mini"))
    finally:
        await chat.aclose()
    assert caught.value.retry_after == pytest.approx(1.5) and caught.value.status == 429
    assert "slow down" in str(caught.value)


async def test_500s_are_retried_until_an_answer(llmock: Llmock) -> None:
    llmock.script({"type": "fail", "status": 500, "times": 2})
    chat = OpenAIChat("openai", llmock.openai_base, "sk-test")
    try:
        completion = await call_with_retries(chat, ask("gpt-4o-mini"), base_delay=0.05)
    finally:
        await chat.aclose()
    assert completion.text
    assert [r["status"] for r in llmock.requests()] == [500, 500, 200]
    assert_verdict_clean(llmock)


async def test_anthropic_529_overloaded_is_retried(llmock: Llmock) -> None:
    llmock.script({"type": "fail", "status": 529, "retry_after": 0.2})
    claude = AnthropicMessages("anthropic", llmock.anthropic_base, "sk-ant-test")
    errors: list[ProviderError | None] = []
    try:
        completion = await call_with_retries(claude, ask("claude-sonnet-4-6"), on_attempt=lambda n, e: errors.append(e))
    finally:
        await claude.aclose()
    assert completion.text
    assert isinstance(errors[0], ProviderUnavailable) and errors[0].status == 529 and errors[1] is None
    assert_verdict_clean(llmock)


async def test_a_400_is_not_retried_and_names_the_provider_message_not_the_prompt(llmock: Llmock) -> None:
    llmock.script({"type": "fail", "status": 400, "message": "max_tokens is too large"})
    chat = OpenAIChat("openai", llmock.openai_base, "sk-test")
    attempts: list[int] = []
    try:
        with pytest.raises(InputRejected) as caught:
            await call_with_retries(chat, ask("gpt-4o-mini"), on_attempt=lambda n, e: attempts.append(n))
    finally:
        await chat.aclose()
    assert attempts == [1] and len(llmock.requests()) == 1
    assert "max_tokens is too large" in str(caught.value) and PROMPT not in str(caught.value)
    assert_verdict_clean(llmock)


async def test_a_response_slower_than_the_timeout_is_provider_unavailable(llmock: Llmock) -> None:
    llmock.script({"type": "delay", "seconds": 2})
    chat = OpenAIChat("openai", llmock.openai_base, "sk-test")
    try:
        with pytest.raises(ProviderUnavailable, match="ReadTimeout"):
            await chat.complete(
                ChatRequest(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], timeout_s=0.3)
            )
    finally:
        await chat.aclose()


async def test_nothing_listening_is_provider_unavailable() -> None:
    from producer.embedded import free_port

    chat = OpenAIChat("openai", f"http://127.0.0.1:{free_port()}/v1", "sk-test")
    try:
        with pytest.raises(ProviderUnavailable, match="ConnectError"):
            await chat.complete(ask("gpt-4o-mini"))
    finally:
        await chat.aclose()
