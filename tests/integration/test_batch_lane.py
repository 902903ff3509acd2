"""The batch lane end to end on real parts: producer → control → `panel.batch_member` → lines
collected per model → the simulator's OpenAI Files/Batches and Anthropic Message Batches →
poll → the same vote path as real time → result and receipt at the registry's batch price.

One fleet for the module, with fast batch ticks (the lane's timing is env, not code). The last
test kill -9s the worker that runs the poller while batches are in flight and restarts it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis as redis_lib

from producer import keys
from producer.client import PanelClient
from producer.contract import Receipt, Result
from producer.fleet import DEFAULT_WORKERS, Fleet
from producer.ledger_view import summarise
from sim.prompt import Prompt
from sim.rules import rule_answer
from tests.waiting import eventually
from workers.batch import lane
from workers.panel.arbiter import anonymise
from workers.registry import Registry

REG = Registry.load()
MARGIN_S = 8.0  # PANEL_BATCH_REALTIME_MARGIN_S of this fleet
BATCH_ENV = {
    "PANEL_BATCH_TICK_S": "0.2",  # the control worker flushes and polls this often
    "PANEL_BATCH_MAX_AGE_S": "0.3",  # a model's pending lines are sent once the oldest is this old
    "PANEL_BATCH_REALTIME_MARGIN_S": str(MARGIN_S),
    "PANEL_BATCH_LOCK_S": "3",  # a lock left by a killed worker blocks its model this long at most
    "PANEL_VISIBILITY_TIMEOUT_S": "20",  # a control task lost with its worker comes back after this
}
FAST = {"batch_delay_s": 0.4}


@pytest.fixture(scope="module")
def fleet() -> Iterator[Fleet]:
    f = Fleet(env=BATCH_ENV)
    f.start()
    yield f
    f.stop()


@pytest.fixture
def client(fleet: Fleet) -> Iterator[PanelClient]:
    c = PanelClient(fleet.redis_url)
    fleet.sim("/_sim/reset", {})
    fleet.sim("/_sim/config", {"default": FAST})
    yield c
    c.close()


def uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def question(tag: str, options: str = "ABCD") -> str:
    return f"{uid(tag)}: which one?\n" + "\n".join(f"{o}) option {o.lower()}" for o in options)


def configure(fleet: Fleet, models: dict[str, dict[str, object]]) -> None:
    fleet.sim("/_sim/config", {"models": models})


def wait_all(client: PanelClient, ids: list[str], timeout: float = 60.0) -> list[Result]:
    return list(client.wait_many(ids, timeout=timeout))


def calls_by_member(receipt: Receipt) -> dict[str, Any]:
    return {c.member: c for c in receipt.calls}


def assert_batch_priced(call: Any) -> None:
    """A batch call: flagged, at the registry's batch price, with its real-time price beside it."""
    assert call.batch is True, call
    assert call.cost_usd == pytest.approx(REG.cost(call.model, call.tokens_in, call.tokens_out, batch=True))
    assert call.realtime_cost_usd == pytest.approx(REG.cost(call.model, call.tokens_in, call.tokens_out))
    assert call.cost_usd < call.realtime_cost_usd


def test_the_control_worker_flushes_and_polls_in_its_own_turns_with_no_beat(fleet: Fleet) -> None:
    control = fleet.procs[next(w.name for w in DEFAULT_WORKERS if "control" in w.queues.split(","))]
    assert descendants(control.pid) == [], "a process beside the control worker (an embedded beat?)"
    r = redis_lib.Redis.from_url(fleet.redis_url)
    for turn in (keys.BATCH_FLUSH_TURN, keys.BATCH_POLL_TURN):  # taken every PANEL_BATCH_TICK_S, held 0.8 of it
        holder = eventually(lambda t=turn: r.get(t), f"a control worker's turn at {turn}")
        assert holder.decode().endswith(f":{control.pid}"), holder
    r.close()


