"""The acceptance checks and stage selection as pure functions: each check accepts at and above
its threshold, escalates below it, and says why in the receipt's words."""

from __future__ import annotations

import pytest

from workers import cascade
from workers.cascade import Evidence
from workers.policy import CascadeSpec, StageSpec


def single(check: str, bound: float | None = None) -> StageSpec:
    accept = {"check": check} | ({"min": bound} if bound is not None else {})
    return StageSpec.model_validate({"model": "llama3.1-8b", "accept": accept})


PANEL = StageSpec.model_validate({"panel": {"members": ["a", "b", "c"], "quorum": 2, "agreement": {"rule": "choice"}},
                                  "accept": {"check": "agreement"}})  # fmt: skip


@pytest.mark.parametrize(("logprob", "accepted", "reason"), [
    (-0.1, True, None), (-0.35, True, None),
    (-0.82, False, "cascade:stage1:logprob=-0.82<-0.35"),
    (None, False, "cascade:stage1:logprob=null"),  # a server without log-probabilities: escalate
])  # fmt: skip
def test_logprob_accepts_at_or_above_min(logprob: float | None, accepted: bool, reason: str | None) -> None:
    a = cascade.acceptance(single("logprob", -0.35), 1, False, Evidence(text="B", logprob=logprob))
    assert (a.check, a.value, a.threshold, a.accepted) == ("logprob", logprob, -0.35, accepted)
    assert cascade.goes_on(a) is (not accepted)
    if reason:
        assert a.reason() == reason


@pytest.mark.parametrize(("text", "value"), [
    ("B\nconfidence: 0.9", 0.9), ("Confidence = 85%", 0.85), ("confidence: 40", 0.4), ("B", None), ("confidence: 250", None),
])  # fmt: skip
def test_self_reported_reads_fractions_and_percentages(text: str, value: float | None) -> None:
    assert cascade.self_reported(text) == (pytest.approx(value) if value is not None else None)
    a = cascade.acceptance(single("self_reported", 0.8), 2, False, Evidence(text=text))
    assert a.accepted is (value is not None and value >= 0.8)


def test_agreement_accepts_a_quorum_and_escalates_a_split() -> None:
    ok = cascade.acceptance(PANEL, 2, False, Evidence(text="B", outcome="quorum", agreeing=2, quorum=2))
    assert (ok.accepted, ok.value, ok.threshold) == (True, 2.0, 2.0)
    split = cascade.acceptance(PANEL, 2, False, Evidence(text="B", outcome="split", agreeing=1, quorum=2))
    assert not split.accepted and split.reason() == "cascade:stage2:agreement=split" and cascade.goes_on(split)
    late = cascade.acceptance(PANEL, 2, False, Evidence(text="B", outcome="sweep", agreeing=1, quorum=2))
    assert not late.accepted and late.reason() == "cascade:stage2:agreement=sweep"
    # the other members failed: settled on the one answer left, which nobody agreed with
    lone = cascade.acceptance(PANEL, 1, False, Evidence(text="B", outcome="quorum", agreeing=1, quorum=2))
    assert not lone.accepted and lone.reason() == "cascade:stage1:agreement=1<2" and cascade.goes_on(lone)
    joined = cascade.acceptance(PANEL, 1, False, Evidence(text="B", outcome="quorum", agreeing=1, quorum=2, equivalent=True))
    assert joined.accepted  # the equivalence check joined a near miss into the quorum


def test_schema_check_validates_the_answer_against_the_jobs_schema() -> None:
    schema = {"type": "object", "required": ["total"], "properties": {"total": {"type": "number"}}}
    stage = single("schema")
    assert cascade.acceptance(stage, 1, False, Evidence(text='{"total": 42}', response_schema=schema)).accepted
    bad = cascade.acceptance(stage, 1, False, Evidence(text='{"sum": 42}', response_schema=schema))
    assert not bad.accepted and bad.reason() == "cascade:stage1:schema=invalid"
    none = cascade.acceptance(stage, 1, False, Evidence(text='{"total": 42}'))
    assert not none.accepted and none.value is None


def test_the_last_stage_concludes_whatever_its_check_says_and_a_failed_stage_escalates() -> None:
    last = cascade.acceptance(single("logprob", -0.35), 3, True, Evidence(text="B", logprob=-2.0))
    assert not last.accepted and not cascade.goes_on(last)
    always = cascade.acceptance(StageSpec(model="x"), 3, True, Evidence(text="B"))
    assert always.check == "always" and always.accepted
    failed = cascade.acceptance(single("logprob", -0.35), 1, False, Evidence(text=None))
    assert cascade.goes_on(failed) and failed.reason() == "cascade:stage1:logprob=failed"


def test_stage_selection_is_one_based_and_knows_the_last() -> None:
    spec = CascadeSpec(stages=[single("logprob", -0.3), PANEL, StageSpec(model="z")])
    assert cascade.stage(spec, 2) is spec.stages[1]
    assert [cascade.is_last(spec, n) for n in (1, 2, 3)] == [False, False, True]
