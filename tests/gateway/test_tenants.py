"""Tenants: one tenant cannot read, wait on, stream, cancel or download another's jobs, batches
or files (404, as for a missing id); a revoked key gets 401 on its next request; a tenant whose
budget is spent gets 402 and nothing is queued; the request rate limit is fleet-wide (429 with
Retry-After, shared by two replicas)."""

from __future__ import annotations

import time

import httpx
import orjson
import redis as redis_lib

from gateway.tenants import Keys, today
from producer import keys
from producer.embedded import stop_process
from producer.fleet import Fleet
from tests.gateway.conftest import GatewayProc, Tenant, start_gateway


def h(gateway: GatewayProc, t: Tenant) -> httpx.Client:
    return httpx.Client(base_url=gateway.url, headers={"Authorization": f"Bearer {t.key}"}, timeout=60)


def test_a_tenant_sees_only_its_own_jobs_batches_and_files(gateway: GatewayProc, make_tenant) -> None:  # type: ignore[no-untyped-def]
    a, b = make_tenant("a"), make_tenant("b")
    with h(gateway, a) as ha, h(gateway, b) as hb:
        job_id = ha.post("/v1/jobs", json={"task_class": "extraction", "prompt": "Invoice 9: total $9."}).json()["id"]
        line = {"custom_id": "x", "method": "POST", "url": "/v1/chat/completions",
                "body": {"model": "panel/multiple_choice", "messages": [{"role": "user", "content": "A) 1 B) 2? one letter"}]}}  # fmt: skip
        f = ha.post("/v1/files", files={"file": ("in.jsonl", orjson.dumps(line))}, data={"purpose": "batch"}).json()
        batch = ha.post("/v1/batches", json={"input_file_id": f["id"], "endpoint": "/v1/chat/completions",
                                             "completion_window": "24h"}).json()  # fmt: skip
        assert batch["status"] == "in_progress", batch
        forbidden = [
            hb.get(f"/v1/jobs/{job_id}"), hb.get(f"/v1/jobs/{job_id}", params={"wait": 1}),
            hb.get(f"/v1/jobs/{job_id}/events"), hb.get(f"/v1/files/{f['id']}"),
            hb.get(f"/v1/files/{f['id']}/content"), hb.delete(f"/v1/files/{f['id']}"),
            hb.get(f"/v1/batches/{batch['id']}"), hb.post(f"/v1/batches/{batch['id']}/cancel"),
            hb.post("/v1/batches", json={"input_file_id": f["id"], "endpoint": "/v1/chat/completions",
                                         "completion_window": "24h"}),
        ]  # fmt: skip
        for r in forbidden:
            assert r.status_code == 404, (r.request.url, r.text)
            assert r.json()["error"]["type"] == "not_found_error" and r.json()["error"]["param"]
        missing = hb.get("/v1/jobs/no-such-job").json()["error"]
        assert missing["type"] == "not_found_error"  # another tenant's id answers as a missing one
        # and A still has all of it: B's cancel did nothing
        assert ha.get(f"/v1/jobs/{job_id}", params={"wait": 30}).json()["status"] == "decided"
        assert ha.get(f"/v1/batches/{batch['id']}").json()["status"] in ("in_progress", "finalizing", "completed")
        assert ha.get(f"/v1/files/{f['id']}/content").content == orjson.dumps(line)


def test_a_revoked_key_gets_401_on_its_next_request(gateway: GatewayProc, tenant: Tenant, gw_redis: redis_lib.Redis) -> None:
    with h(gateway, tenant) as c:
        assert c.get("/v1/models").status_code == 200
        Keys(gw_redis).revoke(tenant.key_id)
        r = c.get("/v1/models")
        assert r.status_code == 401 and "revoked" in r.json()["error"]["message"]
        assert r.json()["error"]["param"] == "authorization"
        assert c.post("/v1/jobs", json={"task_class": "extraction", "prompt": "x"}).status_code == 401
    r = httpx.get(f"{gateway.url}/v1/models", headers={"Authorization": "Bearer pfk_nope_nope"})
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    assert httpx.get(f"{gateway.url}/v1/models").status_code == 401


def job_count(r: redis_lib.Redis) -> int:
    return sum(1 for k in r.scan_iter(match=keys.job("*"), count=1000))