def test_openai_and_anthropic_members_decide_through_batches_at_the_batch_price(
    fleet: Fleet, client: PanelClient
) -> None:
    configure(fleet, {"gpt-4o-mini": {"answer": "Ship it: fast, quiet, yours."},
                      "claude-3-5-haiku": {"answer": "Ship it: fast, quiet, yours."}})  # fmt: skip
    ids = [client.submit({"task_class": "product_copy", "mode": "batch", "lane": "panel", "prompt": f"{uid('copy')}: a headline"})
           for _ in range(4)]  # fmt: skip
    results = wait_all(client, ids)
    for res in results:
        assert res.status == "decided" and res.answer == "Ship it: fast, quiet, yours.", res
        r = res.receipt
        assert r is not None and [s.lane for s in r.lanes] == ["batch"] and r.decision == "quorum"
        by = calls_by_member(r)
        assert {by["1.m0"].model, by["1.m1"].model} == {"gpt-4o-mini", "claude-3-5-haiku"}
        for m in ("1.m0", "1.m1"):
            assert by[m].status == "answered" and by[m].tokens_in > 0
            assert_batch_priced(by[m])
        assert by["1.m2"].status == "skipped" and by["1.m2"].cost_usd == 0  # staged: never sent
        assert r.total_cost_usd == pytest.approx(by["1.m0"].cost_usd + by["1.m1"].cost_usd)
    stats = fleet.sim("/_sim/stats")
    assert stats["totals"]["requests"] == 0, "a batch job made a real-time call"
    assert (
        stats["models"]["gpt-4o-mini"]["batch_lines"] == 4 and stats["models"]["claude-3-5-haiku"]["batch_lines"] == 4
    )
    assert stats["totals"]["batch_files"] >= 1  # OpenAI: an uploaded JSONL file per batch
    assert stats["totals"]["batch_creates"] <= 4, "4 jobs × 2 models went out as more batches than expected"
    # the ledger shows what the batch calls saved against the same calls in real time
    mine = [r for r in client.ledger() if r["job_id"] in ids]
    row = summarise(mine)[0]
    answered = [c for r in mine for c in r["calls"] if c["batch"] and c["status"] == "answered"]
    expected = sum(c["realtime_cost_usd"] - c["cost_usd"] for c in answered)
    assert len(answered) == 8 and row["batch_saving_usd"] == pytest.approx(expected) and expected > 0
    out = subprocess.run([sys.executable, "-m", "producer", "--redis-url", fleet.redis_url, "ledger"],
                         capture_output=True, timeout=60)  # fmt: skip
    assert out.returncode == 0 and b"batch saved $" in out.stdout, out.stderr


def test_a_job_the_batch_lane_decides_sends_its_decision_event_on_its_run_task(
    fleet: Fleet, client: PanelClient
) -> None:
    """The control worker's poll thread lands the deciding line (no Celery task runs there): an event
    consumer still sees the job's `task-panel-decided`, on its `panel.run` task (workers/metrics.py)."""
    from tests.ops.conftest import DecisionEvents

    configure(fleet, {"gpt-4o-mini": {"answer": "Ship it."}, "claude-3-5-haiku": {"answer": "Ship it."}})
    events = DecisionEvents(fleet.redis_url).start()
    try:
        job = client.submit({"task_class": "product_copy", "mode": "batch", "lane": "panel",
                             "prompt": f"{uid('ev')}: a headline"})  # fmt: skip
        res = client.wait(job, timeout=60)
        assert res.status == "decided" and res.receipt is not None and [s.lane for s in res.receipt.lanes] == ["batch"]
        mine = eventually(lambda: [e for e in events.events if e["job_id"] == job], "the batch job's decision event")
    finally:
        events.stop()
    assert [(e["uuid"], e["decision"], e["lane"]) for e in mine] == [(f"run-{job}", "quorum", "batch")]


