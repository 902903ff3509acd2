"""Batch files and bodies within the providers' limits, every result line shape parsed to its
outcome, and both APIs' statuses normalised; no network."""

from __future__ import annotations

import httpx
import orjson
import pytest

from workers.providers import (
    AnthropicBatches,
    ChatRequest,
    Completion,
    InputRejected,
    MalformedResponse,
    OpenAIBatches,
    ProviderUnavailable,
    RateLimited,
    anthropic_batch,
    build_batch_bodies,
    build_batch_files,
    openai_batch,
)

pytestmark = pytest.mark.anyio


def req(model: str = "m", content: str = "hi") -> ChatRequest:
    return ChatRequest(model=model, messages=[{"role": "user", "content": content}], json_mode=True)


def test_openai_files_hold_one_model_each_and_split_at_the_line_limit() -> None:
    items = [(f"a{i}", req("m1")) for i in range(5)] + [("b0", req("m2")), ("a5", req("m1"))]
    files = build_batch_files(items, max_lines=4)
    assert [(f.model, f.lines) for f in files] == [("m1", 4), ("m1", 2), ("m2", 1)]
    line = orjson.loads(files[0].content.splitlines()[0])
    assert line["custom_id"] == "a0" and line["method"] == "POST" and line["url"] == "/v1/chat/completions"
    assert line["body"]["model"] == "m1" and line["body"]["response_format"] == {"type": "json_object"}
    assert all(f.content.endswith(b"\n") and f.content.count(b"\n") == f.lines for f in files)


def test_openai_files_split_at_the_byte_limit() -> None:
    one = len(build_batch_files([("a0", req())])[0].content)
    files = build_batch_files([(f"a{i}", req()) for i in range(5)], max_bytes=2 * one)
    assert [f.lines for f in files] == [2, 2, 1] and all(len(f.content) <= 2 * one for f in files)


def test_one_request_over_the_byte_limit_or_a_duplicate_id_is_refused_by_name() -> None:
    with pytest.raises(InputRejected, match="'big'"):
        build_batch_files([("big", req(content="x" * 1000))], max_bytes=500)
    with pytest.raises(InputRejected, match="'a' appears twice"):
        build_batch_files([("a", req()), ("a", req())])


def test_anthropic_bodies_split_at_the_request_limit_and_lift_system() -> None:
    system_first = ChatRequest(
        model="c", messages=[{"role": "system", "content": "S"}, {"role": "user", "content": "U"}]
    )
    bodies = build_batch_bodies([("r0", system_first), *[(f"r{i}", req("c")) for i in range(1, 5)]], max_requests=2)
    parsed = [orjson.loads(b) for b in bodies]
    assert [len(p["requests"]) for p in parsed] == [2, 2, 1]
    first = parsed[0]["requests"][0]
    assert first["custom_id"] == "r0" and first["params"]["system"] == "S"
    assert [m["role"] for m in first["params"]["messages"]] == ["user"]


def test_anthropic_bodies_split_at_the_byte_limit() -> None:
    one = len(build_batch_bodies([("r0", req())])[0])
    bodies = build_batch_bodies([(f"r{i}", req()) for i in range(4)], max_bytes=2 * one)
    assert [len(orjson.loads(b)["requests"]) for b in bodies] == [2, 2] and all(len(b) <= 2 * one for b in bodies)


@pytest.mark.parametrize("custom_id", ["panel|member", "", "x" * 65, "a b"])
def test_anthropic_refuses_custom_ids_its_api_would_reject(custom_id: str) -> None:
    with pytest.raises(InputRejected, match="1-64"):
        build_batch_bodies([(custom_id, req())])


