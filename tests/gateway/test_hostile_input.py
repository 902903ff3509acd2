"""Hostile requests, generated (hypothesis): wrong types, unknown fields and models, huge bodies,
broken JSON and JSONL, bad UTF-8, non-objects. Every one is a 4xx in OpenAI's error shape whose
`param` names the field at fault; none is a 5xx; no job of the fuzzing tenant exists afterwards.

A few hundred examples by default (suite time); PANEL_GATEWAY_FUZZ=10000 runs the full drill.
"""

from __future__ import annotations

import json
import os
from typing import Any
from urllib.parse import quote

import httpx
import orjson
import pytest
import redis as redis_lib
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from producer import keys
from tests.gateway.conftest import GatewayProc, Tenant

EXAMPLES = int(os.environ.get("PANEL_GATEWAY_FUZZ", "300"))
MAX_BODY = 1024 * 1024  # PANEL_GATEWAY_MAX_BODY_BYTES of the test gateway

junk = st.one_of(st.integers(), st.floats(allow_nan=False), st.booleans(), st.lists(st.integers(), max_size=3),
                 st.dictionaries(st.text(max_size=5), st.integers(), max_size=2))  # fmt: skip
names = st.text(min_size=1, max_size=40)

# (field, a value that is wrong for it): each makes the whole job invalid
BAD_JOB_FIELDS = st.one_of(
    st.tuples(st.just("task_class"), st.one_of(junk, st.just(""), st.text(alphabet=" /\n!@#", min_size=1, max_size=10))),
    st.tuples(st.just("task_class"), names.filter(lambda s: s not in ("extraction",)).map(lambda s: "zz_" + s.encode().hex()[:60])),
    st.tuples(st.just("prompt"), st.one_of(junk, st.just(""))),
    st.tuples(st.just("mode"), st.one_of(junk, names.filter(lambda s: s not in ("realtime", "batch")))),
    st.tuples(st.just("lane"), st.one_of(junk, names.filter(lambda s: s not in ("single", "panel")))),
    st.tuples(st.just("budget_usd"), st.one_of(st.floats(max_value=0), st.text(max_size=5), st.booleans(), st.lists(st.integers()))),
    st.tuples(st.just("deadline"), st.one_of(st.just("2001-01-01T00:00:00Z"), st.text(max_size=8), st.booleans(),
                                             st.integers(max_value=10**9), st.lists(st.integers(), max_size=2))),  # past or not a time
    st.tuples(st.just("id"), st.text(alphabet=" /\n\x00é", min_size=1, max_size=10)),
    st.tuples(st.just("metadata"), st.one_of(st.integers(), st.text(max_size=5), st.lists(st.integers(), min_size=1))),
    st.tuples(st.just("flags"), st.one_of(st.integers(), st.text(min_size=1, max_size=5), st.lists(st.just("bad flag"), min_size=1))),
    st.tuples(st.just("schema_version"), st.one_of(st.integers().filter(lambda i: i != 1), st.text(max_size=3))),
    st.tuples(st.just("messages"), st.one_of(st.just([]), st.lists(junk, min_size=1, max_size=2),
                                             st.just([{"role": "tool", "content": "x"}]))),  # also makes two inputs
    st.tuples(st.just("tenant"), names.map(lambda s: "other-" + s.encode().hex()[:40])),
    st.tuples(names.filter(lambda s: s not in ("task_class", "prompt", "mode", "lane", "budget_usd", "deadline", "id", "metadata",
                                                "flags", "schema_version", "messages", "tenant", "callback_url", "idempotency_key",
                                                "response_schema")), junk),  # an unknown field
    st.tuples(st.just("callback_url"), st.one_of(junk, st.text(max_size=20).map(lambda s: "ftp://" + s))),
)

