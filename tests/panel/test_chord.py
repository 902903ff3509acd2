"""The chord as a specification: a member's turn, the vote's actions, the arbiter, a job's start
and conclusion, driven directly on fakeredis with a fake caller and a recording dispatcher (as
dramatiq tests actors on its stub broker). The real vote.lua/decide.lua run; no Celery, no HTTP."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from importlib.resources import files
from types import SimpleNamespace
from typing import Any

import fakeredis
import orjson
import pytest

from producer import keys
from producer.contract import Job
from producer.settings import Settings
from workers import jobs
from workers.budget import Budget, Spend
from workers.jobs import conclude_panel, start_job
from workers.jobstore import JobStore
from workers.limits.steps import Owed
from workers.panel import attempts
from workers.panel.act import carry_out, dispatch
from workers.panel.arbiter import anonymise, run_arbiter
from workers.panel.calls import CallOutcome
from workers.panel.chord import call_record, cast_vote, run_member
from workers.panel.decision import CallArbiter, Cancel, Conclude, NextStage, Nothing, after_vote
from workers.panel.ports import Chord
from workers.panel.record import Call
from workers.panel.route import Route, route
from workers.panel.state import Member, PanelRun, PanelStore, VoteOutcome
from workers.policy import PolicyTable
from workers.providers.base import Completion
from workers.registry import Registry

REGISTRY = Registry.load()
POLICIES = PolicyTable.load(REGISTRY)
MODELS = ["qwen2.5-72b-instruct", "qwen2.5-32b-coder-instruct", "llama3.1-70b"]  # multiple_choice's panel
ARBITER = "llama3.1-405b"


@dataclass
class FakeCaller:
    """Answers per model from a table; counts calls. A model mapped to None fails its call. With
    a `budget`, each answer holds HOLD_USD of it and leaves its settlement (to COST_USD) owed, as
    workers/panel/calls.py does."""

    answers: dict[str, str | None]
    calls: list[tuple[str | None, str]] = field(default_factory=list)
    budget: Budget | None = None

    def __call__(self, panel_id: str | None, model: str, messages: list[dict[str, str]], deadline: float,
                 json_mode: bool = False, spend: Spend | None = None, logprobs: bool = False,
                 member: str | None = None, in_panel: frozenset[str] = frozenset(),
                 owed: Owed | None = None) -> CallOutcome:  # fmt: skip
        self.calls.append((panel_id, model))
        text = self.answers[model]
        if text is None:
            return CallOutcome(model, None, "HTTP 503: upstream unavailable", attempts=4)
        if self.budget is not None and spend is not None and owed is not None:
            hold = self.budget.reserve(spend.job_id, spend.tenant, None, HOLD_USD)
            owed.r, owed.steps = self.budget.r, [self.budget.settle_step(hold, COST_USD)]
        return CallOutcome(model, Completion(text, 40, 3, 12.0, model, "sim", "stop"), attempts=1)


HOLD_USD, COST_USD = 1.0, 0.25


@dataclass
class Recorder:
    """A Dispatcher that records what the chord asked for."""

    sent: list[tuple[str, str, Route]] = field(default_factory=list)
    arbiters: list[tuple[str, Route]] = field(default_factory=list)
    concluded: list[str] = field(default_factory=list)
    revoked: list[str] = field(default_factory=list)
    ran: list[str] = field(default_factory=list)

    def member(self, spec: PanelRun, member: Member, route: Route) -> str:
        self.sent.append((spec.panel_id, member.member, route))
        return f"task-{spec.panel_id}-{member.member}"

    def arbiter(self, spec: PanelRun, route: Route) -> None:
        self.arbiters.append((spec.panel_id, route))

    def conclude(self, panel_id: str, cancel: bool = False, lease: str = "", read: Any = None) -> list[str] | None:
        self.concluded.append(panel_id)
        return None  # the cancel is the chord's own (PanelStore.cancel)

    def revoke(self, task_ids: list[str]) -> None:
        self.revoked.extend(task_ids)

    def run(self, job_id: str) -> None:
        self.ran.append(job_id)


def _store_job(r: fakeredis.FakeRedis, job_id: str, **extra: Any) -> Job:
    job = Job.model_validate({"id": job_id, "task_class": "multiple_choice", "lane": "panel", "prompt": "pick\nA) x\nB) y", **extra})
    r.hset(keys.job(job_id), mapping={"spec": job.model_dump_json(), "status": "queued", "submitted_at": time.time()})
    return job


def _panel(store: PanelStore, job_id: str = "j1", dispatch_: str = "parallel", batch: bool = False,
           deadline_in: float = 60.0) -> PanelRun:  # fmt: skip
    spec = PanelRun(panel_id=f"{job_id}.1", job_id=job_id, stage="panel", attempt=1,
                    members=[Member(f"m{i}", m, REGISTRY.model(m).tier) for i, m in enumerate(MODELS)], quorum=2,
                    dispatch=dispatch_, agreement={"rule": "choice"}, arbiter=ARBITER, rubric=["be right"],  # type: ignore[arg-type]
                    deadline=time.time() + deadline_in, batch=batch)  # fmt: skip
    store.create(spec, 60)
    return spec


@pytest.fixture
def r() -> fakeredis.FakeRedis:
    return fakeredis.FakeRedis()


def _chord(r: fakeredis.FakeRedis, caller: FakeCaller) -> Chord:
    return Chord(store=PanelStore(r), registry=REGISTRY, jobs=JobStore(r, POLICIES, 60), caller=caller)


# --- the decision core alone: plain values in, plain values out


def test_a_pending_vote_asks_for_nothing() -> None:
    spec = PanelRun("p", "j", "panel", 1, [], 2, "parallel", {}, ARBITER, [], time.time())
    assert after_vote(spec, VoteOutcome("pending", "a", False)) == Nothing


def test_a_redelivered_vote_after_the_quorum_repeats_the_conclusion_and_the_cancel() -> None:
    spec = PanelRun("p", "j", "panel", 1, [], 2, "parallel", {}, ARBITER, [], time.time())
    dup = VoteOutcome("decided", "a", True, outcome="quorum")
    assert after_vote(spec, dup) == (Conclude(), Cancel())
    # a first vote that arrives after the decision without an answer changes nothing but the cancel guard
    assert after_vote(spec, VoteOutcome("decided", "a", False, outcome="quorum")) == (Cancel(),)


def test_a_batch_panel_near_its_deadline_is_routed_to_real_time(r: fakeredis.FakeRedis) -> None:
    store = PanelStore(r)
    assert route(_panel(store, "far", batch=True, deadline_in=3600), margin_s=120) == "batch"
    assert route(_panel(store, "near", batch=True, deadline_in=60), margin_s=120) == "batch_realtime"
    assert route(_panel(store, "rt", batch=False, deadline_in=60), margin_s=120) == "realtime"


# --- a member's turn on fakeredis


def test_quorum_of_two_cancels_third(r: fakeredis.FakeRedis) -> None:
    caller = FakeCaller({MODELS[0]: "ANSWER: B", MODELS[1]: "B", MODELS[2]: "A"})
    chord, d = _chord(r, caller), Recorder()
    _store_job(r, "j1")
    spec = _panel(chord.store)
    dispatch(chord.store, d, spec, spec.members)
    first = run_member(chord, spec.panel_id, "m0")
    assert (first.status, first.actions) == ("answered", Nothing)
    second = run_member(chord, spec.panel_id, "m1")
    assert (second.status, second.actions) == ("answered", (Conclude(), Cancel()))
    pubsub = r.pubsub()
    pubsub.subscribe(keys.DECIDED_CHANNEL)
    carry_out(chord.store, d, second)
    assert d.concluded == [spec.panel_id]
    assert d.revoked == [f"task-{spec.panel_id}-m2"]  # only the member with no recorded call
    messages = [m for m in iter(lambda: pubsub.get_message(timeout=0.2), None) if m["type"] == "message"]
    assert [m["data"] for m in messages] == [spec.panel_id.encode()]  # in-flight calls are told to stop
    third = run_member(chord, spec.panel_id, "m2")
    assert third.status == "cancelled" and len(caller.calls) == 2  # the straggler made no call
    carry_out(chord.store, d, second)
    assert d.revoked == [f"task-{spec.panel_id}-m2"]  # the cancel happens once per panel


def test_an_answers_settlement_goes_with_its_record_and_vote_in_one_round_trip(r: fakeredis.FakeRedis) -> None:
    budget = Budget(r)
    chord = _chord(r, FakeCaller({MODELS[0]: "B", MODELS[1]: "B", MODELS[2]: "B"}, budget=budget))
    job = _store_job(r, "j1")
    spec = _panel(chord.store)
    sent: list[int] = []
    execute = type(r.pipeline()).execute

    def counted(pipe: Any, raise_on_error: bool = True) -> Any:
        sent.append(len(pipe.command_stack))
        return execute(pipe, raise_on_error=raise_on_error)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(type(r.pipeline()), "execute", counted)
        assert run_member(chord, spec.panel_id, "m0").status == "answered"
    assert sent[-1] == 3  # the settlement, the record, the vote: one pipeline
    assert budget.spent(keys.budget_job(job.tenant, "j1")) == pytest.approx(COST_USD)  # settled once


def test_a_landing_that_raises_still_settles_the_answers_hold_once(r: fakeredis.FakeRedis) -> None:
    budget = Budget(r)
    chord = _chord(r, FakeCaller({MODELS[0]: "B", MODELS[1]: "B", MODELS[2]: "B"}, budget=budget))
    job = _store_job(r, "j1")
    spec = _panel(chord.store)

    def broken(*args: Any, **kw: Any) -> Any:
        raise RuntimeError("the record could not be written")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(chord.store, "put_call_and_vote", broken)
        with pytest.raises(RuntimeError):
            run_member(chord, spec.panel_id, "m0")
    # the hold (HOLD_USD) was neither left standing nor given back twice: settled to the answer's cost
    assert budget.spent(keys.budget_job(job.tenant, "j1")) == pytest.approx(COST_USD)


def test_a_redelivered_member_reuses_its_paid_answer_and_votes_once(r: fakeredis.FakeRedis) -> None:
    caller = FakeCaller({MODELS[0]: "B", MODELS[1]: "B", MODELS[2]: "B"})
    chord = _chord(r, caller)
    _store_job(r, "j1")
    spec = _panel(chord.store)
    assert run_member(chord, spec.panel_id, "m0").status == "answered"
    again = run_member(chord, spec.panel_id, "m0")
    assert again.status == "reused" and again.actions == Nothing
    assert len(caller.calls) == 1 and chord.store.tally(spec.panel_id) == {"B": 1}


def test_disagreement_calls_the_arbiter_once(r: fakeredis.FakeRedis) -> None:
    caller = FakeCaller({MODELS[0]: "A", MODELS[1]: "B", MODELS[2]: "C"})
    chord, d = _chord(r, caller), Recorder()
    _store_job(r, "j1")
    spec = _panel(chord.store)
    turns = [run_member(chord, spec.panel_id, m) for m in ("m0", "m1", "m2")]
    assert [t.actions for t in turns] == [Nothing, Nothing, (CallArbiter(),)]
    carry_out(chord.store, d, turns[-1])
    carry_out(chord.store, d, turns[-1])  # a redelivered last member repeats its actions
    assert d.arbiters == [(spec.panel_id, "realtime")]


def test_an_exhausted_panel_with_one_answer_is_settled_without_an_arbiter(r: fakeredis.FakeRedis) -> None:
    caller = FakeCaller({MODELS[0]: None, MODELS[1]: "B", MODELS[2]: None})
    chord, d = _chord(r, caller), Recorder()
    _store_job(r, "j1")
    spec = _panel(chord.store)
    turns = [run_member(chord, spec.panel_id, m) for m in ("m0", "m1", "m2")]
    assert [t.status for t in turns] == ["failed", "answered", "failed"]
    assert turns[-1].actions == (Conclude(settle="quorum"),)
    carry_out(chord.store, d, turns[-1])
    assert chord.store.decided(spec.panel_id) == "quorum" and d.concluded == [spec.panel_id] and d.arbiters == []


def test_a_judgeless_cascade_stage_that_splits_settles_as_split_without_an_arbiter(r: fakeredis.FakeRedis) -> None:
    caller = FakeCaller({MODELS[0]: "A", MODELS[1]: "B", MODELS[2]: "B"})
    chord, d = _chord(r, caller), Recorder()
    _store_job(r, "j1")
    spec = PanelRun(panel_id="j1.1", job_id="j1", stage="panel", attempt=1, quorum=3, dispatch="parallel",
                    members=[Member(f"m{i}", m, REGISTRY.model(m).tier) for i, m in enumerate(MODELS)],
                    agreement={"rule": "choice"}, arbiter="", rubric=[], deadline=time.time() + 60)  # fmt: skip
    chord.store.create(spec, 60)
    last = [run_member(chord, spec.panel_id, m) for m in ("m0", "m1", "m2")][-1]
    assert last.actions == (Conclude(settle="split"),)
    carry_out(chord.store, d, last)
    assert chord.store.decided(spec.panel_id) == "split" and chord.store.state(spec.panel_id)["answer"] == "B"  # the plurality
    assert d.arbiters == [] and ARBITER not in [m for _, m in caller.calls]


@pytest.mark.parametrize(("said", "decided", "answer"), [('{"equivalent": true}', "quorum", "12 apples"),
                                                     ('{"equivalent": false}', "split", "12 apples")])
def test_a_judgeless_stage_asks_its_equivalence_check_before_it_splits(r: fakeredis.FakeRedis, said: str,
                                                                      decided: str, answer: str) -> None:  # fmt: skip
    """A yes joins the near miss into the stage's quorum (accepted there); a no splits and escalates."""
    check = "llama3.1-8b"
    caller = FakeCaller({MODELS[0]: "12 apples", MODELS[1]: "twelve apples", MODELS[2]: "7 pears", check: said})
    chord, d = _chord(r, caller), Recorder()
    _store_job(r, "j1")
    agreement = {"rule": "similar", "threshold": 0.85, "equivalence": {"model": check, "min": 0.5}}
    spec = PanelRun(panel_id="j1.1", job_id="j1", stage="panel", attempt=1, quorum=2, dispatch="parallel",
                    members=[Member(f"m{i}", m, REGISTRY.model(m).tier) for i, m in enumerate(MODELS)],
                    agreement=agreement, arbiter="", rubric=[], deadline=time.time() + 60)  # type: ignore[arg-type]  # fmt: skip
    chord.store.create(spec, 60)
    last = [run_member(chord, spec.panel_id, m) for m in ("m0", "m1", "m2")][-1]
    assert last.actions == (CallArbiter(),)  # the arbiter's task asks the check; there is no arbiter to call
    carry_out(chord.store, d, last)
    assert d.arbiters == [(spec.panel_id, "realtime")]
    turn = run_arbiter(chord, spec.panel_id)
    carry_out(chord.store, d, turn)
    assert chord.store.decided(spec.panel_id) == decided and chord.store.state(spec.panel_id)["answer"] == answer
    assert [m for _, m in caller.calls].count(check) == 1 and d.concluded == [spec.panel_id]
    recorded = chord.store.call(spec.panel_id, "equivalence")
    assert recorded is not None and recorded.equivalent is (decided == "quorum") and recorded.cost_usd > 0


