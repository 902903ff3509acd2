"""The cascade lane end to end on real parts (redis-server, Celery workers, the simulator serving
log-probabilities, and llmock, which serves none): a job accepted at stage 1, one escalated with
the receipt naming the check, its value and threshold, an agreement stage that accepts and one
that splits and escalates without its arbiter, a confirm stage (agrees_previous), and the free-text
equivalence check on the simulator and on llmock. One fleet for the module."""

from __future__ import annotations

import shutil
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
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
    panel: &seed_panel
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
  qa_cascade_cached:                        # two of qa_cascade's stages, answers cached
    default_lane: cascade
    cache: {ttl_s: 3600}
    single: {model: llama3.1-8b}
    panel: *seed_panel
    cascade:
      stages:
        - model: llama3.1-8b
          accept: {check: logprob, min: -0.35}
        - model: llama3.1-405b
  qa_selfreport:                            # a self-reported score, then a judge-less panel as the last stage
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
          accept: {check: self_reported, min: 0.8}
        - panel:
            members: [llama3.1-70b, qwen2.5-72b-instruct, qwen2.5-32b-coder-instruct]
            quorum: 3
            agreement: {rule: choice}
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
  qa_freetext:                              # free text: members word one answer differently
    default_lane: panel
    single: {model: llama3.1-70b}
    panel:
      members: [llama3.1-70b, qwen2.5-72b-instruct]
      quorum: 2
      agreement: {rule: similar, threshold: 0.85}
      arbiter: llama3.1-405b
  qa_confirm:                               # an unsure cheap answer confirmed by one more model
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
        - model: llama3.1-70b
          accept: {check: agrees_previous}
        - model: llama3.1-405b
  qa_equivalence_llmock:                    # the equivalence model on llmock (canned replies, not the verdict JSON)
    default_lane: panel
    single: {model: llama3.1-70b}
    panel:
      members: [llama3.1-70b, qwen2.5-72b-instruct]
      quorum: 2
      agreement: {rule: similar, threshold: 0.85, equivalence: {model: gpt-4o-mini, min: 0.6}}
      arbiter: llama3.1-405b
  qa_equivalence_stage:                     # a judge-less stage asks the equivalence check before it escalates
    default_lane: cascade
    single: {model: llama3.1-70b}
    panel:
      members: [llama3.1-70b, qwen2.5-72b-instruct]
      quorum: 2
      agreement: {rule: choice}
      arbiter: llama3.1-405b
    cascade:
      stages:
        - panel:
            members: [llama3.1-70b, qwen2.5-72b-instruct]
            quorum: 2
            agreement: {rule: similar, threshold: 0.85, equivalence: {model: llama3.1-8b, min: 0.6}}
          accept: {check: agreement}
        - model: llama3.1-405b
  qa_equivalence:                           # near misses of `similar` go to an economy model first
    default_lane: panel
    single: {model: llama3.1-70b}
    panel:
      members: [llama3.1-70b, qwen2.5-72b-instruct]
      quorum: 2
      agreement: {rule: similar, threshold: 0.85, equivalence: {model: llama3.1-8b, min: 0.6}}
      arbiter: llama3.1-405b
