"""A job's start and conclusion, the task layer's plain functions (`start_job`, `conclude_panel`),
driven on fakeredis with the chord's test doubles (tests/panel/fakes.py)."""

from __future__ import annotations

import time
from importlib.resources import files
from types import SimpleNamespace
from typing import Any

import fakeredis
import orjson
import pytest

from producer import keys
from producer.contract import Job
from tests.panel.fakes import (
    MODELS,
    POLICIES,
    REGISTRY,
    FakeCaller,
    Recorder,
    make_chord,
    make_panel,
    make_runtime,
    store_job,
)
from workers import jobs
from workers.jobs import conclude_panel, start_job
from workers.panel import attempts
from workers.panel.act import carry_out
from workers.panel.calls import CallOutcome
from workers.panel.chord import call_record, cast_vote, run_member
from workers.panel.decision import Cancel, Conclude, Nothing
from workers.panel.record import Call
from workers.panel.run import PanelRun


@pytest.fixture
def r() -> fakeredis.FakeRedis:
    return fakeredis.FakeRedis()


def test_start_job_plans_the_lane_and_sends_the_first_stage_once(r: fakeredis.FakeRedis) -> None:
    rt, d = make_runtime(r, FakeCaller({})), Recorder()
    store_job(r, "j1")
    assert start_job(rt, d, "j1") == "panel"  # type: ignore[arg-type]
    assert [m for _, m, _ in d.sent] == ["m0", "m1", "m2"]
    assert start_job(rt, d, "j1") == "already started"  # type: ignore[arg-type]
    assert len(d.sent) == 3  # a redelivered run sends nothing the first run recorded


def test_the_default_deadline_counts_from_submission_and_a_job_late_in_the_queue_fails_without_a_call(
        r: fakeredis.FakeRedis) -> None:  # fmt: skip
    rt, d = make_runtime(r, FakeCaller({})), Recorder()
    limit = POLICIES.get("multiple_choice").deadline_s or POLICIES.file.defaults.deadline_s
    store_job(r, "fresh")
    r.hset(keys.job("fresh"), "submitted_at", time.time() - 100)  # waited 100 s in the queue
    start_job(rt, d, "fresh")  # type: ignore[arg-type]
    spec = chord_spec(rt, "fresh")
    assert spec.deadline == pytest.approx(float(r.hget(keys.job("fresh"), "submitted_at")) + limit)
    store_job(r, "late")
    r.hset(keys.job("late"), "submitted_at", time.time() - limit - 5)
    assert start_job(rt, d, "late") == "failed"  # type: ignore[arg-type]
    error = (r.hget(keys.job("late"), "error") or b"").decode()
    assert "deadline passed while the job was queued" in error and "deadline_s" in error
    assert [pid for pid, _, _ in d.sent] == [spec.panel_id] * 3  # the late job sent nothing


def test_a_cascade_stage_keeps_the_deadline_of_the_stage_before(r: fakeredis.FakeRedis) -> None:
    """An escalation is not a fresh deadline: stage 2 must decide by stage 1's."""
    caller = FakeCaller({"gpt-4o-mini": "A", "qwen2.5-32b-coder-instruct": "B"})  # no log-probability: unsure
    rt, d = make_runtime(r, caller), Recorder()
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
    rt, d = make_runtime(r, FakeCaller({})), Recorder()
    job = Job.model_validate({"id": "j2", "task_class": "no_such_class", "prompt": "x"})
    r.hset(keys.job("j2"), mapping={"spec": job.model_dump_json(), "status": "queued"})
    assert start_job(rt, d, "j2") == "failed"  # type: ignore[arg-type]
    assert r.hget(keys.job("j2"), "status") == b"failed" and d.sent == []


def test_conclude_panel_finalises_the_job_once_with_its_receipt(r: fakeredis.FakeRedis) -> None:
    caller = FakeCaller({MODELS[0]: "B", MODELS[1]: "B", MODELS[2]: "A"})
    rt, d = make_runtime(r, caller), Recorder()
    store_job(r, "j1")
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
    rt, d = make_runtime(r, FakeCaller({MODELS[0]: "B", MODELS[1]: "B", MODELS[2]: "A"})), Recorder()
    store_job(r, "j1")
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
    rt, d = make_runtime(r, FakeCaller({MODELS[0]: "B", MODELS[1]: "B", MODELS[2]: "A"})), Recorder()
    store_job(r, "j1")
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


