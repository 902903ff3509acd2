"""The cascade lane end to end on real parts (redis-server, Celery workers, the simulator serving
log-probabilities, and llmock, which serves none): a job accepted at stage 1, one escalated with
the receipt naming the check, its value and threshold, an agreement stage that accepts and one
that splits and escalates without its arbiter. One fleet for the module."""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from producer.client import PanelClient
from producer.contract import Receipt
from producer.fleet import Fleet
from tests.providers.conftest import llmock_process

BATCH_ENV = {"PANEL_BATCH_TICK_S": "0.2", "PANEL_BATCH_MAX_AGE_S": "0.3"}  # batches go out and come back fast
SHIPPED = Path(__file__).resolve().parents[2] / "policies"
QUESTION = "pick one\nA) w\nB) x\nC) y\nD) z"
TASKS = """
task_classes:
  qa_cascade:
    default_lane: cascade
    single: {model: llama3.1-8b}
    panel:
      members: [llama3.1-70b, qwen2.5-72b-instruct, qwen2.5-32b-coder-instruct]
      quorum: 2
      agreement: {rule: choice}
      arbiter: llama3.1-405b
    cascade:
      stages:
        - model: llama3.1-8b
          accept: {check: logprob, min: -0.35}
        - panel:
            members: [llama3.1-70b, qwen2.5-72b-instruct]
            quorum: 2
            agreement: {rule: choice}
            arbiter: claude-3-5-sonnet      # named, yet never called: this stage is not the last
          accept: {check: agreement}
        - model: llama3.1-405b
  qa_llmock:                                # gpt-4o-mini is served by llmock (no log-probabilities)
    default_lane: cascade
    single: {model: gpt-4o-mini}
    panel:
      members: [gpt-4o-mini, llama3.1-70b]
      quorum: 2
      agreement: {rule: choice}
      arbiter: llama3.1-405b
    cascade:
      stages:
        - model: gpt-4o-mini
          accept: {check: logprob, min: -5}
        - model: llama3.1-70b
"""


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    policies = tmp_path_factory.mktemp("policies")
    shutil.copy(SHIPPED / "models.yaml", policies / "models.yaml")
    (policies / "tasks.yaml").write_text(TASKS)
    with llmock_process() as llmock:
        f = Fleet(env={"PANEL_POLICIES": str(policies), "OPENAI_BASE_URL": llmock.openai_base, **BATCH_ENV})
        f.start()
        try:
            yield f
        finally:
            f.stop()


def run(fleet: Fleet, client: PanelClient, models: dict[str, dict[str, object]], task_class: str = "qa_cascade",
        mode: str = "realtime") -> Receipt:  # fmt: skip
    fleet.sim("/_sim/config", {"default": {"batch_delay_s": 0.4},
                               "models": {m: {"latency_ms": 20, **k} for m, k in models.items()}})  # fmt: skip
    job = {"task_class": task_class, "prompt": f"{uuid.uuid4().hex[:8]}: {QUESTION}", "mode": mode}
    res = client.wait(client.submit(job), timeout=60)
    assert res.status == "decided", res.error
    assert res.receipt is not None and res.receipt.final_answer == res.answer
    return res.receipt


def test_a_confident_stage_one_answer_is_accepted_there(fleet: Fleet, client: PanelClient) -> None:
    r = run(fleet, client, {"llama3.1-8b": {"answer": "B", "logprob": -0.1}})
    [stage] = r.lanes
    assert (stage.lane, stage.stage, stage.check, stage.threshold, stage.accepted) == ("single", 1, "logprob", -0.35, True)
    assert stage.value == pytest.approx(-0.1, abs=1e-9)
    [call] = r.calls
    assert call.model == "llama3.1-8b" and call.logprob == pytest.approx(-0.1, abs=1e-9)
    assert r.decision == "single" and r.final_answer == "B" and r.changed_vs_default is False
    [sent] = fleet.sim("/_sim/requests?model=llama3.1-8b")["requests"]  # type: ignore[misc]
    assert sent["status"] == 200