"""


REPLAYED = {"replayed-sure": -0.2107, "replayed-unsure": -0.9731}  # question -> llama3.1-8b's recorded conf


def replay_row(question: str, conf: float) -> dict[str, object]:
    """A row in the shared replay format: llama3.1-8b answers B with the recorded `conf`, the
    panel members C (so an escalation shows in the answer)."""
    rec = {"tokens_in": 30, "tokens_out": 1, "cost_usd": None, "latency_ms": 20.0}
    return {"id": question, "source": "test", "task": "t", "kind": "choice", "gold": "C",
            "messages": [{"role": "user", "content": f"{question}: {QUESTION}"}],
            "models": {"llama3.1-8b": {"answer": "B", "text": "B", "correct": False, "conf": conf, **rec},
                       "llama3.1-70b": {"answer": "C", "text": "C", "correct": True, "conf": -0.1, **rec},
                       "qwen2.5-72b-instruct": {"answer": "C", "text": "C", "correct": True, "conf": -0.1, **rec}}}  # fmt: skip


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    policies = tmp_path_factory.mktemp("policies")
    shutil.copy(SHIPPED / "models.yaml", policies / "models.yaml")
    (policies / "tasks.yaml").write_text(TASKS)
    replay = policies / "replay.jsonl"
    replay.write_bytes(b"".join(orjson.dumps(replay_row(q, conf)) + b"\n" for q, conf in REPLAYED.items()))
    with llmock_process() as llmock:
        f = Fleet(env={"PANEL_POLICIES": str(policies), "OPENAI_BASE_URL": llmock.openai_base, **BATCH_ENV},
                  sim_args=["--replay", str(replay)])  # fmt: skip
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


def test_an_agreement_stage_left_with_one_answer_by_a_failed_member_escalates(fleet: Fleet, client: PanelClient) -> None:
    """One member of the agreeing pair fails (a 400: not retried): the panel is settled on the
    other's answer with nothing to arbitrate, but nobody agreed with it, so the stage escalates as
    the offline replay does, instead of accepting an unconfirmed answer (value 1 < threshold 2)."""
    r = run(fleet, client, {"llama3.1-8b": {"answer": "A", "logprob": -2.5}, "llama3.1-70b": {"answer": "B"},
                            "qwen2.5-72b-instruct": {"answer": "B", "fail_next": 1, "fail_status": 400},
                            "llama3.1-405b": {"answer": "C"}})  # fmt: skip
    assert [(c.member, c.status) for c in r.calls if c.member.startswith("2.")] == [("2.m0", "answered"), ("2.m1", "failed")]
    assert [s.stage for s in r.lanes] == [1, 2, 3], [(s.stage, s.check, s.value, s.accepted) for s in r.lanes]
    lone = r.lanes[1]
    assert (lone.check, lone.value, lone.threshold, lone.accepted) == ("agreement", 1.0, 2.0, False)
    assert r.lanes[2].reason == "cascade:stage2:agreement=1<2"
    assert r.final_answer == "C"


def test_a_cascade_whose_later_stages_run_out_of_the_deadline_keeps_the_answer_it_had(fleet: Fleet,
                                                                                     client: PanelClient) -> None:  # fmt: skip
    """Stage 1 answers, unsure; stage 2's members cannot answer before the deadline the stages
    share, nor can stage 3 after it: the job is decided with stage 1's paid answer, the receipt
    saying it was kept unaccepted, instead of failing with "no member answered"."""
    fleet.sim("/_sim/config", {"models": {"llama3.1-8b": {"answer": "A", "logprob": -2.5, "latency_ms": 20},
                                          "llama3.1-70b": {"answer": "B", "latency_ms": 60_000},
                                          "qwen2.5-72b-instruct": {"answer": "B", "latency_ms": 60_000},
                                          "llama3.1-405b": {"answer": "C", "latency_ms": 60_000}}})  # fmt: skip
    deadline = (datetime.now(UTC) + timedelta(seconds=3)).isoformat()
    job = {"task_class": "qa_cascade", "prompt": f"{uuid.uuid4().hex[:8]}: {QUESTION}", "deadline": deadline}
    res = client.wait(client.submit(job), timeout=90)
    assert res.status == "decided" and res.answer == "A", (res.status, res.error)
    r = res.receipt
    assert r is not None and r.final_answer == "A" and r.decision == "single"
    assert [(s.stage, s.accepted) for s in r.lanes][0] == (1, False) and len(r.lanes) >= 2
    assert not r.lanes[-1].accepted
    assert f"cascade:stage{r.lanes[-1].stage}:no answer; stage1's unaccepted answer kept" in r.triggers
    assert r.default_answer == "A" and r.changed_vs_default is False


def test_a_kept_unaccepted_answer_is_not_served_from_the_cache_to_later_jobs(fleet: Fleet, client: PanelClient) -> None:
    """An answer no check accepted, kept because the stage after it ran out of time, decides its
    own job; an identical later job runs again instead of being served it. An accepted answer of
    the same class is served from the cache (the spec can fail)."""
    def ask(prompt: str, **models: dict[str, object]) -> Receipt:
        fleet.sim("/_sim/config", {"models": models})
        deadline = (datetime.now(UTC) + timedelta(seconds=3)).isoformat()
        res = client.wait(client.submit({"task_class": "qa_cascade_cached", "prompt": prompt, "deadline": deadline}),
                          timeout=90)  # fmt: skip
        assert res.status == "decided" and res.receipt is not None, (res.status, res.error)
        return res.receipt

    slow = {"llama3.1-405b": {"answer": "C", "latency_ms": 60_000}}
    kept = f"{uuid.uuid4().hex[:8]}: {QUESTION}"
    first = ask(kept, **{"llama3.1-8b": {"answer": "A", "logprob": -2.5, "latency_ms": 20}}, **slow)
    assert first.final_answer == "A" and any("unaccepted answer kept" in t for t in first.triggers), first.triggers
    again = ask(kept, **{"llama3.1-8b": {"answer": "B", "logprob": -0.1, "latency_ms": 20}}, **slow)
    assert again.decision != "cache" and again.final_answer == "B", (again.decision, again.final_answer)

    sure = f"{uuid.uuid4().hex[:8]}: {QUESTION}"
    assert ask(sure, **{"llama3.1-8b": {"answer": "D", "logprob": -0.1, "latency_ms": 20}}, **slow).decision != "cache"
    served = ask(sure, **{"llama3.1-8b": {"answer": "B", "logprob": -0.1, "latency_ms": 20}}, **slow)
    assert served.decision == "cache" and served.final_answer == "D"


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


def test_self_reported_confidence_accepts_and_a_judgeless_last_stage_takes_the_plurality(fleet: Fleet, client: PanelClient) -> None:
    sure = run(fleet, client, {"llama3.1-8b": {"answer": "B\nconfidence: 0.9"}}, task_class="qa_selfreport")
    [stage] = sure.lanes
    assert (stage.check, stage.value, stage.threshold, stage.accepted) == ("self_reported", 0.9, 0.8, True)
    unsure = run(fleet, client, {"llama3.1-8b": {"answer": "B\nConfidence: 55%"}, "llama3.1-70b": {"answer": "C"},
                                 "qwen2.5-72b-instruct": {"answer": "C"}, "qwen2.5-32b-coder-instruct": {"answer": "D"}},
                 task_class="qa_selfreport")  # fmt: skip
    first, last = unsure.lanes
    assert (first.value, first.accepted) == (0.55, False) and last.reason == "cascade:stage1:self_reported=0.55<0.8"
    # 2 of 3 is short of the quorum of 3 and the stage names no arbiter: the plurality, flagged as such
    assert unsure.final_answer == "C" and unsure.decision == "majority" and not any(c.role == "arbiter" for c in unsure.calls)
    assert (last.check, last.accepted) == ("always", True) and unsure.disagreement


def test_replayed_rows_gate_on_their_recorded_conf(fleet: Fleet, client: PanelClient) -> None:
    """Offline equivalence: the fleet measures a replayed answer's log-probability as its `conf`."""
    receipts = {}
    for question in REPLAYED:
        res = client.wait(client.submit({"task_class": "qa_cascade", "prompt": f"{question}: {QUESTION}"}), timeout=60)
        assert res.status == "decided" and res.receipt is not None
        receipts[question] = res.receipt
    sure, unsure = receipts["replayed-sure"], receipts["replayed-unsure"]
    assert sure.lanes[0].value == pytest.approx(REPLAYED["replayed-sure"], abs=1e-9) and sure.lanes[0].accepted
    assert sure.final_answer == "B" and len(sure.lanes) == 1
    assert unsure.lanes[0].value == pytest.approx(REPLAYED["replayed-unsure"], abs=1e-9) and not unsure.lanes[0].accepted
    assert unsure.lanes[1].reason == "cascade:stage1:logprob=-0.9731<-0.35" and unsure.final_answer == "C"


