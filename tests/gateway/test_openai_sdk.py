"""The official `openai` Python SDK, pointed at the gateway by base URL, as a user's service
would: chat completion, streaming, and files + batches end to end (200 lines) whose output file
matches OpenAI's batch output format, each completion parsed by the SDK's own model."""

from __future__ import annotations

import time
from typing import Any

import httpx
import openai
import orjson
import pytest
import redis as redis_lib
from openai.types.chat import ChatCompletion

from producer import keys
from producer.contract import Job
from tests.gateway.conftest import GatewayProc, Tenant

QUESTION = "Which planet is largest?\nA) Mars\nB) Jupiter\nC) Venus\nD) Mercury\nAnswer with one letter."


def sdk(gateway: GatewayProc, t: Tenant) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=t.key, max_retries=0, timeout=120)


def job_result(gateway: GatewayProc, t: Tenant, job_id: str) -> dict[str, Any]:
    r = httpx.get(f"{gateway.url}/v1/jobs/{job_id}", params={"wait": 30},
                  headers={"Authorization": f"Bearer {t.key}"}, timeout=60)  # fmt: skip
    return r.json()["result"]  # type: ignore[no-any-return]


def test_chat_completion_on_a_panel_policy_carries_the_decided_answer_and_receipt(gateway: GatewayProc, tenant: Tenant) -> None:
    client = sdk(gateway, tenant)
    raw = client.chat.completions.with_raw_response.create(
        model="panel/multiple_choice", messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": QUESTION}],
        extra_body={"panel": {"lane": "panel"}})  # the class defaults to a cascade; this test is about the panel
    completion = raw.parse()
    assert isinstance(completion, ChatCompletion)
    job_id = raw.headers["x-panel-job-id"]
    assert f"job={job_id}" in raw.headers["x-panel-receipt"]
    result = job_result(gateway, tenant, job_id)
    assert completion.choices[0].message.content == result["answer"]
    assert completion.choices[0].finish_reason == "stop"
    ext = completion.model_extra["panel"]  # type: ignore[index]
    assert ext["receipt"]["job_id"] == job_id and ext["receipt"]["lanes"][0]["lane"] == "panel"
    # usage sums the calls of the receipt it came with (a member answering after the decision is
    # added to the job's receipt later: GET /v1/jobs/{id} may then show one call more)
    calls = ext["receipt"]["calls"]
    assert completion.usage is not None
    assert completion.usage.prompt_tokens == sum(c["tokens_in"] for c in calls) > 0
    assert completion.usage.completion_tokens == sum(c["tokens_out"] for c in calls)
    later = {c["member"] for c in result["receipt"]["calls"] if c["status"] in ("answered", "late")}
    assert {c["member"] for c in calls if c["status"] == "answered"} <= later


def test_a_cascade_class_runs_its_stages_by_default_and_on_request(gateway: GatewayProc, tenant: Tenant) -> None:
    client = sdk(gateway, tenant)
    default = client.chat.completions.create(model="panel/multiple_choice", messages=[{"role": "user", "content": QUESTION}])
    first = default.model_extra["panel"]["receipt"]["lanes"][0]  # type: ignore[index]
    assert (first["stage"], first["check"], first["threshold"]) == (1, "logprob", -1e-06)  # policies/tasks.yaml
    asked = client.chat.completions.create(model="panel/math_word_problem", extra_body={"panel": {"lane": "cascade"}},
                                           messages=[{"role": "user", "content": "6 boxes of 7 eggs: how many eggs?"}])  # fmt: skip
    lanes = asked.model_extra["panel"]["receipt"]["lanes"]  # type: ignore[index]
    assert (lanes[0]["lane"], lanes[0]["stage"], lanes[0]["check"]) == ("panel", 1, "agreement")
    with pytest.raises(openai.BadRequestError) as e:  # a registry model runs alone: no cascade to ask for
        client.chat.completions.create(model="qwen2.5-72b-instruct", extra_body={"panel": {"lane": "cascade"}},
                                       messages=[{"role": "user", "content": QUESTION}])  # fmt: skip
    assert "panel.lane" in str(e.value) and "panel or cascade" in str(e.value)


def test_a_registry_model_runs_a_single_lane(gateway: GatewayProc, tenant: Tenant) -> None:
    completion = sdk(gateway, tenant).chat.completions.create(
        model="qwen2.5-72b-instruct", messages=[{"role": "user", "content": QUESTION}])
    receipt = completion.model_extra["panel"]["receipt"]  # type: ignore[index]
    assert [step["lane"] for step in receipt["lanes"]] == ["single"]
    assert [c["model"] for c in receipt["calls"]] == ["qwen2.5-72b-instruct"]


def test_streaming_sends_the_decided_answer_as_chunks_then_usage(gateway: GatewayProc, tenant: Tenant) -> None:
    stream = sdk(gateway, tenant).chat.completions.create(
        model="panel/multiple_choice", messages=[{"role": "user", "content": QUESTION}], stream=True,
        stream_options={"include_usage": True})  # fmt: skip
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    job_id = chunks[0].id.removeprefix("chatcmpl-")
    result = job_result(gateway, tenant, job_id)
    assert text == result["answer"]
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    receipt = next(c for c in chunks if c.choices and c.choices[0].finish_reason).model_extra["panel"]["receipt"]  # type: ignore[index]
    assert receipt["job_id"] == job_id
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.total_tokens == sum(c["tokens_in"] + c["tokens_out"] for c in receipt["calls"]) > 0