def test_a_tenant_with_its_budget_spent_gets_402_and_nothing_is_queued(gateway: GatewayProc, make_tenant,  # type: ignore[no-untyped-def]
                                                                        gw_redis: redis_lib.Redis) -> None:  # fmt: skip
    t = make_tenant("poor", budget_usd=0.0000001)
    with h(gateway, t) as c:
        first = c.post("/v1/jobs", json={"task_class": "extraction", "prompt": "Invoice 1: total $1."})
        assert first.status_code == 202  # nothing spent yet: admitted
        assert c.get(f"/v1/jobs/{first.json()['id']}", params={"wait": 30}).json()["status"] in ("decided", "failed")
        # the workers charged its calls to the tenant's counter for today
        assert int(gw_redis.get(keys.budget_tenant_day(t.name, today())) or 0) > 0
        before = job_count(gw_redis)
        refused = [
            c.post("/v1/jobs", json={"task_class": "extraction", "prompt": "Invoice 2: total $2."}),
            c.post("/v1/jobs:batch", content=b'{"task_class": "extraction", "prompt": "Invoice 3"}\n',
                   headers={"content-type": "application/jsonl"}),
            c.post("/v1/chat/completions", json={"model": "panel/extraction", "messages": [{"role": "user", "content": "x"}]}),
        ]  # fmt: skip
        for r in refused:
            assert r.status_code in (400, 402), r.text
            err = r.json()["error"]
            assert err["code"] == "budget_exhausted" and "nothing was queued" in err["message"], err
        assert job_count(gw_redis) == before


def test_the_rate_limit_is_shared_by_every_replica(gateway: GatewayProc, gw_fleet: Fleet, make_tenant) -> None:  # type: ignore[no-untyped-def]
    t = make_tenant("busy", rate_per_s=0.2, rate_burst=6.0)
    second = start_gateway(gw_fleet.redis_url, gw_fleet.log_dir)
    try:
        statuses = []
        start = time.monotonic()
        for i in range(12):  # alternate replicas: one bucket of 6 (+ one token per 5 s) for both
            url = gateway.url if i % 2 else second.url
            statuses.append(httpx.get(f"{url}/v1/models", headers={"Authorization": f"Bearer {t.key}"}, timeout=30))
        elapsed = time.monotonic() - start
        ok = sum(1 for r in statuses if r.status_code == 200)
        limited = [r for r in statuses if r.status_code == 429]
        assert 6 <= ok <= 6 + int(elapsed * 0.2) + 1, (ok, elapsed)
        assert limited and all(int(r.headers["Retry-After"]) >= 1 for r in limited)
        assert limited[0].json()["error"]["type"] == "rate_limit_error"
    finally:
        stop_process(second.proc, timeout=10)


def test_listing_files_and_batches_shows_only_the_callers_own(gateway: GatewayProc, make_tenant) -> None:  # type: ignore[no-untyped-def]
    import openai

    a, b = make_tenant("la"), make_tenant("lb")
    ca = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=a.key, max_retries=0)
    cb = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=b.key, max_retries=0)
    line = {"custom_id": "x", "method": "POST", "url": "/v1/chat/completions",
            "body": {"model": "panel/multiple_choice", "messages": [{"role": "user", "content": "A) 1 B) 2? one letter"}]}}  # fmt: skip
    f = ca.files.create(file=("in.jsonl", orjson.dumps(line)), purpose="batch")
    batch = ca.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
    assert [x.id for x in ca.files.list()] == [f.id]
    assert [x.id for x in ca.batches.list()] == [batch.id]
    assert list(cb.files.list()) == [] and list(cb.batches.list()) == []


def test_another_tenants_job_id_is_refused_and_its_callback_left_alone(gateway: GatewayProc, make_tenant,  # type: ignore[no-untyped-def]
                                                                       gw_redis: redis_lib.Redis) -> None:  # fmt: skip
    from gateway.submission import callback_key

    a, b = make_tenant("ida"), make_tenant("idb")
    job_id = f"order-{a.name}"
    with h(gateway, a) as ha, h(gateway, b) as hb:
        ok = ha.post("/v1/jobs", json={"id": job_id, "task_class": "extraction", "prompt": "Invoice 5: total $5.",
                                       "callback_url": "http://127.0.0.1:9/a"})  # fmt: skip
        assert ok.status_code == 202 and ok.json()["id"] == job_id
        taken = hb.post("/v1/jobs", json={"id": job_id, "task_class": "extraction", "prompt": "x",
                                          "callback_url": "http://127.0.0.1:9/b"})  # fmt: skip
        assert taken.status_code == 409 and taken.json()["error"]["param"] == "id"
    assert gw_redis.hget(callback_key(job_id), "url") == b"http://127.0.0.1:9/a"
    assert gw_redis.hget(keys.job(job_id), "tenant") == a.name.encode()
