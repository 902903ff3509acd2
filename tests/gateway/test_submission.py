"""The gateway's fast submission path writes what `PanelClient.submit` writes (the job hash the
workers read, the `panel.run` message on `control`), on a real redis-server without workers; a
send that fails takes its stored jobs back, so no job is left half-made."""

from __future__ import annotations

import base64

import orjson
import pytest
import redis as redis_lib

from gateway.submission import Submitter, callback_key, draft
from gateway.tenants import Caller
from producer import keys
from producer.client import PanelClient

JOB = {"task_class": "extraction", "prompt": "Invoice 1: total $1."}


def messages(r: redis_lib.Redis) -> list[dict]:
    out = []
    for raw in r.lrange("control", 0, -1):
        m = orjson.loads(raw)
        out.append({"task": m["headers"]["task"], "id": m["headers"]["id"],
                    "args": orjson.loads(base64.b64decode(m["body"]))[0], "ctype": m["content-type"]})  # fmt: skip
    return out


def test_fast_path_writes_what_the_client_writes(redis_url: str, redis_client: redis_lib.Redis) -> None:
    client = PanelClient(redis_url)
    caller = Caller("acme", 0.0, None)
    direct = client.submit(dict(JOB, tenant="acme"))
    via = Submitter(client).submit(draft(JOB, caller), caller)
    a, b = redis_client.hgetall(keys.job(direct)), redis_client.hgetall(keys.job(via))
    assert set(a) == set(b) == {b"spec", b"status", b"submitted_at", b"tenant"}
    assert a[b"status"] == b[b"status"] == b"queued" and a[b"tenant"] == b[b"tenant"]
    spec_a, spec_b = orjson.loads(a[b"spec"]), orjson.loads(b[b"spec"])
    assert spec_a.pop("id") == direct and spec_b.pop("id") == via and spec_a == spec_b
    assert redis_client.ttl(keys.job(via)) > 0
    msgs = {m["id"]: m for m in messages(redis_client)}
    for jid in (direct, via):
        m = msgs[f"run-{jid}"]
        assert m["task"] == "panel.run" and m["args"] == [jid] and m["ctype"] == "application/x-orjson"
    client.close()


def test_a_file_of_jobs_is_one_message_per_job(redis_url: str, redis_client: redis_lib.Redis) -> None:
    client = PanelClient(redis_url)
    caller = Caller("acme", 0.0, None)
    report = Submitter(client).submit_many([(n, draft(JOB, caller)) for n in range(1, 2501)], caller)
    assert [n for n, _ in report.submitted] == list(range(1, 2501)) and not report.errors
    assert sorted(m["args"][0] for m in messages(redis_client)) == sorted(j for _, j in report.submitted)
    client.close()


def test_a_failed_send_leaves_no_job_behind(redis_url: str, redis_client: redis_lib.Redis, monkeypatch: pytest.MonkeyPatch) -> None:
    client = PanelClient(redis_url)
    sub = Submitter(client)
    caller = Caller("acme", 0.0, None)

    def broker_down(ids: list[str]) -> None:
        raise redis_lib.ConnectionError("broker went away")

    monkeypatch.setattr(sub, "_send", broker_down)
    with pytest.raises(redis_lib.ConnectionError):
        sub.submit_many([(1, draft(dict(JOB, callback_url="http://127.0.0.1:9/h"), caller, private_ok=True))], caller)
    assert not list(redis_client.scan_iter(match=keys.job("*")))
    assert not list(redis_client.scan_iter(match=callback_key("*")))
    client.close()


def test_the_budget_the_gateway_reads_is_the_one_the_workers_charge(redis_client: redis_lib.Redis) -> None:
    from gateway.tenants import tenant_spend, today
    from workers.budget import Budget

    (_, tenant_scope) = Budget(redis_client).scopes("job-1", "acme", None)
    assert tenant_scope[0] == tenant_spend("acme", today())


def test_the_gateway_never_imports_workers_and_the_cli_imports_the_gateway_lazily() -> None:
    import subprocess
    import sys

    code = ("import sys, gateway.app, gateway.serve, producer.cli; "
            "bad = sorted(m for m in sys.modules if m == 'workers' or m.startswith('workers.')); "
            "assert not bad, bad")  # fmt: skip
    subprocess.run([sys.executable, "-c", code], check=True)
    code = "import sys, producer.cli; assert 'gateway' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("url", ["http://127.0.0.1/h", "http://localhost:8080/h", "http://169.254.169.254/latest",
                                 "http://10.0.0.5/h", "http://[::1]/h", "https://0.0.0.0/h"])  # fmt: skip
def test_callbacks_to_internal_addresses_are_refused_by_default(url: str) -> None:
    from gateway.errors import BadRequest

    caller = Caller("acme", 0.0, None)
    with pytest.raises(BadRequest) as e:
        draft(dict(JOB, callback_url=url), caller)
    assert e.value.param == "callback_url" and e.value.code == "callback_host_refused"
    assert draft(dict(JOB, callback_url=url), caller, private_ok=True).callback_url == url
    assert draft(dict(JOB, callback_url="https://hooks.example.com/panel"), caller).callback_url