def test_a_panel_where_every_member_failed_is_settled_as_failed(r: fakeredis.FakeRedis) -> None:
    chord, d = _chord(r, FakeCaller(dict.fromkeys(MODELS))), Recorder()
    _store_job(r, "j1")
    spec = _panel(chord.store)
    last = [run_member(chord, spec.panel_id, m) for m in ("m0", "m1", "m2")][-1]
    assert last.actions == (Conclude(settle="failed"),)
    carry_out(chord.store, d, last)
    assert chord.store.decided(spec.panel_id) == "failed"


def test_a_staged_panel_sends_the_next_member_only_on_disagreement(r: fakeredis.FakeRedis) -> None:
    caller = FakeCaller({MODELS[0]: "A", MODELS[1]: "B", MODELS[2]: "B"})
    chord, d = _chord(r, caller), Recorder()
    _store_job(r, "j1")
    spec = _panel(chord.store, dispatch_="staged")
    run_member(chord, spec.panel_id, "m0")
    turn = run_member(chord, spec.panel_id, "m1")
    assert turn.actions == (NextStage(2, 3),)
    carry_out(chord.store, d, turn)
    carry_out(chord.store, d, turn)
    assert d.sent == [(spec.panel_id, "m2", "realtime")]  # once per stage
    assert run_member(chord, spec.panel_id, "m2").actions == (Conclude(), Cancel())


