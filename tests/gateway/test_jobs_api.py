"""The jobs API on a real gateway process and a real fleet: submit, long-poll, idempotency,
JSONL batches with per-line errors, and a job's life as Server-Sent Events."""

from __future__ import annotations

import httpx
import orjson
import redis as redis_lib

from producer import keys
from tests.gateway.conftest import GatewayProc, Tenant


def auth(t: Tenant) -> dict[str, str]:
    return {"Authorization": f"Bearer {t.key}"}


def test_a_job_posted_is_decided_and_read_back_with_its_receipt(gateway: GatewayProc, tenant: Tenant) -> None:
    with httpx.Client(base_url=gateway.url, headers=auth(tenant), timeout=60) as h:
        r = h.post("/v1/jobs", json={"task_class": "extraction", "prompt": "Invoice 42: total $12.50. Extract total."})
        assert r.status_code == 202, r.text
        job_id = r.json()["id"]
        got = h.get(f"/v1/jobs/{job_id}", params={"wait": 30}).json()
        assert got["status"] == "decided", got
        assert got["result"]["receipt"]["tenant"] == tenant.name
        assert got["result"]["answer"]


def test_an_idempotency_key_returns_the_first_job(gateway: GatewayProc, tenant: Tenant) -> None:
    with httpx.Client(base_url=gateway.url, headers=auth(tenant), timeout=60) as h:
        body = {"task_class": "extraction", "prompt": "Invoice 7: total $3. Extract total."}
        a = h.post("/v1/jobs", json=body, headers={"Idempotency-Key": "order-7"}).json()["id"]
        b = h.post("/v1/jobs", json=body, headers={"Idempotency-Key": "order-7"}).json()["id"]
        assert a == b


def test_a_jsonl_batch_runs_good_lines_and_names_each_bad_one(gateway: GatewayProc, tenant: Tenant,
                                                               gw_redis: redis_lib.Redis) -> None:  # fmt: skip
    lines = [
        orjson.dumps({"task_class": "extraction", "prompt": "Invoice 1: total $1."}),
        b'{"task_class": "extraction", "promt": "typo"}',
        b"not json",
        orjson.dumps({"task_class": "no_such_class", "prompt": "x"}),
        orjson.dumps({"task_class": "extraction", "prompt": "Invoice 2: total $2."}),
    ]
    with httpx.Client(base_url=gateway.url, headers=auth(tenant), timeout=60) as h:
        r = h.post("/v1/jobs:batch", content=b"\n".join(lines), headers={"content-type": "application/jsonl"})
        assert r.status_code == 200, r.text
        out = r.json()
        assert [s["line"] for s in out["submitted"]] == [1, 5]
        errors = {e["line"]: e for e in out["errors"]}
        assert errors[2]["param"] == "promt" and "unknown field" in errors[2]["message"]
        assert errors[3]["code"] == "invalid_json"
        assert errors[4]["param"] == "task_class"
        for s in out["submitted"]:
            assert h.get(f"/v1/jobs/{s['id']}", params={"wait": 30}).json()["status"] == "decided"
            assert gw_redis.hget(keys.job(s["id"]), "tenant") == tenant.name.encode()


def test_events_stream_a_jobs_life_from_queued_to_decided(gateway: GatewayProc, tenant: Tenant) -> None:
    with httpx.Client(base_url=gateway.url, headers=auth(tenant), timeout=60) as h:
        job_id = h.post("/v1/jobs", json={"task_class": "code_review", "lane": "panel",
                                          "prompt": "Review: def f(x): return x+1"}).json()["id"]  # fmt: skip
        names: list[str] = []
        data: list[dict] = []
        with h.stream("GET", f"/v1/jobs/{job_id}/events") as s:
            assert s.headers["content-type"].startswith("text/event-stream")
            event = None
            for line in s.iter_lines():
                if line.startswith("event: "):
                    event = line[7:]
                elif line.startswith("data: ") and event:
                    names.append(event)
                    data.append(orjson.loads(line[6:]))
    assert names[0] == "queued" and names[1] == "lane"
    assert "member" in names and "panel_decided" in names
    assert names[-1] == "decided"
    members = [d for n, d in zip(names, data, strict=True) if n == "member"]
    assert all(m["model"] and m["status"] for m in members)
    assert data[-1]["job_id"] == job_id and data[-1]["receipt"]["decision"] in ("quorum", "arbiter", "majority")


def test_openapi_metrics_and_an_access_log_without_prompts(gateway: GatewayProc, tenant: Tenant) -> None:
    canary = f"canary-prompt-{tenant.name}"
    with httpx.Client(base_url=gateway.url, headers=auth(tenant), timeout=60) as h:
        doc = h.get("/openapi.json").json()
        assert doc["openapi"].startswith("3.1") and "/v1/chat/completions" in doc["paths"]
        assert "task_class" in doc["components"]["schemas"]["Job"]["properties"]
        job_id = h.post("/v1/jobs", json={"task_class": "extraction", "prompt": canary}).json()["id"]
        h.get(f"/v1/jobs/{job_id}", params={"wait": 30})
        bad = h.post("/v1/jobs", json={"task_class": "extraction", "prompt": canary, "promt": 1})
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "promt"
        metrics = h.get("/metrics").text
    assert 'panel_gateway_requests_total{method="POST",route="/v1/jobs",status="2xx"}' in metrics
    assert 'panel_gateway_errors_total{route="/v1/jobs",status="4xx"}' in metrics
    assert 'panel_gateway_request_seconds_bucket{le="0.005",route="/v1/jobs/{job_id}"}' in metrics
    log = gateway.log.read_text()
    assert "POST /v1/jobs 202" in log and f"tenant={tenant.name}" in log
    assert canary not in log and job_id not in log  # route templates only: no body, no path ids


def test_a_65_bit_integer_or_a_nan_is_refused_naming_its_field_in_a_body_and_in_a_jsonl_line(
        gateway: GatewayProc, tenant: Tenant) -> None:  # fmt: skip
    # the gateway reads JSON with the producer's reader: orjson alone turns 2**70 into a float
    big = b'{"task_class": "extraction", "prompt": "x", "metadata": {"order": 1180591620717411303424}}'
    nan = b'{"task_class": "extraction", "prompt": "x", "budget_usd": NaN}'
    with httpx.Client(base_url=gateway.url, headers=auth(tenant), timeout=60) as h:
        r = h.post("/v1/jobs", content=big, headers={"content-type": "application/json"})
        assert r.status_code == 400 and r.json()["error"]["param"] == "metadata.order", r.text
        r = h.post("/v1/jobs", content=nan, headers={"content-type": "application/json"})
        assert r.status_code == 400 and r.json()["error"]["param"] == "budget_usd", r.text
        r = h.post("/v1/jobs:batch", content=big + b"\n" + nan, headers={"content-type": "application/jsonl"})
        out = r.json()
        assert out["submitted"] == [] and [(e["line"], e["param"]) for e in out["errors"]] == [
            (1, "metadata.order"), (2, "budget_usd")], out