def test_a_free_text_panel_agrees_by_similarity_where_exact_match_would_split(fleet: Fleet, client: PanelClient) -> None:
    from workers.panel.agreement import Exact

    a, b = "The answer is Paris, France.", "Final answer: paris france"
    assert Exact().key(a, []) != Exact().key(b, [])  # `rule: exact` would split these and call the arbiter
    r = run(fleet, client, {"llama3.1-70b": {"answer": a}, "qwen2.5-72b-instruct": {"answer": b},
                            "llama3.1-405b": {"answer": "Lyon"}}, task_class="qa_freetext")  # fmt: skip
    assert r.decision == "quorum" and not any(c.role == "arbiter" for c in r.calls)
    assert r.final_answer in (a, b)
    assert fleet.sim("/_sim/stats")["models"].get("llama3.1-405b", {}).get("requests", 0) == 0  # type: ignore[union-attr]


ARBITER_PICKS_R1 = '{"chosen_members": ["r1"], "disagreements": ["wording"], "rationale": "r1."}'


@pytest.mark.parametrize(("said", "decision"), [('{"equivalent": true}', "quorum"), ('{"equivalent": false}', "arbiter")])
def test_a_near_miss_goes_to_the_equivalence_model_before_the_arbiter(fleet: Fleet, client: PanelClient, said: str,
                                                                      decision: str) -> None:  # fmt: skip
    a, b = "The answer is 12 apples.", "Final answer: twelve apples"  # token-set ratio 0.8: under 0.85, over 0.6
    asked = judge_requests(fleet)
    r = run(fleet, client, {"llama3.1-70b": {"answer": a}, "qwen2.5-72b-instruct": {"answer": b},
                            "llama3.1-8b": {"answer": said}, "llama3.1-405b": {"answer": ARBITER_PICKS_R1}},
            task_class="qa_equivalence")  # fmt: skip
    [check] = [c for c in r.calls if c.role == "equivalence"]
    assert check.model == "llama3.1-8b" and check.status == "answered" and check.cost_usd > 0
    assert sorted(check.compared or []) == ["m0", "m1"] and check.equivalent is (decision == "quorum")
    assert r.total_cost_usd == pytest.approx(sum(c.cost_usd for c in r.calls))  # charged in the receipt
    assert r.decision == decision and r.final_answer in (a, b)
    assert any(c.role == "arbiter" for c in r.calls) is (decision == "arbiter")
    assert judge_requests(fleet) == asked + 1  # one call to the economy model, the one in the receipt


