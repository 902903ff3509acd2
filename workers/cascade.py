"""Cascade stages as pure decisions: which stage comes next, and whether a decided stage's answer
is accepted (the job concludes) or escalated (the next stage runs). No Redis here; the fleet side
(`workers/cascade_lane.py`) gathers the evidence and acts on the verdict.

    a = acceptance(stage, n=1, last=False, ev=Evidence(text="B", logprob=-0.82, outcome="quorum"))
    a.accepted, a.reason()       # False, "cascade:stage1:logprob=-0.82<-0.35"

Checks (thresholds range-checked at load, `workers/policy.py`):
  logprob        accept when the answer's sequence log-probability >= min (None: not accepted)
  self_reported  accept when the model's own "confidence: 0.x" (or 0-100%) >= min
  agreement      accept when the panel reached its quorum on its own (no arbiter, no split, not
                 one answer left by members that failed)
  agrees_previous  accept when the stage's answer is the stage before's (the same vote key by
                 the class's agreement rule): an unsure cheap answer confirmed by one more model
  schema         accept when the answer validates against the job's response_schema
  always         accept (the last stage's default)
The last stage concludes the job whatever its check says; the receipt still shows the check.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any

import jsonschema

from workers.panel.agreement import parse_json_object
from workers.policy import CascadeSpec, CheckName, StageSpec

_CONFIDENCE = re.compile(r"(?i)confidence\s*[:=]\s*(\d+(?:\.\d+)?)\s*(%?)")


@dataclass(frozen=True)
class Evidence:
    """What a decided stage shows: its answer, that answer's log-probability, and how it decided."""

    text: str | None  # the decided answer (None: every call failed)
    logprob: float | None = None  # the decided answer's sequence log-probability, if returned
    outcome: str = "quorum"  # quorum | split | arbiter | sweep | failed (the panel's decision)
    agreeing: int = 1  # members that voted for the decided answer
    quorum: int = 1
    response_schema: dict[str, Any] | None = None
    key: str | None = None  # the decided answer's vote key
    previous_key: str | None = None  # the stage before's decided answer's vote key (agrees_previous)
    equivalent: bool = False  # the equivalence check joined two near-miss answers into the quorum


@dataclass(frozen=True)
class Acceptance:
    stage: int  # 1-based
    check: CheckName
    value: float | None  # the measured number; None when there was no signal
    threshold: float | None
    accepted: bool
    last: bool
    detail: str = ""  # a value in words where a number says little (split, invalid, failed)

    def reason(self) -> str:
        """The escalation reason, e.g. `cascade:stage1:logprob=-0.82<-0.35`."""
        head = f"cascade:stage{self.stage}:{self.check}"
        if self.detail:
            return f"{head}={self.detail}"
        shown = "null" if self.value is None else f"{self.value:.4g}"
        return f"{head}={shown}" + ("" if self.threshold is None or self.value is None else f"<{self.threshold:g}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def stage(cascade: CascadeSpec, n: int) -> StageSpec:
    """Stage `n` (1-based) of the cascade."""
    return cascade.stages[n - 1]


def is_last(cascade: CascadeSpec, n: int) -> bool:
    return n >= len(cascade.stages)


def self_reported(text: str) -> float | None:
    """The model's own confidence in [0, 1] ("confidence: 0.8", "Confidence = 80%"), or None."""
    m = _CONFIDENCE.search(text)
    if m is None:
        return None
    value = float(m.group(1))
    value = value / 100 if m.group(2) or value > 1 else value
    return value if 0 <= value <= 1 else None


def schema_valid(text: str, schema: dict[str, Any]) -> bool:
    try:
        jsonschema.validate(parse_json_object(text), schema)
    except jsonschema.ValidationError:
        return False
    return True


def acceptance(spec: StageSpec, n: int, last: bool, ev: Evidence) -> Acceptance:
    """Accept or escalate stage `n`'s decided answer by its check."""
    check = spec.check
    bound = spec.accept.min if spec.accept else None
    if ev.text is None:  # every call failed: nothing to accept
        return Acceptance(n, check, None, bound, False, last, "failed")
    if check == "always":
        return Acceptance(n, check, None, None, True, last)
    if check == "logprob" or check == "self_reported":
        assert bound is not None  # load refuses these checks without `min`
        value = ev.logprob if check == "logprob" else self_reported(ev.text)
        return Acceptance(n, check, value, bound, value is not None and value >= bound, last)
    if check == "agreement":
        # a quorum of votes: a panel left with one answer (its other members failed) is settled as
        # `quorum` with nothing to arbitrate, yet nobody agreed with it
        agreed = ev.outcome == "quorum" and (ev.agreeing >= ev.quorum or ev.equivalent)
        detail = "" if agreed or ev.outcome == "quorum" else ("split" if ev.outcome in ("split", "arbiter") else ev.outcome)
        return Acceptance(n, check, float(ev.agreeing), float(ev.quorum), agreed, last, detail)
    if check == "agrees_previous":
        same = ev.key is not None and ev.key == ev.previous_key
        return Acceptance(n, check, 1.0 if same else 0.0, None, same, last, "" if same else "differs")
    # schema
    if ev.response_schema is None:
        return Acceptance(n, check, None, None, False, last, "no_response_schema")
    valid = schema_valid(ev.text, ev.response_schema)
    return Acceptance(n, check, 1.0 if valid else 0.0, None, valid, last, "" if valid else "invalid")


def goes_on(a: Acceptance) -> bool:
    """Whether the job moves to the next stage: a non-last stage that did not accept."""
    return not a.accepted and not a.last
