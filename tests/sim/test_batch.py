"""Both batch APIs run their full lifecycle and return one result line per request, matched by
custom_id, with line errors, expiry and cancellation where the knobs ask for them."""

from __future__ import annotations

import time
from typing import Any

import httpx
import orjson

from sim.process import SimProcess
from tests.sim.conftest import ANTHROPIC_AUTH, OPENAI_AUTH

QUESTION = "Question {i}: which?\nA) x\nB) y\nC) z"


def openai_jsonl(n: int, model: str = "gpt-4o-mini") -> bytes:
    rows = [{"custom_id": f"req-{i}", "method": "POST", "url": "/v1/chat/completions",
             "body": {"model": model, "messages": [{"role": "user", "content": QUESTION.format(i=i)}]}}
            for i in range(n)]  # fmt: skip
    return b"\n".join(orjson.dumps(r) for r in rows) + b"\n"


def upload(http: httpx.Client, sim: SimProcess, content: bytes) -> str:
    r = http.post(f"{sim.openai_base}/files", headers=OPENAI_AUTH, data={"purpose": "batch"},
                  files={"file": ("batch.jsonl", content, "application/jsonl")})  # fmt: skip
    assert r.status_code == 200, r.text
    assert r.json()["object"] == "file" and r.json()["bytes"] == len(content)
    file_id: str = r.json()["id"]
    return file_id


POLLS: list[int] = []  # GETs of a batch made by poll_openai, so tests can check the stats' count


def poll_openai(http: httpx.Client, sim: SimProcess, batch_id: str, terminal: set[str]) -> tuple[list[str], dict[str, Any]]:
    seen: list[str] = []
    while True:
        POLLS.append(1)
        b = http.get(f"{sim.openai_base}/batches/{batch_id}", headers=OPENAI_AUTH).json()
        if not seen or seen[-1] != b["status"]:
            seen.append(b["status"])
        if b["status"] in terminal:
            return seen, b
        time.sleep(0.03)


def read_file(http: httpx.Client, sim: SimProcess, file_id: str | None) -> list[dict[str, Any]]:
    if file_id is None:
        return []
    r = http.get(f"{sim.openai_base}/files/{file_id}/content", headers=OPENAI_AUTH)
    return [orjson.loads(line) for line in r.content.splitlines()]


def test_openai_batch_goes_through_every_status_and_answers_each_line(http: httpx.Client, sim: SimProcess) -> None:
    sim.configure({"models": {"gpt-4o-mini": {"batch_delay_s": 1.0}}})
    POLLS.clear()
    file_id = upload(http, sim, openai_jsonl(20))
    created = http.post(f"{sim.openai_base}/batches", headers=OPENAI_AUTH,
                        json={"input_file_id": file_id, "endpoint": "/v1/chat/completions", "completion_window": "24h"}).json()  # fmt: skip
    assert created["object"] == "batch" and created["status"] == "validating"
    seen, done = poll_openai(http, sim, created["id"], {"completed", "failed", "expired", "cancelled"})
    assert seen == ["validating", "in_progress", "finalizing", "completed"]
    assert done["request_counts"] == {"total": 20, "completed": 20, "failed": 0} and done["error_file_id"] is None
    assert done["completed_at"] >= done["finalizing_at"] >= done["in_progress_at"] >= done["created_at"]
    out = read_file(http, sim, done["output_file_id"])
    assert sorted(line["custom_id"] for line in out) == sorted(f"req-{i}" for i in range(20))
    for line in out:
        assert line["error"] is None and line["response"]["status_code"] == 200
        body = line["response"]["body"]
        assert body["object"] == "chat.completion" and body["choices"][0]["message"]["content"] in ("A", "B", "C")
        assert body["usage"]["prompt_tokens"] > 0
    stats = sim.stats()
    assert stats["totals"]["batch_files"] == 1 and stats["totals"]["batch_creates"] == 1
    assert stats["totals"]["batch_polls"] == len(POLLS) > len(seen)
    assert stats["models"]["gpt-4o-mini"]["batch_lines"] == 20 and stats["models"]["gpt-4o-mini"]["requests"] == 0


def test_openai_batch_answers_match_live_calls(http: httpx.Client, sim: SimProcess) -> None:
    sim.configure({"default": {"batch_delay_s": 0.0}})
    b = http.post(f"{sim.openai_base}/batches", headers=OPENAI_AUTH, json={
        "input_file_id": upload(http, sim, openai_jsonl(5)), "endpoint": "/v1/chat/completions", "completion_window": "24h"}).json()
    out = {line["custom_id"]: line for line in read_file(http, sim, poll_openai(http, sim, b["id"], {"completed"})[1]["output_file_id"])}
    for i in range(5):
        live = http.post(f"{sim.openai_base}/chat/completions", headers=OPENAI_AUTH, json={
            "model": "gpt-4o-mini", "messages": [{"role": "user", "content": QUESTION.format(i=i)}]}).json()
        assert out[f"req-{i}"]["response"]["body"]["choices"][0]["message"]["content"] == live["choices"][0]["message"]["content"]