def test_an_answer_after_the_decision_is_marked_late_and_the_receipt_is_rendered_again(r: fakeredis.FakeRedis) -> None:
    caller = FakeCaller({MODELS[0]: "B", MODELS[1]: "B", MODELS[2]: "B"})
    chord = _chord(r, caller)
    _store_job(r, "j1")
    spec = _panel(chord.store)
    run_member(chord, spec.panel_id, "m0")
    run_member(chord, spec.panel_id, "m1")
    rec = Call(member="m2", model=MODELS[2], provider="x", tier="economy", status="answered", answer_key="B",
               text="B", cost_usd=0.001)  # fmt: skip
    turn = cast_vote(chord.store, spec, rec)
    assert turn.status == "late" and turn.actions == (Conclude(), Cancel())
    stored = chord.store.call(spec.panel_id, "m2")
    assert stored is not None and stored.status == "late" and stored.cost_usd == 0.001


# --- the arbiter


def test_the_arbiter_verdict_decides_the_panel(r: fakeredis.FakeRedis) -> None:
    caller = FakeCaller({MODELS[0]: "A", MODELS[1]: "B", MODELS[2]: "C"})
    chord = _chord(r, caller)
    _store_job(r, "j1")
    spec = _panel(chord.store)
    labels = anonymise(spec.panel_id, ["m0", "m1", "m2"])  # the judge sees m1 under a label, by id only
    m1 = next(label for label, m in labels.items() if m == "m1")
    caller.answers[ARBITER] = orjson.dumps({"chosen_members": [m1], "disagreements": ["A or B or C"],
                                            "rationale": "B is right."}).decode()  # fmt: skip
    for m in ("m0", "m1", "m2"):
        run_member(chord, spec.panel_id, m)
    turn = run_arbiter(chord, spec.panel_id)
    assert (turn.status, turn.actions) == ("verdict", (Conclude(),))
    assert chord.store.decided(spec.panel_id) == "arbiter" and chord.store.state(spec.panel_id)["answer"] == "B"
    record = chord.store.call(spec.panel_id, "arbiter")
    assert record is not None and record.anonymised == labels and record.verdict is not None and record.verdict["chosen_members"] == ["m1"]
    assert run_arbiter(chord, spec.panel_id).status == "not needed"  # a redelivered arbiter pays nothing
    assert [m for _, m in caller.calls].count(ARBITER) == 1