@pytest.mark.parametrize("said", ['{"equivalent": true}', '{"equivalent": false}'])
def test_a_judgeless_stage_accepts_a_near_miss_the_check_joins_else_escalates(fleet: Fleet, client: PanelClient,
                                                                             said: str) -> None:  # fmt: skip
    a, b, last = "The answer is 12 apples.", "Final answer: twelve apples", "The answer is 13 apples."
    asked = judge_requests(fleet)
    r = run(fleet, client, {"llama3.1-70b": {"answer": a}, "qwen2.5-72b-instruct": {"answer": b},
                            "llama3.1-8b": {"answer": said}, "llama3.1-405b": {"answer": last}},
            task_class="qa_equivalence_stage")  # fmt: skip
    joined = said.endswith("true}")
    [check] = [c for c in r.calls if c.role == "equivalence"]
    assert check.model == "llama3.1-8b" and check.equivalent is joined and check.cost_usd > 0
    assert r.lanes[0].accepted is joined and len(r.lanes) == (1 if joined else 2)
    assert r.final_answer in ((a, b) if joined else (last,))
    assert any(c.model == "llama3.1-405b" for c in r.calls) is not joined and not any(c.role == "arbiter" for c in r.calls)
    assert r.total_cost_usd == pytest.approx(sum(c.cost_usd for c in r.calls))
    assert judge_requests(fleet) == asked + 1


def test_a_batch_panel_asks_the_equivalence_check_in_real_time_before_queuing_its_arbiter(fleet: Fleet,
                                                                                         client: PanelClient) -> None:  # fmt: skip
    a, b = "The answer is 12 apples.", "Final answer: twelve apples"
    r = run(fleet, client, {"llama3.1-70b": {"answer": a}, "qwen2.5-72b-instruct": {"answer": b},
                            "llama3.1-8b": {"answer": '{"equivalent": true}'}, "llama3.1-405b": {"answer": ARBITER_PICKS_R1}},
            task_class="qa_equivalence", mode="batch")  # fmt: skip
    [check] = [c for c in r.calls if c.role == "equivalence"]
    assert check.batch is False and check.equivalent is True  # one small real-time call, priced so
    assert all(c.batch for c in r.calls if c.role == "member") and len([c for c in r.calls if c.role == "member"]) == 2
    assert r.decision == "quorum" and not any(c.role == "arbiter" for c in r.calls) and r.final_answer in (a, b)