def test_disagreement_escalates_one_batch_at_a_time_then_the_arbiter_also_by_batch(
    fleet: Fleet, client: PanelClient
) -> None:
    # stage 1 (m0, m1) disagrees → m2 alone in a later batch → still no quorum → arbiter line
    jid = f"arb-{uuid.uuid4().hex[:8]}"  # the judge sees m1 under the label drawn from the panel id
    m1 = next(label for label, m in anonymise(f"{jid}.1", ["m0", "m1", "m2"]).items() if m == "m1")
    configure(fleet, {"qwen2.5-72b-instruct": {"answer": "B"}, "qwen2.5-32b-coder-instruct": {"answer": "C"},
                      "llama3.1-70b": {"answer": "D"},
                      "llama3.1-405b": {"answer": f'{{"chosen_members": ["{m1}"], '
                                                  '"disagreements": ["B or C or D"], "rationale": "C fits."}'}})  # fmt: skip
    client.submit({"id": jid, "task_class": "multiple_choice", "lane": "panel", "mode": "batch", "prompt": question("arb")})
    res = client.wait(jid, timeout=60)
    assert res.status == "decided" and res.answer == "C"
    r = res.receipt
    assert r is not None and r.decision == "arbiter" and r.verdict is not None and r.verdict.chosen_members == ["m1"]
    by = calls_by_member(r)
    assert [by[f"1.m{i}"].answer_key for i in range(3)] == ["B", "C", "D"]
    for m in ("1.m0", "1.m1", "1.m2", "1.arbiter"):
        assert by[m].status == "answered"
        assert_batch_priced(by[m])
    assert by["1.arbiter"].role == "arbiter" and by["1.arbiter"].model == "llama3.1-405b"
    stats = fleet.sim("/_sim/stats")
    assert stats["totals"]["requests"] == 0, "the arbiter or a member was called in real time"
    # one batch per model of stage 1, then m2's, then the arbiter's: each stage waited for the last
    assert stats["totals"]["batch_creates"] == 4

    # the same panel where m2 sides with m0: quorum at stage 2, no arbiter line at all
    configure(fleet, {"llama3.1-70b": {"answer": "B"}})
    jid = client.submit({"task_class": "multiple_choice", "lane": "panel", "mode": "batch", "prompt": question("stage2")})
    res = client.wait(jid, timeout=60)
    assert res.status == "decided" and res.answer == "B" and res.receipt is not None
    assert res.receipt.decision == "quorum" and not any(c.role == "arbiter" for c in res.receipt.calls)
    assert fleet.sim("/_sim/stats")["models"]["llama3.1-405b"]["batch_lines"] == 1  # only the first job's


def test_results_in_any_order_land_on_their_own_member(fleet: Fleet, client: PanelClient) -> None:
    # no scripted answers: each (model, prompt) gets the simulator's deterministic rule answer,
    # and every batch returns its lines shuffled
    fleet.sim("/_sim/config", {"default": {"batch_shuffle": True, "skill": 0.5}})
    prompts = [question("order") for _ in range(16)]
    ids = [client.submit({"task_class": "multiple_choice", "lane": "panel", "mode": "batch", "prompt": p}) for p in prompts]
    results = wait_all(client, ids)
    for p, res in zip(prompts, results, strict=True):
        assert res.status == "decided" and res.receipt is not None
        wire = Prompt.from_wire([{"role": "user", "content": p}])
        for c in res.receipt.calls:
            if c.role == "member" and c.status in ("answered", "late"):
                assert c.answer_key == rule_answer(c.model, wire, 0.5), (
                    f"{c.member} of {res.job_id} got another line's answer"
                )
    assert fleet.sim("/_sim/stats")["totals"]["requests"] == 0


def lines_retried(fleet: Fleet) -> int:
    r = redis_lib.Redis.from_url(fleet.redis_url)
    return sum(int(r.hget(k, "attempts") or 0) > 0 for k in r.scan_iter("pf:{bl:*}:line"))