def test_openai_line_errors_and_expiry_land_in_the_error_file(http: httpx.Client, sim: SimProcess) -> None:
    sim.configure({"models": {"gpt-4o-mini": {"batch_delay_s": 0.2, "batch_line_error_rate": 0.3}}})
    body = {"endpoint": "/v1/chat/completions", "completion_window": "24h"}
    b = http.post(f"{sim.openai_base}/batches", headers=OPENAI_AUTH, json=body | {"input_file_id": upload(http, sim, openai_jsonl(40))}).json()
    _, done = poll_openai(http, sim, b["id"], {"completed"})
    out, err = read_file(http, sim, done["output_file_id"]), read_file(http, sim, done["error_file_id"])
    assert 0 < len(err) < 40 and len(out) + len(err) == 40 and done["request_counts"]["failed"] == len(err)
    assert all(e["response"]["status_code"] == 500 and "error" in e["response"]["body"] for e in err)
    assert {line["custom_id"] for line in out} | {e["custom_id"] for e in err} == {f"req-{i}" for i in range(40)}

    sim.configure({"models": {"gpt-4o-mini": {"batch_line_error_rate": 0.0, "batch_expire": True}}})
    b = http.post(f"{sim.openai_base}/batches", headers=OPENAI_AUTH, json=body | {"input_file_id": upload(http, sim, openai_jsonl(10))}).json()
    _, expired = poll_openai(http, sim, b["id"], {"completed", "expired"})
    assert expired["status"] == "expired" and expired["expired_at"] is not None
    assert len(read_file(http, sim, expired["output_file_id"])) == 5  # partial output
    lost = read_file(http, sim, expired["error_file_id"])
    assert len(lost) == 5 and all(e["error"]["code"] == "batch_expired" and e["response"] is None for e in lost)


def test_openai_invalid_lines_fail_the_batch_with_line_numbers(http: httpx.Client, sim: SimProcess) -> None:
    sim.configure({"default": {"batch_delay_s": 0.2}})
    mixed = openai_jsonl(2) + openai_jsonl(1, model="gpt-4o").replace(b"req-0", b"req-9") + b'{"custom_id": "x", "method": "GET"}\n'
    b = http.post(f"{sim.openai_base}/batches", headers=OPENAI_AUTH, json={
        "input_file_id": upload(http, sim, mixed), "endpoint": "/v1/chat/completions", "completion_window": "24h"}).json()
    seen, failed = poll_openai(http, sim, b["id"], {"failed", "completed"})
    assert seen == ["validating", "failed"]
    assert [(e["line"], e["code"]) for e in failed["errors"]["data"]] == [(3, "mismatched_model"), (4, "invalid_request")]
    not_jsonl = http.post(f"{sim.openai_base}/files", headers=OPENAI_AUTH, data={"purpose": "batch"}, files={"file": ("b.jsonl", b"not json\n")})
    assert not_jsonl.status_code == 400 and "line 1" in not_jsonl.json()["error"]["message"]


def test_openai_cancel_goes_through_cancelling_to_cancelled(http: httpx.Client, sim: SimProcess) -> None:
    sim.configure({"default": {"batch_delay_s": 2.0}})
    b = http.post(f"{sim.openai_base}/batches", headers=OPENAI_AUTH, json={
        "input_file_id": upload(http, sim, openai_jsonl(4)), "endpoint": "/v1/chat/completions", "completion_window": "24h"}).json()
    cancelling = http.post(f"{sim.openai_base}/batches/{b['id']}/cancel", headers=OPENAI_AUTH).json()
    assert cancelling["status"] == "cancelling" and cancelling["cancelling_at"] is not None
    seen, done = poll_openai(http, sim, b["id"], {"cancelled"})
    assert seen[-1] == "cancelled" and done["request_counts"] == {"total": 4, "completed": 0, "failed": 4}
    assert {e["error"]["code"] for e in read_file(http, sim, done["error_file_id"])} == {"batch_cancelled"}
    assert http.post(f"{sim.openai_base}/batches/{b['id']}/cancel", headers=OPENAI_AUTH).status_code == 400


def anthropic_requests(n: int) -> list[dict[str, Any]]:
    return [{"custom_id": f"q-{i}", "params": {"model": "claude-3-5-haiku-20241022", "max_tokens": 16, "system": "Pick one.",
             "messages": [{"role": "user", "content": QUESTION.format(i=i)}]}} for i in range(n)]  # fmt: skip