def test_an_unsure_stage_one_escalates_and_the_agreeing_panel_accepts(fleet: Fleet, client: PanelClient) -> None:
    r = run(fleet, client, {"llama3.1-8b": {"answer": "A", "logprob": -0.82},
                            "llama3.1-70b": {"answer": "B"}, "qwen2.5-72b-instruct": {"answer": "B"}})  # fmt: skip
    first, second = r.lanes
    assert (first.stage, first.check, first.threshold, first.accepted) == (1, "logprob", -0.35, False)
    assert first.value == pytest.approx(-0.82, abs=1e-9) and first.value < first.threshold  # type: ignore[operator]
    assert second.reason == "cascade:stage1:logprob=-0.82<-0.35" and second.reason in r.triggers
    assert (second.lane, second.stage, second.check, second.value, second.threshold, second.accepted) == (
        "panel", 2, "agreement", 2.0, 2.0, True)
    assert r.decision == "quorum" and r.final_answer == "B"
    assert r.default_answer == "A" and r.changed_vs_default is True  # escalation changed stage 1's answer
    assert [c.member for c in r.calls] == ["1.m0", "2.m0", "2.m1"]
    assert r.total_cost_usd == pytest.approx(sum(c.cost_usd for c in r.calls))


def test_a_split_agreement_stage_escalates_without_its_arbiter(fleet: Fleet, client: PanelClient) -> None:
    r = run(fleet, client, {"llama3.1-8b": {"answer": "A", "logprob": -2.5}, "llama3.1-70b": {"answer": "B"},
                            "qwen2.5-72b-instruct": {"answer": "C"}, "llama3.1-405b": {"answer": "C"}})  # fmt: skip
    assert [s.stage for s in r.lanes] == [1, 2, 3]
    split, last = r.lanes[1], r.lanes[2]
    assert (split.check, split.accepted, split.value, split.threshold) == ("agreement", False, 1.0, 2.0)
    assert last.reason == "cascade:stage2:agreement=split" and (last.check, last.accepted) == ("always", True)
    assert not any(c.role == "arbiter" for c in r.calls)
    assert fleet.sim("/_sim/stats")["models"].get("claude-3-5-sonnet", {}).get("requests", 0) == 0  # type: ignore[union-attr]
    assert r.final_answer == "C" and r.decision == "single" and r.changed_vs_default is True


def test_a_server_without_logprobs_escalates_with_a_null_value(fleet: Fleet, client: PanelClient) -> None:
    r = run(fleet, client, {"llama3.1-70b": {"answer": "D"}}, task_class="qa_llmock")
    first, second = r.lanes
    assert (first.check, first.value, first.threshold, first.accepted) == ("logprob", None, -5.0, False)
    assert r.calls[0].model == "gpt-4o-mini" and r.calls[0].status == "answered" and r.calls[0].logprob is None
    assert second.reason == "cascade:stage1:logprob=null" and r.final_answer == "D"


def test_a_batch_job_runs_its_stages_through_the_batch_lane(fleet: Fleet, client: PanelClient) -> None:
    r = run(fleet, client, {"llama3.1-8b": {"answer": "A", "logprob": -0.82},
                            "llama3.1-70b": {"answer": "B"}, "qwen2.5-72b-instruct": {"answer": "B"}}, mode="batch")  # fmt: skip
    first, second = r.lanes
    assert [s.lane for s in r.lanes] == ["batch", "batch"]
    assert (first.check, first.accepted) == ("logprob", False) and first.value == pytest.approx(-0.82, abs=1e-9)
    assert second.reason == "cascade:stage1:logprob=-0.82<-0.35" and (second.check, second.accepted) == ("agreement", True)
    assert r.final_answer == "B" and all(c.batch for c in r.calls if c.status == "answered")
    stats = fleet.sim("/_sim/stats")
    assert stats["totals"]["requests"] == 0 and stats["totals"]["batch_creates"] >= 2  # type: ignore[index]
