"""End to end on real parts: producer → control → tier workers → simulator → vote → result."""

from __future__ import annotations

import subprocess
import sys
import uuid

import orjson
import pytest

from producer.client import PanelClient
from producer.fleet import Fleet
from tests.waiting import eventually
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
    # The slow member would answer after a minute, past the wait below: a decision at all means
    # it was not awaited, and the simulator's own log must show its connection dropped (499).
    configure(fleet, {
        "qwen2.5-72b-instruct": {"latency_ms": 200, "answer": "B"},
        "qwen2.5-32b-coder-instruct": {"latency_ms": 200, "answer": "B"},
        "llama3.1-70b": {"latency_ms": 60_000, "answer": "B"},
    })  # fmt: skip
    jid = client.submit({"task_class": "multiple_choice", "lane": "panel", "prompt": f"{uid('q')}: pick one\nA) x\nB) y"})
    res = client.wait(jid, timeout=45)
    assert res.status == "decided" and res.answer == "B"
    r = res.receipt
    assert r is not None and r.decision == "quorum" and r.early_exit and r.calls_saved >= 1
    assert not any(c.role == "arbiter" for c in r.calls)
    # Cancellation proved at the provider: the slow call was cut off in flight, never answered.
    slow_at_sim = eventually(
        lambda: (m := fleet.sim("/_sim/stats")["models"].get("llama3.1-70b", {})).get("by_status", {}).get("499") and m,
        "the simulator logs the slow member's dropped connection as 499",
    )
    assert slow_at_sim["answered"] == 0 and slow_at_sim["in_flight"] == 0
    # Its charge (the prompt it sent) lands after the decision and is re-rendered into the result
    # and the ledger entry alike: one document, whenever the record lands.
    seen: list[object] = []

    def charged() -> object:
        rec = {c.model: c for c in client.wait(jid, 5).receipt.calls}["llama3.1-70b"]  # type: ignore[union-attr]
        seen[:] = [(rec.status, rec.tokens_in, rec.error)]
        return rec.status == "cancelled" and rec.tokens_in > 0 and rec.error is None and rec

    try:
        slow = eventually(charged, "the cancelled member's charge lands in the receipt")
    except AssertionError as e:  # say which part never came: the record, its charge, or its status
        raise AssertionError(f"{e}; its receipt call (status, tokens_in, error) last read: {seen}") from None
    assert slow.tokens_out == 0 and slow.cost_usd == pytest.approx(REG.cost("llama3.1-70b", slow.tokens_in, 0))  # type: ignore[attr-defined]
    # ...charged what was sent, as the provider counts it: the simulator's bill for the dropped request
    assert slow_at_sim["dropped"] == 1 and slow.tokens_in == slow_at_sim["dropped_tokens_in"], (slow, slow_at_sim)  # type: ignore[attr-defined]
    receipt = client.wait(jid, 5).receipt
    assert receipt is not None and [r for r in client.ledger() if r["job_id"] == jid] == [receipt.model_dump(mode="json")]
    assert receipt.total_cost_usd == pytest.approx(sum(c.cost_usd for c in receipt.calls))
    # an arbiter would have been called before the decision, so its count is final already
    assert fleet.sim("/_sim/stats")["models"].get("llama3.1-405b", {}).get("requests", 0) == 0


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


def test_every_provider_attempt_is_in_the_receipt_retries_included(fleet: Fleet, client: PanelClient) -> None:
    configure(fleet, {"qwen2.5-32b-coder-instruct": {"latency_ms": 20, "answer": "APPROVE", "fail_next": 2, "fail_status": 503}})
    jid = client.submit({"task_class": "code_review", "prompt": f"{uid('retry')}:\n-teh\n+the"})
    res = client.wait(jid, 60)
    assert res.status == "decided" and res.receipt is not None
    calls = [(c.member, c.status) for c in res.receipt.calls]
    assert calls == [("1.m0", "failed"), ("1.m0", "failed"), ("1.m0", "answered")], calls
    failed = [c for c in res.receipt.calls if c.status == "failed"]
    assert all("503" in (c.error or "") and c.cost_usd == 0 for c in failed)  # a 5xx is not billed
    sim = fleet.sim("/_sim/stats")["models"]["qwen2.5-32b-coder-instruct"]
    assert sim["requests"] == len(res.receipt.calls) == 3 and sim["answered"] == 1  # call for call
    assert [r for r in client.ledger() if r["job_id"] == jid] == [res.receipt.model_dump(mode="json")]
