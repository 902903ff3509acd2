"""The chord as a specification: a member's turn, the vote's actions and the arbiter, driven
directly on fakeredis with a fake caller and a recording dispatcher (as dramatiq tests actors on its
stub broker). The real vote.lua/decide.lua run; no Celery, no HTTP. A job's start and conclusion:
test_jobs.py."""

from __future__ import annotations

import time
from typing import Any

import fakeredis
import orjson
import pytest

from producer import keys
from tests.panel.fakes import (
    ARBITER,
    COST_USD,
    MODELS,
    REGISTRY,
    FakeCaller,
    Recorder,
    make_chord,
    make_panel,
    store_job,
)
from workers.budget import Budget
from workers.panel.act import carry_out, dispatch
from workers.panel.arbiter import anonymise, run_arbiter
from workers.panel.chord import cast_vote, run_member
from workers.panel.decision import CallArbiter, Cancel, Conclude, NextStage, Nothing, after_vote
from workers.panel.record import Call
from workers.panel.route import route
from workers.panel.run import Member, PanelRun, VoteOutcome
from workers.panel.state import PanelStore


@pytest.fixture
def r() -> fakeredis.FakeRedis:
    return fakeredis.FakeRedis()


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
    assert route(make_panel(store, "far", batch=True, deadline_in=3600), margin_s=120) == "batch"
    assert route(make_panel(store, "near", batch=True, deadline_in=60), margin_s=120) == "batch_realtime"
    assert route(make_panel(store, "rt", batch=False, deadline_in=60), margin_s=120) == "realtime"


# --- a member's turn on fakeredis


def test_quorum_of_two_cancels_third(r: fakeredis.FakeRedis) -> None:
    caller = FakeCaller({MODELS[0]: "ANSWER: B", MODELS[1]: "B", MODELS[2]: "A"})
    chord, d = make_chord(r, caller), Recorder()
    store_job(r, "j1")
    spec = make_panel(chord.store)
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
    chord = make_chord(r, FakeCaller({MODELS[0]: "B", MODELS[1]: "B", MODELS[2]: "B"}, budget=budget))
    job = store_job(r, "j1")
    spec = make_panel(chord.store)
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
    chord = make_chord(r, FakeCaller({MODELS[0]: "B", MODELS[1]: "B", MODELS[2]: "B"}, budget=budget))
    job = store_job(r, "j1")
    spec = make_panel(chord.store)

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
    chord = make_chord(r, caller)
    store_job(r, "j1")
    spec = make_panel(chord.store)
    assert run_member(chord, spec.panel_id, "m0").status == "answered"
    again = run_member(chord, spec.panel_id, "m0")
    assert again.status == "reused" and again.actions == Nothing
    assert len(caller.calls) == 1 and chord.store.tally(spec.panel_id) == {"B": 1}


def test_disagreement_calls_the_arbiter_once(r: fakeredis.FakeRedis) -> None:
    caller = FakeCaller({MODELS[0]: "A", MODELS[1]: "B", MODELS[2]: "C"})
    chord, d = make_chord(r, caller), Recorder()
    store_job(r, "j1")
    spec = make_panel(chord.store)
    turns = [run_member(chord, spec.panel_id, m) for m in ("m0", "m1", "m2")]
    assert [t.actions for t in turns] == [Nothing, Nothing, (CallArbiter(),)]
    carry_out(chord.store, d, turns[-1])
    carry_out(chord.store, d, turns[-1])  # a redelivered last member repeats its actions
    assert d.arbiters == [(spec.panel_id, "realtime")]


def test_an_exhausted_panel_with_one_answer_is_settled_without_an_arbiter(r: fakeredis.FakeRedis) -> None:
    caller = FakeCaller({MODELS[0]: None, MODELS[1]: "B", MODELS[2]: None})
    chord, d = make_chord(r, caller), Recorder()
    store_job(r, "j1")
    spec = make_panel(chord.store)
    turns = [run_member(chord, spec.panel_id, m) for m in ("m0", "m1", "m2")]
    assert [t.status for t in turns] == ["failed", "answered", "failed"]
    assert turns[-1].actions == (Conclude(settle="quorum"),)
    carry_out(chord.store, d, turns[-1])
    assert chord.store.decided(spec.panel_id) == "quorum" and d.concluded == [spec.panel_id] and d.arbiters == []


def test_a_judgeless_cascade_stage_that_splits_settles_as_split_without_an_arbiter(r: fakeredis.FakeRedis) -> None:
    caller = FakeCaller({MODELS[0]: "A", MODELS[1]: "B", MODELS[2]: "B"})
    chord, d = make_chord(r, caller), Recorder()
    store_job(r, "j1")
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
    chord, d = make_chord(r, caller), Recorder()
    store_job(r, "j1")
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
    chord, d = make_chord(r, FakeCaller(dict.fromkeys(MODELS))), Recorder()
    store_job(r, "j1")
    spec = make_panel(chord.store)
    last = [run_member(chord, spec.panel_id, m) for m in ("m0", "m1", "m2")][-1]
    assert last.actions == (Conclude(settle="failed"),)
    carry_out(chord.store, d, last)
    assert chord.store.decided(spec.panel_id) == "failed"


def test_a_staged_panel_sends_the_next_member_only_on_disagreement(r: fakeredis.FakeRedis) -> None:
    caller = FakeCaller({MODELS[0]: "A", MODELS[1]: "B", MODELS[2]: "B"})
    chord, d = make_chord(r, caller), Recorder()
    store_job(r, "j1")
    spec = make_panel(chord.store, dispatch_="staged")
    run_member(chord, spec.panel_id, "m0")
    turn = run_member(chord, spec.panel_id, "m1")
    assert turn.actions == (NextStage(2, 3),)
    carry_out(chord.store, d, turn)
    carry_out(chord.store, d, turn)
    assert d.sent == [(spec.panel_id, "m2", "realtime")]  # once per stage
    assert run_member(chord, spec.panel_id, "m2").actions == (Conclude(), Cancel())


def test_an_answer_after_the_decision_is_marked_late_and_the_receipt_is_rendered_again(r: fakeredis.FakeRedis) -> None:
    caller = FakeCaller({MODELS[0]: "B", MODELS[1]: "B", MODELS[2]: "B"})
    chord = make_chord(r, caller)
    store_job(r, "j1")
    spec = make_panel(chord.store)
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
    chord = make_chord(r, caller)
    store_job(r, "j1")
    spec = make_panel(chord.store)
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
    chord = make_chord(r, caller)
    store_job(r, "j1")
    spec = make_panel(chord.store)
    for m in ("m0", "m1", "m2"):
        run_member(chord, spec.panel_id, m)
    turn = run_arbiter(chord, spec.panel_id)
    assert turn.status == "fallback" and [m for _, m in caller.calls].count(ARBITER) == 2
    assert chord.store.decided(spec.panel_id) == "arbiter"