def test_a_stored_call_and_panel_are_the_json_dataclasses_asdict_gave() -> None:
    """Written without asdict's deep copy (every member call writes a record), byte for byte the same."""
    from dataclasses import asdict

    rec = Call(member="m0", model="x", provider="p", tier="economy", status="answered", text="B",
               verdict={"chosen": ["m0"], "why": {"n": 1}}, compared=["m0", "m1"], extra={"newer": [1], "gone": None})  # fmt: skip
    old = asdict(rec)
    old.update(old.pop("extra"))
    assert rec.to_json() == orjson.dumps({k: v for k, v in old.items() if v is not None})
    spec = PanelRun(panel_id="j1.1", job_id="j1", stage="panel", attempt=1, members=[], quorum=2, dispatch="parallel",
                    agreement={"rule": "choice"}, arbiter="gpt-4o", rubric=["r"], deadline=1.5, triggers=["t"])  # fmt: skip
    spec = PanelRun.from_json(orjson.dumps({**orjson.loads(spec.to_json()),
                                            "members": [{"member": "m0", "model": "x", "tier": "economy"}]}))  # fmt: skip
    spec.agreement_spec()  # a cached property computed meanwhile is not stored
    assert spec.to_json() == orjson.dumps(asdict(spec))


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

    chord = make_chord(r, CutOff({m: "B" for m in MODELS}))
    store_job(r, "j1")
    spec = make_panel(chord.store)
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
    chord = make_chord(r, CutOff({m: "B" for m in MODELS}))
    store_job(r, "j1")
    spec = make_panel(chord.store)
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


def test_a_finalise_renders_the_receipt_once_and_serialises_the_result_once(r: fakeredis.FakeRedis,
                                                                          caplog: pytest.LogCaptureFixture) -> None:  # fmt: skip
    """A quorum's decision and a late member's re-render are one render and one serialisation
    each (a re-render compares the bytes it writes with the prior's, and reads the decision's
    latency from the prior without validating it again), and only the decision logs at INFO."""
    from producer.contract import Result
    from workers import ledger

    rt, d = make_runtime(r, FakeCaller({MODELS[0]: "B", MODELS[1]: "B", MODELS[2]: "A"})), Recorder()
    store_job(r, "j1")
    start_job(rt, d, "j1")  # type: ignore[arg-type]
    pid = "j1.1"
    run_member(rt.chord, pid, "m0")
    carry_out(rt.store, d, run_member(rt.chord, pid, "m1"))
    counts = {"render": 0, "dump": 0, "validate": 0}
    render, dump, validate = jobs.render_receipt, Result.model_dump_json, Result.model_validate_json

    def counted(name: str, f: Any) -> Any:
        def call(*a: Any, **k: Any) -> Any:
            counts[name] += 1
            return f(*a, **k)

        return call

    with pytest.MonkeyPatch.context() as mp, caplog.at_level("DEBUG", logger="panel.jobs"):
        mp.setattr(jobs, "render_receipt", counted("render", render))
        mp.setattr(Result, "model_dump_json", counted("dump", dump))
        mp.setattr(Result, "model_validate_json", classmethod(counted("validate", validate.__func__)))  # type: ignore[attr-defined]
        conclude_panel(rt, d, pid)  # type: ignore[arg-type]
        decided_ms = orjson.loads(r.hget(keys.job("j1"), "result") or b"{}")["receipt"]["latency_ms"]
        assert counts == {"render": 1, "dump": 1, "validate": 0}
        spec = rt.store.spec(pid)
        assert spec is not None
        late = call_record(REGISTRY, spec, spec.member("m2"), "answered", answer_key="A", text="A", cost_usd=0.002)
        rt.store.put_call(pid, late)
        cast_vote(rt.store, spec, late)
        time.sleep(0.01)  # a re-render later than the decision keeps the decision's latency
        conclude_panel(rt, d, pid)  # type: ignore[arg-type]  # the late call's charge: rendered again
        assert counts == {"render": 2, "dump": 2, "validate": 0}
    result = orjson.loads(r.hget(keys.job("j1"), "result") or b"{}")
    assert result["receipt"]["latency_ms"] == decided_ms and result["receipt"]["total_cost_usd"] >= 0.002
    [(_, entry)] = r.xrange(keys.LEDGER_STREAM)
    assert orjson.loads(entry[b"receipt"]) == result["receipt"]
    decided = [rec for rec in caplog.records if rec.name == "panel.jobs" and "via quorum" in rec.getMessage()]
    assert [rec.levelname for rec in decided] == ["INFO", "DEBUG"]  # the decision once at INFO; the re-render at DEBUG
    assert ledger.prior_latency_ms(r.hget(keys.job("j1"), "result") or b"") == decided_ms