def test_an_unusable_verdict_is_asked_once_more_then_the_majority_is_taken(r: fakeredis.FakeRedis) -> None:
    caller = FakeCaller({MODELS[0]: "A", MODELS[1]: "B", MODELS[2]: "C", ARBITER: "I think B."})
    chord = _chord(r, caller)
    _store_job(r, "j1")
    spec = _panel(chord.store)
    for m in ("m0", "m1", "m2"):
        run_member(chord, spec.panel_id, m)
    turn = run_arbiter(chord, spec.panel_id)
    assert turn.status == "fallback" and [m for _, m in caller.calls].count(ARBITER) == 2
    assert chord.store.decided(spec.panel_id) == "arbiter"


# --- a job's start and conclusion (the task layer's plain functions)


def _runtime(r: fakeredis.FakeRedis, caller: FakeCaller) -> SimpleNamespace:
    chord = _chord(r, caller)
    return SimpleNamespace(redis=r, store=chord.store, jobs=chord.jobs, policies=POLICIES, registry=REGISTRY,
                           settings=Settings(), chord=chord)  # fmt: skip


def test_start_job_plans_the_lane_and_sends_the_first_stage_once(r: fakeredis.FakeRedis) -> None:
    rt, d = _runtime(r, FakeCaller({})), Recorder()
    _store_job(r, "j1")
    assert start_job(rt, d, "j1") == "panel"  # type: ignore[arg-type]
    assert [m for _, m, _ in d.sent] == ["m0", "m1", "m2"]
    assert start_job(rt, d, "j1") == "already started"  # type: ignore[arg-type]
    assert len(d.sent) == 3  # a redelivered run sends nothing the first run recorded