def test_an_unknown_model_is_a_404_naming_model(gateway: GatewayProc, tenant: Tenant) -> None:
    with pytest.raises(openai.NotFoundError) as e:
        sdk(gateway, tenant).chat.completions.create(model="gpt-9", messages=[{"role": "user", "content": "hi"}])
    assert e.value.body["param"] == "model" and "panel/" in e.value.body["message"]  # type: ignore[index]


# OpenAI's batch output line (platform docs, "Batch API" output format)
OUTPUT_KEYS = {"id", "custom_id", "response", "error"}
RESPONSE_KEYS = {"status_code", "request_id", "body"}


def batch_line(n: int) -> dict[str, Any]:
    model = ["panel/multiple_choice", "panel/math_word_problem", "llama3.1-70b"][n % 3]
    if "math" in model:
        content = f"A box holds {n} apples and {n + 3} pears. How many fruits? Answer with one number."
    else:
        content = QUESTION.replace("largest", f"largest (case {n})")
    return {"custom_id": f"req-{n}", "method": "POST", "url": "/v1/chat/completions",
            "body": {"model": model, "messages": [{"role": "user", "content": content}], "max_tokens": 50}}  # fmt: skip


def test_files_and_batches_run_200_lines_as_panels_and_answer_in_openais_format(gateway: GatewayProc, tenant: Tenant,
                                                                               gw_redis: redis_lib.Redis) -> None:  # fmt: skip
    client = sdk(gateway, tenant)
    content = b"\n".join(orjson.dumps(batch_line(n)) for n in range(200)) + b"\n"
    f = client.files.create(file=("requests.jsonl", content), purpose="batch")
    assert f.bytes == len(content) and f.purpose == "batch"
    batch = client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h",
                                  metadata={"run": "sdk-test"})  # fmt: skip
    assert batch.status == "in_progress", batch
    end = time.monotonic() + 180
    while batch.status not in ("completed", "failed", "cancelled") and time.monotonic() < end:
        time.sleep(1)
        batch = client.batches.retrieve(batch.id)
    assert batch.status == "completed", batch
    assert batch.request_counts is not None and batch.request_counts.total == 200
    assert batch.output_file_id
    out = client.files.content(batch.output_file_id).content
    lines = [orjson.loads(x) for x in out.splitlines()]
    errors = [orjson.loads(x) for x in client.files.content(batch.error_file_id).content.splitlines()] if batch.error_file_id else []
    assert len(lines) + len(errors) == 200 and batch.request_counts.completed == len(lines)
    assert len(lines) >= 190, errors[:3]  # the simulator's default models answer; a rare failed job is an error line
    assert {x["custom_id"] for x in lines + errors} == {f"req-{n}" for n in range(200)}
    for line in lines:
        assert set(line) == OUTPUT_KEYS and line["error"] is None
        assert set(line["response"]) == RESPONSE_KEYS and line["response"]["status_code"] == 200
        completion = ChatCompletion.model_validate(line["response"]["body"])
        receipt = completion.model_extra["panel"]["receipt"]  # type: ignore[index]
        assert completion.choices[0].message.content == receipt["final_answer"]
        assert all(c["batch"] for c in receipt["calls"] if c["status"] == "answered"), receipt["calls"]
        assert [s["lane"] for s in receipt["lanes"]][0] == "batch"
    # each line's job is due at the batch's 24 h window, not its class's deadline_s after submission
    spec = Job.model_validate_json(gw_redis.hget(keys.job(lines[0]["response"]["request_id"]), "spec") or b"")
    assert spec.deadline is not None and abs(spec.deadline.timestamp() - batch.expires_at) < 60


def test_the_panel_extension_carries_flags_that_trigger_a_panel(gateway: GatewayProc, tenant: Tenant) -> None:
    completion = sdk(gateway, tenant).chat.completions.create(
        model="panel/code_review", messages=[{"role": "user", "content": "Review: def f(x): return x + 1"}],
        extra_body={"panel": {"flags": ["security"]}})  # fmt: skip
    receipt = completion.model_extra["panel"]["receipt"]  # type: ignore[index]
    assert receipt["triggers"] == ["input:flag:security"]
    assert receipt["lanes"][0]["lane"] == "panel"


def test_a_cancelled_batch_accounts_for_every_line_once(gateway: GatewayProc, tenant: Tenant) -> None:
    client = sdk(gateway, tenant)
    content = b"\n".join(orjson.dumps(batch_line(n)) for n in range(20))
    f = client.files.create(file=("c.jsonl", content), purpose="batch")
    batch = client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
    batch = client.batches.cancel(batch.id)
    assert batch.status == "cancelled" and batch.cancelled_at
    out = client.files.content(batch.output_file_id).content.splitlines() if batch.output_file_id else []
    err = client.files.content(batch.error_file_id).content.splitlines() if batch.error_file_id else []
    ids = [orjson.loads(x)["custom_id"] for x in out + err]
    assert sorted(ids) == sorted(f"req-{n}" for n in range(20))
    assert batch.request_counts is not None and batch.request_counts.completed == len(out)
    assert all(orjson.loads(x)["error"]["code"] == "batch_cancelled" for x in err if orjson.loads(x)["response"] is None)
    assert client.batches.retrieve(batch.id).status == "cancelled"