def test_line_errors_and_expired_batches_end_every_job_decided_or_failed_with_a_reason(
    fleet: Fleet, client: PanelClient
) -> None:
    retried_before = lines_retried(fleet)
    # every batch of qwen2.5-72b expires with half its lines unrun; a quarter of all lines error
    fleet.sim("/_sim/config", {"default": {"batch_line_error_rate": 0.25},
                               "models": {"qwen2.5-72b-instruct": {"batch_expire": True}}})  # fmt: skip
    ids = [
        client.submit({"task_class": "multiple_choice", "lane": "panel", "mode": "batch", "prompt": question("err")}) for _ in range(12)
    ]
    results = wait_all(client, ids, timeout=90)  # the deadline is 600 s: nothing here waits for the sweep
    for res in results:
        assert res.status in ("decided", "failed"), res
        if res.status == "failed":
            assert res.error, f"{res.job_id} failed without a reason"
        assert res.receipt is not None
        for c in res.receipt.calls:
            if c.status == "failed":
                assert c.error and "batch line failed in 3 batches" in c.error, c
    assert sum(r.status == "decided" for r in results) >= 10
    assert lines_retried(fleet) - retried_before >= 3, "no errored or expired line was retried in a later batch"
    stats = fleet.sim("/_sim/stats")
    assert stats["totals"]["requests"] == 0  # far from the deadline: retries go by batch, not real time


def test_a_failed_line_near_the_deadline_is_made_in_real_time_at_the_real_time_price(
    fleet: Fleet, client: PanelClient
) -> None:
    # the first batch takes 3 s and errors every line; by then the deadline is inside the margin
    fleet.sim("/_sim/config", {"default": {"batch_delay_s": 3.0, "batch_line_error_rate": 1.0},
                               "models": {"qwen2.5-72b-instruct": {"answer": "A"},
                                          "qwen2.5-32b-coder-instruct": {"answer": "A"}}})  # fmt: skip
    deadline = datetime.now(UTC) + timedelta(seconds=MARGIN_S + 2.5)
    jid = client.submit({"task_class": "multiple_choice", "lane": "panel", "mode": "batch", "prompt": question("late"),
                         "deadline": deadline.isoformat()})  # fmt: skip
    res = client.wait(jid, timeout=30)
    assert res.status == "decided" and res.answer == "A"
    r = res.receipt
    assert r is not None and [s.lane for s in r.lanes] == ["batch"]
    for m in ("1.m0", "1.m1"):
        call = calls_by_member(r)[m]
        assert call.status == "answered" and call.batch is False and call.realtime_cost_usd is None
        assert call.cost_usd == pytest.approx(REG.cost(call.model, call.tokens_in, call.tokens_out, batch=False))
    stats = fleet.sim("/_sim/stats")
    assert stats["totals"]["requests"] == 2 and stats["totals"]["batch_creates"] == 2


def lua(r: redis_lib.Redis, name: str) -> Any:
    return r.register_script((Path(lane.__file__).parent / f"{name}.lua").read_text())


def test_a_batch_line_past_the_jobs_budget_is_refused_before_any_batch_is_sent(fleet: Fleet, client: PanelClient) -> None:
    # the cap is below one line's worst case (its prompt plus the model's whole output budget)
    jid = client.submit({"task_class": "multiple_choice", "lane": "panel", "mode": "batch", "budget_usd": 1e-9, "prompt": question("cap")})
    res = client.wait(jid, timeout=60)
    assert res.status == "failed" and res.receipt is not None
    members = [c for c in res.receipt.calls if c.role == "member" and c.status != "skipped"]
    assert members and all(c.status == "failed" and "budget" in (c.error or "").lower() for c in members), members
    assert res.receipt.total_cost_usd == 0
    assert fleet.sim("/_sim/stats")["totals"]["batch_lines"] == 0  # nothing reached a provider batch
    ok = client.submit({"task_class": "multiple_choice", "lane": "panel", "mode": "batch", "prompt": question("uncapped")})
    assert client.wait(ok, timeout=60).status == "decided"  # a line within the cap goes through, settled


def test_flushers_claim_disjoint_lines_and_a_stale_claim_goes_back_in_order(fleet: Fleet) -> None:
    r = redis_lib.Redis.from_url(fleet.redis_url)
    pending, claims = f"spec:pending:{uid('m')}", f"spec:claims:{uid('c')}"  # outside the lane's keys
    r.rpush(pending, *[f"c{i}" for i in range(5)])
    claim, reclaim = lua(r, "claim"), lua(r, "reclaim")
    first = claim(keys=[pending, claims], args=[3, "a", "m", 1.0])
    second = claim(keys=[pending, claims], args=[3, "b", "m", 2.0])
    assert first == [b"c0", b"c1", b"c2"] and second == [b"c3", b"c4"]
    assert claim(keys=[pending, claims], args=[3, "c", "m", 3.0]) == [] and not r.hexists(claims, "c")
    assert orjson.loads(r.hget(claims, "a"))["cids"] == ["c0", "c1", "c2"]
    r.rpush(pending, "c5")
    assert reclaim(keys=[claims, pending], args=["a"]) == 3
    assert reclaim(keys=[claims, pending], args=["a"]) == 0  # closed once: no line is put back twice
    assert r.lrange(pending, 0, -1) == [b"c0", b"c1", b"c2", b"c5"] and r.hkeys(claims) == [b"b"]
    r.delete(pending, claims)