def test_the_default_deadline_counts_from_submission_and_a_job_late_in_the_queue_fails_without_a_call(
        r: fakeredis.FakeRedis) -> None:  # fmt: skip
    rt, d = _runtime(r, FakeCaller({})), Recorder()
    limit = POLICIES.get("multiple_choice").deadline_s or POLICIES.file.defaults.deadline_s
    _store_job(r, "fresh")
    r.hset(keys.job("fresh"), "submitted_at", time.time() - 100)  # waited 100 s in the queue
    start_job(rt, d, "fresh")  # type: ignore[arg-type]
    spec = chord_spec(rt, "fresh")
    assert spec.deadline == pytest.approx(float(r.hget(keys.job("fresh"), "submitted_at")) + limit)
    _store_job(r, "late")
    r.hset(keys.job("late"), "submitted_at", time.time() - limit - 5)
    assert start_job(rt, d, "late") == "failed"  # type: ignore[arg-type]
    error = (r.hget(keys.job("late"), "error") or b"").decode()
    assert "deadline passed while the job was queued" in error and "deadline_s" in error
    assert [pid for pid, _, _ in d.sent] == [spec.panel_id] * 3  # the late job sent nothing


def test_a_cascade_stage_keeps_the_deadline_of_the_stage_before(r: fakeredis.FakeRedis) -> None:
    """An escalation is not a fresh deadline: stage 2 must decide by stage 1's."""
    caller = FakeCaller({"gpt-4o-mini": "A", "qwen2.5-32b-coder-instruct": "B"})  # no log-probability: unsure
    rt, d = _runtime(r, caller), Recorder()
    job = Job.model_validate({"id": "c1", "task_class": "multiple_choice", "prompt": "pick\nA) x\nB) y"})
    r.hset(keys.job("c1"), mapping={"spec": job.model_dump_json(), "status": "queued", "submitted_at": time.time() - 50})
    assert start_job(rt, d, "c1") == "cascade"  # type: ignore[arg-type]
    carry_out(rt.store, d, run_member(rt.chord, "c1.1", "m0"))
    conclude_panel(rt, d, "c1.1")  # type: ignore[arg-type]
    first, second = rt.store.spec("c1.1"), rt.store.spec("c1.2")
    assert first is not None and second is not None and second.members[0].model == "qwen2.5-32b-coder-instruct"
    assert second.deadline == first.deadline