BAD_CHAT_FIELDS = st.one_of(
    st.tuples(st.just("model"), st.one_of(junk, names.map(lambda s: "nope-" + s.encode().hex()[:40]))),
    st.tuples(st.just("messages"), st.one_of(junk, st.just([]), st.just([{"role": "tool", "content": "x"}]),
                                             st.just([{"role": "user"}]), st.just([{"role": "user", "content": 5}]),
                                             st.just([{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]))),
    st.tuples(st.just("n"), st.integers(min_value=2)),
    st.tuples(st.sampled_from(["tools", "functions", "tool_choice"]), st.just([{"type": "function"}])),
    st.tuples(st.just("stream"), st.one_of(st.integers(), st.text(max_size=3), st.lists(st.booleans()))),
    st.tuples(st.just("temperature"), st.one_of(st.lists(st.integers()), st.text(alphabet="xyz", min_size=1, max_size=3))),
    st.tuples(st.just("response_format"), st.one_of(st.just({"type": "yaml"}), st.just({"type": "json_schema"}), st.integers())),
    st.tuples(st.just("panel"), st.one_of(junk.filter(lambda v: not isinstance(v, dict)), st.just({"lane": "many"}),
                                          st.just({"budget_usd": -1.0}), st.just({"flags": ["bad flag"]}), st.just({"zz": 1}))),
    st.tuples(names.filter(lambda s: s not in ("model", "messages", "n", "tools", "functions", "tool_choice", "stream", "temperature",
                                                "response_format", "panel")).map(lambda s: "x_" + s), junk),
)


def dumps(obj: Any) -> bytes:
    """The stdlib encoder: it writes what orjson refuses to (integers past 64 bits, lone surrogates)."""
    return json.dumps(obj).encode()


def mutate(base: dict[str, Any], change: tuple[str, Any]) -> dict[str, Any]:
    field, value = change
    out = dict(base)
    out[field] = value
    if field == "messages" and "prompt" in out:
        out.pop("prompt")  # the messages are the only input, and they are bad
    return out


JOB = {"task_class": "extraction", "prompt": "Invoice 1: total $1."}
CHAT = {"model": "panel/extraction", "messages": [{"role": "user", "content": "Invoice 1: total $1."}]}
LINE = {"custom_id": "c", "method": "POST", "url": "/v1/chat/completions", "body": CHAT}

raw_bodies = st.one_of(
    st.binary(max_size=64).map(lambda b: b"\xff\xfe" + b),  # not UTF-8
    st.text(max_size=40).map(lambda s: ("{" + s).encode()),  # truncated JSON
    junk.map(dumps).filter(lambda b: not b.startswith(b"{")),  # JSON, not an object
    st.just(b'{"task_class": "extraction", "prompt": "' + b"x" * (MAX_BODY + 10) + b'"}'),  # over the size limit
)

requests = st.one_of(
    BAD_JOB_FIELDS.map(lambda c: ("POST", "/v1/jobs", dumps(mutate(JOB, c)), "application/json")),
    BAD_CHAT_FIELDS.map(lambda c: ("POST", "/v1/chat/completions", dumps(mutate(CHAT, c)), "application/json")),
    raw_bodies.flatmap(lambda b: st.sampled_from([("POST", "/v1/jobs", b, "application/json"),
                                                  ("POST", "/v1/chat/completions", b, "application/json"),
                                                  ("POST", "/v1/batches", b, "application/json")])),  # fmt: skip
    st.lists(st.one_of(BAD_JOB_FIELDS.map(lambda c: dumps(mutate(JOB, c))), raw_bodies.filter(lambda b: len(b) < 1000)),
             min_size=1, max_size=4).map(lambda ls: ("POST", "/v1/jobs:batch", b"\n".join(ls), "application/jsonl")),
    st.tuples(st.sampled_from(["input_file_id", "endpoint", "completion_window", "metadata", "zz"]), junk).map(
        lambda c: ("POST", "/v1/batches", dumps(mutate({"input_file_id": "file-none", "endpoint": "/v1/chat/completions",
                                                                "completion_window": "24h"}, c)), "application/json")),
    st.text(max_size=10).map(lambda s: ("GET", "/v1/jobs/some-job?wait=" + quote(s + "x", safe=""), b"", "")),
    st.just(("POST", "/v1/jobs", b"task_class=x", "application/x-www-form-urlencoded")),
)


@pytest.fixture(scope="module")
def fuzz_tenant(make_tenant_module: Any) -> Tenant:
    return make_tenant_module  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def make_tenant_module(gw_redis: redis_lib.Redis) -> Tenant:
    from gateway.tenants import Keys

    k = Keys(gw_redis).create("fuzz-tenant", rate_per_s=1e6, rate_burst=1e6)
    return Tenant(k.tenant, k.api_key, k.id, k.callback_secret)


def test_every_hostile_request_is_a_4xx_naming_its_field_and_creates_no_job(gateway: GatewayProc, fuzz_tenant: Tenant,
                                                                             gw_redis: redis_lib.Redis) -> None:  # fmt: skip
    client = httpx.Client(base_url=gateway.url, headers={"Authorization": f"Bearer {fuzz_tenant.key}"}, timeout=60)

    @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(requests)
    def hostile(req: tuple[str, str, bytes, str]) -> None:
        method, path, body, ctype = req
        headers = {"content-type": ctype} if ctype else {}
        r = client.request(method, path, content=body, headers=headers)
        assert 400 <= r.status_code < 500, (path, body[:200], r.status_code, r.text[:300])
        err = r.json()["error"]
        assert set(err) == {"message", "type", "param", "code"}, err
        assert isinstance(err["param"], str) and err["param"], (path, body[:200], err)
        assert err["message"]

    try:
        hostile()
    finally:
        client.close()
    owned = [k for k in gw_redis.scan_iter(match=keys.job("*"), count=5000)
             if k.endswith(b"}:job") and gw_redis.hget(k, "tenant") == fuzz_tenant.name.encode()]  # fmt: skip
    assert owned == [], f"{len(owned)} jobs were created by hostile requests"
    assert not gw_redis.exists(keys.idempotency(fuzz_tenant.name, "x"))


def test_a_batch_file_with_a_bad_line_fails_whole_naming_line_and_param(gateway: GatewayProc, tenant: Tenant) -> None:
    lines = [orjson.dumps(LINE | {"custom_id": "ok"}), orjson.dumps(LINE | {"custom_id": "bad", "body": mutate(CHAT, ("n", 3))}),
             b"{broken", orjson.dumps(LINE | {"custom_id": "ok"}),
             orjson.dumps(LINE | {"custom_id": "big"}).replace(b'"body":{', b'"body":{"seed":123456789012345678901,'),
             orjson.dumps(LINE | {"custom_id": "nan"}).replace(b'"body":{', b'"body":{"temperature":NaN,'),
             b"\xff\xfe not utf-8"]  # fmt: skip
    with httpx.Client(base_url=gateway.url, headers={"Authorization": f"Bearer {tenant.key}"}, timeout=60) as c:
        f = c.post("/v1/files", files={"file": ("in.jsonl", b"\n".join(lines))}, data={"purpose": "batch"}).json()
        batch = c.post("/v1/batches", json={"input_file_id": f["id"], "endpoint": "/v1/chat/completions",
                                            "completion_window": "24h"}).json()  # fmt: skip
    assert batch["status"] == "failed" and batch["request_counts"]["total"] == 0
    errors = {e["line"]: e for e in batch["errors"]["data"]}
    assert errors[2]["param"] == "body.n"
    assert errors[3]["code"] == "invalid_json"
    assert errors[4]["param"] == "custom_id" and "repeats" in errors[4]["message"]
    # read as the producer reads a line: exact integers or a refusal naming the field, never a float
    assert errors[5]["param"] == "body.seed" and "64 bits" in errors[5]["message"], errors[5]
    assert errors[6]["param"] == "body.temperature", errors[6]
    assert errors[7]["code"] == "invalid_encoding", errors[7]