def judge_requests(fleet: Fleet) -> int:
    return int(fleet.sim("/_sim/stats")["models"].get("llama3.1-8b", {}).get("requests", 0))  # type: ignore[union-attr]


def test_answers_far_apart_go_straight_to_the_arbiter(fleet: Fleet, client: PanelClient) -> None:
    asked = judge_requests(fleet)
    r = run(fleet, client, {"llama3.1-70b": {"answer": "The answer is 12 apples."},
                            "qwen2.5-72b-instruct": {"answer": "Final answer: 7 pears"},
                            "llama3.1-8b": {"answer": '{"equivalent": true}'}, "llama3.1-405b": {"answer": ARBITER_PICKS_R1}},
            task_class="qa_equivalence")  # fmt: skip
    assert not any(c.role == "equivalence" for c in r.calls) and r.decision == "arbiter"
    assert judge_requests(fleet) == asked


@pytest.mark.parametrize(("second", "stages", "final"), [("A", 2, "A"), ("B", 3, "C")])
def test_an_unsure_answer_confirmed_by_the_next_model_stops_there_else_goes_on(fleet: Fleet, client: PanelClient,
                                                                               second: str, stages: int, final: str) -> None:  # fmt: skip
    r = run(fleet, client, {"llama3.1-8b": {"answer": "A", "logprob": -0.82}, "llama3.1-70b": {"answer": second},
                            "llama3.1-405b": {"answer": "C"}}, task_class="qa_confirm")  # fmt: skip
    assert [s.stage for s in r.lanes] == list(range(1, stages + 1)) and r.final_answer == final
    confirm = r.lanes[1]
    assert (confirm.check, confirm.value, confirm.accepted) == ("agrees_previous", 1.0 if stages == 2 else 0.0, stages == 2)
    if stages == 3:
        assert r.lanes[2].reason == "cascade:stage2:agrees_previous=differs"
    assert [c.model for c in r.calls] == ["llama3.1-8b", "llama3.1-70b", "llama3.1-405b"][:stages]


def test_an_unreadable_equivalence_reply_goes_on_to_the_arbiter_and_is_still_charged(fleet: Fleet, client: PanelClient) -> None:
    """gpt-4o-mini is llmock here: a real OpenAI-wire reply that is not {"equivalent": bool}."""
    r = run(fleet, client, {"llama3.1-70b": {"answer": "The answer is 12 apples."},
                            "qwen2.5-72b-instruct": {"answer": "Final answer: twelve apples"},
                            "llama3.1-405b": {"answer": ARBITER_PICKS_R1}}, task_class="qa_equivalence_llmock")  # fmt: skip
    [check] = [c for c in r.calls if c.role == "equivalence"]
    assert (check.model, check.provider, check.status, check.equivalent) == ("gpt-4o-mini", "openai", "answered", None)
    assert check.tokens_in > 0 and check.cost_usd > 0 and "unreadable" in (check.error or "")
    assert r.decision == "arbiter" and any(c.role == "arbiter" for c in r.calls)
    assert r.total_cost_usd == pytest.approx(sum(c.cost_usd for c in r.calls))


def test_the_ledger_counts_each_stage_s_acceptances(fleet: Fleet, client: PanelClient) -> None:
    from producer.ledger_view import stage_rates

    ids = {run(fleet, client, {"llama3.1-8b": {"answer": "A", "logprob": lp}, "llama3.1-70b": {"answer": second},
                               "llama3.1-405b": {"answer": "C"}}, task_class="qa_confirm").job_id
           for lp, second in ((-0.1, "A"), (-0.82, "A"), (-0.82, "B"))}  # fmt: skip
    deadline = time.time() + 30  # the ledger entry is appended when the job is finalised
    while len(mine := [r for r in client.ledger() if r["job_id"] in ids]) < 3 and time.time() < deadline:
        time.sleep(0.1)
    assert stage_rates(mine) == ["qa_confirm (cascade): stage 1: 3 reached, 1 accepted (33%), 1 concluded; "
                                 "stage 2: 2 reached, 1 accepted (50%), 1 concluded; stage 3: 1 reached, 1 accepted (100%), 1 concluded"]  # fmt: skip