def chord_spec(rt: SimpleNamespace, job_id: str) -> PanelRun:
    spec = rt.store.spec(f"{job_id}.1")
    assert spec is not None
    return spec


def test_a_job_of_an_unknown_task_class_fails_with_the_reason(r: fakeredis.FakeRedis) -> None:
    rt, d = _runtime(r, FakeCaller({})), Recorder()
    job = Job.model_validate({"id": "j2", "task_class": "no_such_class", "prompt": "x"})
    r.hset(keys.job("j2"), mapping={"spec": job.model_dump_json(), "status": "queued"})
    assert start_job(rt, d, "j2") == "failed"  # type: ignore[arg-type]
    assert r.hget(keys.job("j2"), "status") == b"failed" and d.sent == []


def test_conclude_panel_finalises_the_job_once_with_its_receipt(r: fakeredis.FakeRedis) -> None:
    caller = FakeCaller({MODELS[0]: "B", MODELS[1]: "B", MODELS[2]: "A"})
    rt, d = _runtime(r, caller), Recorder()
    _store_job(r, "j1")
    start_job(rt, d, "j1")  # type: ignore[arg-type]
    pid = "j1.1"
    run_member(rt.chord, pid, "m0")
    carry_out(rt.store, d, run_member(rt.chord, pid, "m1"))
    assert d.concluded == [pid]
    conclude_panel(rt, d, pid)  # type: ignore[arg-type]
    conclude_panel(rt, d, pid)  # type: ignore[arg-type]  # a repeat only re-renders
    result = orjson.loads(r.hget(keys.job("j1"), "result") or b"{}")
    assert result["status"] == "decided" and result["answer"] == "B"
    assert result["receipt"]["decision"] == "quorum" and result["receipt"]["early_exit"] is True
    assert r.lrange(keys.done_channel("j1"), 0, -1) == [b"decided"]  # the caller is told once
    assert r.xlen(keys.LEDGER_STREAM) == 1
    [(first_id, _)] = r.xrange(keys.LEDGER_STREAM)
    assert r.hget(keys.job("j1"), "ledger_id") == first_id  # written in the finalise MULTI (ledger_entry.lua)
    spec = rt.store.spec(pid)
    assert spec is not None
    late = call_record(REGISTRY, spec, spec.member("m2"), "answered", answer_key="A", text="A", cost_usd=0.002)
    rt.store.put_call(pid, late)  # m2 answers after the decision: its vote marks it late
    assert cast_vote(rt.store, spec, late).status == "late"
    conclude_panel(rt, d, pid)  # type: ignore[arg-type]  # the late call's charge: rendered again
    [(entry_id, entry)] = r.xrange(keys.LEDGER_STREAM)  # still one entry per job: the re-render replaced it
    assert entry_id != first_id and r.hget(keys.job("j1"), "ledger_id") == entry_id
    result = orjson.loads(r.hget(keys.job("j1"), "result") or b"{}")
    assert orjson.loads(entry[b"receipt"]) == result["receipt"]
    assert [c["status"] for c in result["receipt"]["calls"]].count("late") == 1