OPENAI_OK = {
    "choices": [{"message": {"content": "yes"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 2, "completion_tokens": 1},
    "model": "m",
}


@pytest.mark.parametrize(
    ("line", "outcome"),
    [
        ({"custom_id": "a", "response": {"status_code": 200, "body": OPENAI_OK}, "error": None}, Completion),
        (
            {"custom_id": "a", "response": {"status_code": 400, "body": {"error": {"message": "bad"}}}, "error": None},
            InputRejected,
        ),
        (
            {"custom_id": "a", "response": {"status_code": 429, "body": {"error": {"message": "slow"}}}, "error": None},
            RateLimited,
        ),
        (
            {"custom_id": "a", "response": None, "error": {"code": "batch_expired", "message": "window passed"}},
            ProviderUnavailable,
        ),
        ({"custom_id": "a", "response": None, "error": {"code": "invalid_json", "message": "bad line"}}, InputRejected),
        (
            {"custom_id": "a", "response": {"status_code": 200, "body": {"choices": []}}, "error": None},
            MalformedResponse,
        ),
    ],
)
def test_openai_result_lines_parse_to_their_outcome(line: dict[str, object], outcome: type) -> None:
    result = openai_batch.parse_result_line("openai", orjson.dumps(line), 1500.0)
    assert result is not None and result[0] == "a" and isinstance(result[1], outcome)
    if isinstance(result[1], Completion):
        assert (result[1].text, result[1].tokens_in, result[1].latency_ms) == ("yes", 2, 1500.0)


CLAUDE_OK = {
    "content": [{"type": "text", "text": "yes"}],
    "stop_reason": "end_turn",
    "usage": {"input_tokens": 2, "output_tokens": 1},
}


@pytest.mark.parametrize(
    ("result", "outcome"),
    [
        ({"type": "succeeded", "message": CLAUDE_OK}, Completion),
        (
            {
                "type": "errored",
                "error": {"type": "error", "error": {"type": "invalid_request_error", "message": "bad"}},
            },
            InputRejected,
        ),
        ({"type": "errored", "error": {"type": "overloaded_error", "message": "busy"}}, ProviderUnavailable),
        ({"type": "canceled"}, ProviderUnavailable),
        ({"type": "expired"}, ProviderUnavailable),
        ({"type": "mystery"}, MalformedResponse),
    ],
)
def test_anthropic_result_lines_parse_to_their_outcome(result: dict[str, object], outcome: type) -> None:
    parsed = anthropic_batch.parse_result_line("anthropic", orjson.dumps({"custom_id": "a", "result": result}), 0.0)
    assert parsed is not None and parsed[0] == "a" and isinstance(parsed[1], outcome)


def test_lines_without_a_custom_id_are_dropped() -> None:
    assert openai_batch.parse_result_line("o", b'{"custom_id": null, "error": {"code": "x"}}', 0.0) is None
    assert anthropic_batch.parse_result_line("a", b"not json", 0.0) is None


def batch_server(body: dict[str, object]) -> httpx.MockTransport:
    return httpx.MockTransport(lambda request: httpx.Response(200, json=body))


@pytest.mark.parametrize(
    ("raw", "state"),
    [("validating", "pending"), ("in_progress", "pending"), ("finalizing", "pending"), ("cancelling", "pending"),
     ("completed", "done"), ("failed", "failed"), ("expired", "expired"), ("cancelled", "cancelled")],
)  # fmt: skip
async def test_openai_statuses_normalise(raw: str, state: str) -> None:
    body = {"id": "b1", "status": raw, "created_at": 100, "completed_at": 160, "errors": {"data": [{"message": "why"}]}}
    status = await OpenAIBatches("o", "http://o.test/v1", "k", transport=batch_server(body)).status("b1")
    assert (status.state, status.raw_status, status.message) == (state, raw, "why")
    assert status.finished == (state != "pending") and status.elapsed_ms == 60_000


@pytest.mark.parametrize(
    ("extra", "state"),
    [
        ({"processing_status": "in_progress"}, "pending"),
        ({"processing_status": "canceling", "cancel_initiated_at": "2026-01-01T00:00:00Z"}, "pending"),
        ({"processing_status": "ended", "request_counts": {"succeeded": 1, "errored": 1, "expired": 1}}, "done"),
        ({"processing_status": "ended", "request_counts": {"succeeded": 0, "errored": 0, "expired": 3}}, "expired"),
        ({"processing_status": "ended", "cancel_initiated_at": "2026-01-01T00:00:00Z"}, "cancelled"),
    ],
)
async def test_anthropic_statuses_normalise(extra: dict[str, object], state: str) -> None:
    body = {"id": "mb1", "created_at": "2026-01-01T00:00:00Z", "ended_at": "2026-01-01T00:01:00.5Z", **extra}
    status = await AnthropicBatches("a", "http://a.test", "k", transport=batch_server(body)).status("mb1")
    assert status.state == state and status.raw_status == extra["processing_status"]
    assert status.elapsed_ms == pytest.approx(60_500)


def test_results_url_is_joined_to_the_origin_and_never_followed_elsewhere() -> None:
    client = AnthropicBatches("a", "http://127.0.0.1:8000/anthropic", "k")
    assert (
        client.results_location("/anthropic/v1/messages/batches/x/results")
        == "http://127.0.0.1:8000/anthropic/v1/messages/batches/x/results"
    )
    assert client.results_location("http://127.0.0.1:8000/v1/r") == "http://127.0.0.1:8000/v1/r"
    with pytest.raises(MalformedResponse, match="off the API origin"):
        client.results_location("https://collector.example/steal")