# --- the poller's worker killed while batches are in flight ----------------------------------------


def descendants(pid: int) -> list[int]:
    """Every process forked under `pid`, from Linux's /proc/<pid>/task/<tid>/children."""
    found: list[int] = []
    for children in Path(f"/proc/{pid}/task").glob("*/children"):
        for child in map(int, children.read_text().split()):
            found += [child, *descendants(child)]
    return found


def kill_tree(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL a worker we started and every process it forked (its quarantine children, if any)."""
    family = [*descendants(proc.pid), proc.pid]
    for pid in family:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait(timeout=10)
    end = time.monotonic() + 10
    while any(Path(f"/proc/{pid}").exists() for pid in family[:-1]) and time.monotonic() < end:
        time.sleep(0.05)  # orphans are reaped by init; wait until they are gone


def ready_count(fleet: Fleet, name: str) -> int:
    return (fleet.log_dir / f"worker-{name}.log").read_bytes().count(b" ready.")


def test_killing_the_pollers_worker_mid_batch_loses_nothing_and_decides_each_job_once(
    fleet: Fleet, client: PanelClient
) -> None:
    lines_before = sum(1 for _ in redis_lib.Redis.from_url(fleet.redis_url).scan_iter("pf:{bl:*}:line"))
    fleet.sim("/_sim/config", {"default": {"batch_delay_s": 3.0}})
    r = redis_lib.Redis.from_url(fleet.redis_url)
    ids = [
        client.submit({"task_class": "multiple_choice", "lane": "panel", "mode": "batch", "prompt": question("crash")})
        for _ in range(12)
    ]
    # wait until every first-stage line is inside an open batch at the provider
    end = time.monotonic() + 30
    while time.monotonic() < end:
        queued = sum(r.llen(k) for k in r.scan_iter(keys.batch_pending("*"))) + r.hlen(keys.BATCH_CLAIMS)
        lines = sum(1 for _ in r.scan_iter("pf:{bl:*}:line"))
        if r.hlen(keys.BATCH_OPEN) and not queued and lines >= 2 * len(ids) + lines_before:
            break
        time.sleep(0.05)
    else:
        pytest.fail("the first-stage lines were never all submitted")
    assert not any(client.status(j) == "decided" for j in ids), "a batch ended before the kill: raise batch_delay_s"
    control = next(w for w in DEFAULT_WORKERS if "control" in w.queues.split(","))
    kill_tree(fleet.procs[control.name])  # the only control worker: the poller, in its own thread
    time.sleep(3.5)  # the batches end at the provider meanwhile; nobody polls them
    assert r.hlen(keys.BATCH_OPEN) >= 1 and not any(client.status(j) == "decided" for j in ids)
    before = ready_count(fleet, control.name)
    fleet.start_worker(control)
    end = time.monotonic() + 60
    while ready_count(fleet, control.name) == before and time.monotonic() < end:
        time.sleep(0.2)
    results = wait_all(client, ids, timeout=60)
    assert all(res.status == "decided" for res in results), [res.error for res in results if res.status != "decided"]
    time.sleep(1.0)  # a second decision, were there one, would land within a few ticks
    ledger = [rc["job_id"] for rc in client.ledger() if rc["job_id"] in ids]
    assert sorted(ledger) == sorted(ids), "a job decided twice, or not at all"
    for j in ids:
        assert r.lrange(keys.done_channel(j), 0, -1) == [b"decided"]
    assert r.hlen(keys.BATCH_OPEN) == 0