def test_a_quorums_conclusion_takes_the_cancel_with_its_reads_and_lets_the_lease_go_with_its_finalise(
        r: fakeredis.FakeRedis) -> None:  # fmt: skip
    rt, d = _runtime(r, FakeCaller({MODELS[0]: "B", MODELS[1]: "B", MODELS[2]: "A"})), Recorder()
    _store_job(r, "j1")
    start_job(rt, d, "j1")  # type: ignore[arg-type]
    pid = "j1.1"
    run_member(rt.chord, pid, "m0")
    assert run_member(rt.chord, pid, "m1").actions == (Conclude(), Cancel())
    for script in jobs._lease_scripts(rt):  # type: ignore[arg-type]  # loaded, as after a process's first conclusion
        r.script_load(script.script)
    pipes: list[list[str]] = []
    execute = type(r.pipeline()).execute

    def seen(pipe: Any, raise_on_error: bool = True) -> Any:
        pipes.append([str(c[0][0]) for c in pipe.command_stack])
        return execute(pipe, raise_on_error=raise_on_error)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(type(r.pipeline()), "execute", seen)
        pending = conclude_panel(rt, d, pid, cancel=True)  # type: ignore[arg-type]
    assert pending == [f"task-{pid}-m2"]  # the member sent and not recorded: revoked by the caller
    assert len(pipes) == 2  # the lease, the cancel's guard and the reads; the finalise and the release
    assert pipes[0][:2] == ["EVALSHA", "HSETNX"] and pipes[1][-1] == "EVALSHA"
    assert r.hget(keys.job("j1"), "status") == b"decided"
    assert not r.exists(keys.concluding(pid)) and r.hexists(keys.panel(pid), "once:concluded")
    assert conclude_panel(rt, d, pid, cancel=True) == []  # type: ignore[arg-type]  # cancelled once
    assert rt.store.cancel(rt.store.spec(pid))[0] is False  # type: ignore[arg-type]