def poll_anthropic(http: httpx.Client, url: str) -> tuple[list[str], dict[str, Any]]:
    seen: list[str] = []
    while True:
        b = http.get(url, headers=ANTHROPIC_AUTH).json()
        if not seen or seen[-1] != b["processing_status"]:
            seen.append(b["processing_status"])
        if b["processing_status"] == "ended":
            return seen, b
        time.sleep(0.03)


def test_anthropic_batch_ends_with_one_result_per_request_at_an_absolute_url(http: httpx.Client, sim: SimProcess) -> None:
    sim.configure({"models": {"claude-3-5-haiku": {"batch_delay_s": 0.5}}})
    created = http.post(f"{sim.anthropic_base}/v1/messages/batches", headers=ANTHROPIC_AUTH, json={"requests": anthropic_requests(12)}).json()
    assert created["type"] == "message_batch" and created["processing_status"] == "in_progress"
    assert created["request_counts"]["processing"] == 12 and created["results_url"] is None
    seen, done = poll_anthropic(http, f"{sim.anthropic_base}/v1/messages/batches/{created['id']}")
    assert seen == ["in_progress", "ended"] and done["ended_at"] is not None
    assert done["request_counts"] == {"processing": 0, "succeeded": 12, "errored": 0, "canceled": 0, "expired": 0}
    assert done["results_url"].startswith(f"{sim.url}/v1/messages/batches/")
    lines = [orjson.loads(x) for x in http.get(done["results_url"], headers=ANTHROPIC_AUTH).content.splitlines()]
    assert sorted(x["custom_id"] for x in lines) == sorted(f"q-{i}" for i in range(12))
    for x in lines:
        msg = x["result"]["message"]
        assert x["result"]["type"] == "succeeded" and msg["type"] == "message" and msg["content"][0]["text"] in ("A", "B", "C")
        assert msg["usage"]["input_tokens"] > 0
    assert sim.stats()["models"]["claude-3-5-haiku"]["batch_lines"] == 12


def test_anthropic_errored_expired_and_canceled_lines(http: httpx.Client, sim: SimProcess) -> None:
    url = f"{sim.anthropic_base}/v1/messages/batches"
    sim.configure({"default": {"batch_delay_s": 0.1, "batch_line_error_rate": 1.0}})
    b = http.post(url, headers=ANTHROPIC_AUTH, json={"requests": anthropic_requests(3)}).json()
    _, done = poll_anthropic(http, f"{url}/{b['id']}")
    errored = [orjson.loads(x) for x in http.get(done["results_url"], headers=ANTHROPIC_AUTH).content.splitlines()]
    assert [x["result"]["type"] for x in errored] == ["errored"] * 3
    assert errored[0]["result"]["error"]["error"]["type"] == "api_error"

    sim.configure({"default": {"batch_line_error_rate": 0.0, "batch_expire": True}})
    b = http.post(url, headers=ANTHROPIC_AUTH, json={"requests": anthropic_requests(4)}).json()
    _, done = poll_anthropic(http, f"{url}/{b['id']}")
    assert done["request_counts"]["expired"] == 2 and done["request_counts"]["succeeded"] == 2

    sim.configure({"default": {"batch_expire": False, "batch_delay_s": 2.0}})
    b = http.post(url, headers=ANTHROPIC_AUTH, json={"requests": anthropic_requests(4)}).json()
    assert http.post(f"{url}/{b['id']}/cancel", headers=ANTHROPIC_AUTH).json()["processing_status"] == "canceling"
    seen, done = poll_anthropic(http, f"{url}/{b['id']}")
    assert seen == ["canceling", "ended"] and done["request_counts"]["canceled"] == 4 and done["cancel_initiated_at"]


def test_anthropic_batch_refuses_bad_requests_whole(http: httpx.Client, sim: SimProcess) -> None:
    url = f"{sim.anthropic_base}/v1/messages/batches"
    dup = anthropic_requests(2)
    dup[1]["custom_id"] = dup[0]["custom_id"]
    r = http.post(url, headers=ANTHROPIC_AUTH, json={"requests": dup})
    assert r.status_code == 400 and "requests.1.custom_id" in r.json()["error"]["message"]
    no_max = anthropic_requests(1)
    del no_max[0]["params"]["max_tokens"]
    assert http.post(url, headers=ANTHROPIC_AUTH, json={"requests": no_max}).status_code == 400
    assert http.post(url, json={"requests": anthropic_requests(1)}).status_code == 401
    assert sim.stats()["totals"]["batch_creates"] == 0
