"""Both batch APIs end to end against llmock's batch endpoints on loopback: submit, poll until
finished (llmock takes ~3 s), fetch and parse every line, and cancel."""

from __future__ import annotations

import asyncio

import pytest

from tests.providers.conftest import Llmock
from workers.providers import AnthropicBatches, BatchClient, BatchStatus, ChatRequest, Completion, OpenAIBatches

pytestmark = pytest.mark.anyio


def item(custom_id: str, model: str) -> tuple[str, ChatRequest]:
    return custom_id, ChatRequest(
        model=model, messages=[{"role": "user", "content": f"question {custom_id}"}], max_tokens=64
    )


async def finish(client: BatchClient, status: BatchStatus, timeout: float = 15.0) -> BatchStatus:
    async with asyncio.timeout(timeout):
        while not status.finished:
            await asyncio.sleep(0.25)
            status = await client.status(status.id)
    return status


async def test_openai_batch_uploads_runs_and_parses_every_line(llmock: Llmock) -> None:
    client = OpenAIBatches("openai", llmock.openai_base, "sk-test")
    try:
        [created] = await client.submit([item("p1-m1", "gpt-4o-mini"), item("p1-m2", "gpt-4o-mini")])
        assert created.state == "pending" and created.raw_status == "validating"
        done = await finish(client, created)
        results = dict(await client.results(done))
    finally:
        await client.aclose()
    assert done.state == "done" and done.raw_status == "completed" and done.counts["completed"] == 2
    assert set(results) == {"p1-m1", "p1-m2"}
    for outcome in results.values():
        assert (
            isinstance(outcome, Completion) and outcome.text and outcome.tokens_in > 0 and outcome.provider == "openai"
        )
    upload = next(r for r in llmock.requests() if r["path"] == "/v1/files")
    assert upload["method"] == "POST"


async def test_openai_batch_with_two_models_makes_two_files(llmock: Llmock) -> None:
    client = OpenAIBatches("openai", llmock.openai_base, "sk-test")
    try:
        statuses = await client.submit([item("a", "gpt-4o-mini"), item("b", "gpt-4o"), item("c", "gpt-4o-mini")])
        cancelled = [await client.cancel(s.id) for s in statuses]
    finally:
        await client.aclose()
    assert len(statuses) == 2
    assert [s.state for s in cancelled] == ["cancelled", "cancelled"]


async def test_anthropic_batch_runs_and_parses_every_line_from_a_relative_results_url(llmock: Llmock) -> None:
    client = AnthropicBatches("anthropic", llmock.anthropic_base, "sk-ant-test")
    try:
        [created] = await client.submit([item("p1-m1", "claude-sonnet-4-6"), item("p1-m2", "claude-sonnet-4-6")])
        assert created.state == "pending" and created.raw_status == "in_progress"
        assert created.results_url is not None and created.results_url.startswith("/anthropic/")  # llmock's quirk
        done = await finish(client, created)
        results = dict(await client.results(done))
    finally:
        await client.aclose()
    assert done.state == "done" and done.counts["succeeded"] == 2 and done.elapsed_ms > 0
    assert set(results) == {"p1-m1", "p1-m2"}
    for outcome in results.values():
        assert isinstance(outcome, Completion) and outcome.text and outcome.tokens_out > 0


async def test_anthropic_batch_cancel_ends_it_as_cancelled(llmock: Llmock) -> None:
    client = AnthropicBatches("anthropic", llmock.anthropic_base, "sk-ant-test")
    try:
        [created] = await client.submit([item("x1", "claude-sonnet-4-6")])
        cancelled = await client.cancel(created.id)
        results = await client.results(cancelled)
    finally:
        await client.aclose()
    assert cancelled.state == "cancelled" and cancelled.finished and cancelled.counts["canceled"] == 1
    assert results == []
