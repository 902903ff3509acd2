"""End to end on real parts: producer → control → tier workers → simulator → vote → result."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid

import orjson
import pytest

from producer.client import PanelClient
from producer.fleet import Fleet
from workers.registry import Registry

REG = Registry.load()


def uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def cli(fleet: Fleet, *args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "producer", "--redis-url", fleet.redis_url, *args],
                          input=stdin, capture_output=True, timeout=120)  # fmt: skip


def configure(fleet: Fleet, models: dict[str, dict[str, object]]) -> None:
    fleet.sim("/_sim/config", {"models": models})


def test_single_lane_job_through_the_cli_matches_the_simulator_and_the_registry(fleet: Fleet, client: PanelClient) -> None:
    configure(fleet, {"qwen2.5-32b-coder-instruct": {"latency_ms": 50, "answer": "APPROVE: a plain typo fix."}})
    job_id = uid("typo")
    out = cli(fleet, "submit", "--task-class", "code_review", "--prompt=-teh\n+the", "--idempotency-key", job_id)
    assert out.returncode == 0, out.stderr
    jid = out.stdout.decode().strip()
    res = orjson.loads(cli(fleet, "wait", jid, "--timeout", "60").stdout)
    assert res["status"] == "decided" and res["answer"] == "APPROVE: a plain typo fix."
    receipt = res["receipt"]
    assert [s["lane"] for s in receipt["lanes"]] == ["single"] and receipt["triggers"] == []
    (call,) = receipt["calls"]
    assert call["model"] == "qwen2.5-32b-coder-instruct" and call["status"] == "answered"
    expected = REG.cost(call["model"], call["tokens_in"], call["tokens_out"])
    assert call["tokens_in"] > 0 and call["cost_usd"] == pytest.approx(expected) and receipt["total_cost_usd"] == pytest.approx(expected)
    stats = fleet.sim("/_sim/stats")
    assert stats["models"]["qwen2.5-32b-coder-instruct"]["requests"] == 1


def test_agreeing_panel_exits_at_quorum_and_cancels_the_slow_member(fleet: Fleet, client: PanelClient) -> None:
    configure(fleet, {
        "qwen2.5-72b-instruct": {"latency_ms": 200, "answer": "B"},
        "qwen2.5-32b-coder-instruct": {"latency_ms": 200, "answer": "B"},
        "llama3.1-70b": {"latency_ms": 5000, "answer": "B"},
    })  # fmt: skip
    t0 = time.monotonic()
    jid = client.submit({"task_class": "multiple_choice", "lane": "panel", "prompt": f"{uid('q')}: pick one\nA) x\nB) y"})
    res = client.wait(jid, timeout=30)
    elapsed = time.monotonic() - t0
    assert res.status == "decided" and res.answer == "B"
    r = res.receipt
    assert r is not None and r.decision == "quorum" and r.early_exit and r.calls_saved >= 1
    by_model = {c.model: c for c in r.calls}
    slow = by_model["llama3.1-70b"]
    assert slow.status == "cancelled" and slow.tokens_out == 0  # cancelled mid-flight: at most its prompt is billed
    assert slow.cost_usd == pytest.approx(REG.cost("llama3.1-70b", slow.tokens_in, 0))
    assert not any(c.role == "arbiter" for c in r.calls)
    assert elapsed < 2.0, f"decided after {elapsed:.2f}s: the 5 s member was awaited"
    time.sleep(0.3)
    assert fleet.sim("/_sim/stats")["models"].get("llama3.1-405b", {}).get("requests", 0) == 0  # no arbiter


def test_disagreeing_panel_calls_the_arbiter_exactly_once(fleet: Fleet, client: PanelClient) -> None:
    configure(fleet, {
        "qwen2.5-72b-instruct": {"latency_ms": 50, "answer": "B"},
        "qwen2.5-32b-coder-instruct": {"latency_ms": 50, "answer": "C"},
        "llama3.1-70b": {"latency_ms": 50, "answer": "D"},
    })  # fmt: skip
    jid = client.submit({"task_class": "multiple_choice", "lane": "panel", "prompt": f"{uid('q')}: pick one\nA) w\nB) x\nC) y\nD) z"})
    res = client.wait(jid, timeout=60)
    r = res.receipt
    assert res.status == "decided" and r is not None
    assert r.decision in ("arbiter", "majority") and not r.early_exit
    assert [c.role for c in r.calls].count("arbiter") == 1
    assert r.disagreement, "the result must carry the disagreement"
    assert fleet.sim("/_sim/stats")["models"]["llama3.1-405b"]["requests"] in (1, 2)  # one call, one retry at most


def test_migration_diff_escalates_and_typo_does_not(fleet: Fleet, client: PanelClient) -> None:
    configure(fleet, {m: {"latency_ms": 20, "answer": "REQUEST_CHANGES: add a backup step"}
                      for m in ("qwen2.5-32b-coder-instruct", "llama3.1-70b", "gpt-4o-mini")})  # fmt: skip
    esc = client.submit({"task_class": "code_review", "prompt": "--- a/db/migrations/0042.py\n+op.drop_column('orders', 'x')"})
    plain = client.submit({"task_class": "code_review", "prompt": "--- a/README.md\n-teh\n+the"})
    r_esc, r_plain = client.wait(esc, 30).receipt, client.wait(plain, 30).receipt
    assert r_esc is not None and r_plain is not None
    assert [s.lane for s in r_esc.lanes] == ["panel"] and any("migrations" in t for t in r_esc.triggers)
    assert [s.lane for s in r_plain.lanes] == ["single"] and r_plain.triggers == []


def test_submit_many_reports_each_bad_line_and_runs_the_good_ones(fleet: Fleet, client: PanelClient) -> None:
    good = {"task_class": "code_review", "prompt": "--- a/x\n+y"}
    lines = [
        orjson.dumps(good),
        b'{"task_class": "code_review", "prompt": "x", "mode": "fast"}',
        b'{"task_class": "astrology", "prompt": "x"}',
        b'{"task_class": "code_review"}',
        b'{"task_class": "code_review", "prompt": "' + b"x" * 400_001 + b'"}',
        b"{broken json",
        b'{"task_class": "code_review", "prompt": "\xff\xfe"}',
        orjson.dumps(good | {"prompt": "--- a/y\n+z"}),
    ]
    out = cli(fleet, "submit-many", "-", stdin=b"\n".join(lines) + b"\n")
    assert out.returncode == 2
    err = out.stderr.decode().splitlines()
    rejected = [e for e in err if e.startswith("rejected:")]
    assert [e.split(":")[1].strip() for e in rejected] == ["line 2", "line 3", "line 4", "line 5", "line 6", "line 7"]
    for needle in ("mode", "task_class", "messages", "too large", "not JSON", "UTF-8"):
        assert any(needle in e for e in rejected), needle
    ids = [line.split("\t")[1] for line in out.stdout.decode().splitlines()]
    assert len(ids) == 2
    results = [client.wait(j, 30) for j in ids]
    assert all(r.status == "decided" for r in results), [(r.status, r.error) for r in results]


def test_resubmitted_idempotency_key_returns_the_same_job(fleet: Fleet, client: PanelClient) -> None:
    key = uid("idem")
    job = {"task_class": "code_review", "prompt": "--- a/x\n+y", "idempotency_key": key}
    first, second = client.submit(job), client.submit(job)
    assert first == second
    client.wait(first, 30)
    assert len([r for r in client.ledger() if r["job_id"] == first]) == 1