def test_a_member_already_calling_is_stopped_by_the_decided_message_not_revoked(r: fakeredis.FakeRedis) -> None:
    rt, d = _runtime(r, FakeCaller({MODELS[0]: "B", MODELS[1]: "B", MODELS[2]: "A"})), Recorder()
    _store_job(r, "j1")
    start_job(rt, d, "j1")  # type: ignore[arg-type]
    pid = "j1.1"
    attempts.begin(r, pid, "m2", MODELS[2], 40, False)  # m2's provider attempt is in flight
    run_member(rt.chord, pid, "m0")
    run_member(rt.chord, pid, "m1")
    assert conclude_panel(rt, d, pid, cancel=True) == []  # type: ignore[arg-type]  # nothing queued to revoke


def test_a_call_record_round_trips_and_keeps_fields_a_newer_version_wrote() -> None:
    raw = orjson.dumps({"member": "m0", "model": "x", "provider": "p", "tier": "economy", "status": "answered",
                        "answer_key": "B", "cost_usd": 0.5, "from_the_future": 1})  # fmt: skip
    rec = Call.from_json(raw)
    assert (rec.status, rec.answer_key, rec.cost_usd, rec.tokens_in) == ("answered", "B", 0.5, 0)
    assert orjson.loads(rec.to_json())["from_the_future"] == 1
    assert "text" not in orjson.loads(rec.to_json())  # None fields are not stored


def test_a_member_cut_off_in_flight_asks_for_the_conclusion_before_the_job_is_finalised(r: fakeredis.FakeRedis) -> None:
    """Its charge must reach the receipt whether the conclusion has finished, is reading the
    panel, or has not begun: asking only once the job was finalised lost a record that landed
    between the conclusion's read and its finalise."""
    from workers.errors import Cancelled

    class CutOff(FakeCaller):
        def __call__(self, panel_id: str | None, model: str, *a: Any, **k: Any) -> CallOutcome:
            c = Cancelled(panel_id or "", sent=True)
            c.tokens_in = 21
            raise c

    chord = _chord(r, CutOff({m: "B" for m in MODELS}))
    _store_job(r, "j1")
    spec = _panel(chord.store)
    assert not r.hexists(keys.job("j1"), "finalised")  # the conclusion has not finalised the job
    turn = run_member(chord, spec.panel_id, "m2")  # take_lease.lua not loaded yet: it asks for the conclusion
    assert turn.status == "cancelled" and turn.actions == (Conclude(),)
    rec = chord.store.call(spec.panel_id, "m2")
    assert rec is not None and (rec.status, rec.tokens_in) == ("cancelled", 21)
    again = run_member(chord, spec.panel_id, "m2")  # a redelivery writes nothing and asks for nothing
    assert again.actions == Nothing


def test_a_cut_off_member_takes_the_conclusion_lease_with_its_record(r: fakeredis.FakeRedis) -> None:
    """One round trip for the record and the lease: no conclusion running, this member's to run
    (as the lease's holder); one running, its holder is asked to re-render, and nothing else."""
    from workers.errors import Cancelled

    class CutOff(FakeCaller):
        def __call__(self, panel_id: str | None, model: str, *a: Any, **k: Any) -> CallOutcome:
            raise Cancelled(panel_id or "", sent=True)

    r.script_load(files("workers").joinpath("take_lease.lua").read_text())  # loaded, as after a first conclusion
    chord = _chord(r, CutOff({m: "B" for m in MODELS}))
    _store_job(r, "j1")
    spec = _panel(chord.store)
    turn = run_member(chord, spec.panel_id, "m2")
    assert turn.actions == (Conclude(lease="taken"),) and r.exists(keys.concluding(spec.panel_id))
    [conclude] = turn.actions
    assert isinstance(conclude, Conclude) and conclude.read is not None  # read after the lease, with it
    assert "m2" in conclude.read[1].calls  # the snapshot has the record just written
    # while that conclusion holds the lease, another member's cut-off lands: its holder is asked
    late = call_record(REGISTRY, spec, spec.member("m1"), "cancelled", tokens_in=9)
    assert chord.store.put_cut_off(spec.panel_id, "j1", late) == (True, "held", None)
    assert r.hexists(keys.panel(spec.panel_id), "rerender")  # the holder re-renders before it lets go
    assert chord.store.put_cut_off(spec.panel_id, "j1", late) == (False, "held", None)  # written once
