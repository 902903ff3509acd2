"""A panel as planned (`PanelRun`, immutable once stored) and what is recorded about it
(`PanelSnapshot`, the outcome of a vote): the values the store, the decision core and the
conclusion pass between them. Redis access lives in `state.py`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from functools import cached_property
from typing import Any, Literal

import orjson

from producer.contract import Job
from workers.panel.attempts import Attempt
from workers.panel.jobview import JobView
from workers.panel.record import Call
from workers.policy import AgreementSpec

VoteStatus = Literal["quorum", "exhausted", "next", "pending", "decided"]
Stage = Literal["single", "panel"]


@dataclass(frozen=True)
class Member:
    member: str  # "m0", "m1", ...
    model: str
    tier: str


@dataclass(frozen=True)
class PanelRun:
    """One panel of a job, as planned: immutable once stored (its progress lives beside it in
    the panel hash), so every process reads it from Redis once. Not `policy.PanelSpec`, which
    is the policy's shape of a panel."""

    panel_id: str
    job_id: str
    stage: Stage
    attempt: int
    members: list[Member]
    quorum: int
    dispatch: Literal["parallel", "staged"]
    agreement: dict[str, Any]
    arbiter: str
    rubric: list[str]
    deadline: float  # epoch seconds
    batch: bool = False
    triggers: list[str] = field(default_factory=list)
    logprobs: bool = False  # members ask for token log-probabilities (a cascade stage's logprob check)

    @property
    def first_stage_size(self) -> int:
        return len(self.members) if self.dispatch == "parallel" else self.quorum

    def member(self, member_id: str) -> Member:
        return next(m for m in self.members if m.member == member_id)

    @cached_property
    def agreement_rule(self) -> AgreementSpec:
        """The agreement spec, validated once per process (the spec is immutable and cached)."""
        return AgreementSpec.model_validate(self.agreement)

    def agreement_spec(self) -> AgreementSpec:
        return self.agreement_rule

    def to_json(self) -> bytes:
        # not `asdict` (a deep copy first); orjson writes the members, dataclasses, as asdict would
        return orjson.dumps({f.name: getattr(self, f.name) for f in fields(self)})

    @classmethod
    def from_json(cls, raw: bytes | str) -> PanelRun:
        d = orjson.loads(raw)
        d["members"] = [Member(**m) for m in d["members"]]
        return cls(**d)


@dataclass(frozen=True)
class VoteOutcome:
    status: VoteStatus
    answer: str
    duplicate: bool
    outcome: str = ""  # for 'decided': what decided it
    send_from: int = 0  # for 'next': members[send_from:send_to] are owed
    send_to: int = 0
    distinct: int = 0  # for 'exhausted' (and 'decided'): distinct usable answers in the tally


@dataclass(frozen=True)
class PanelSnapshot:
    """Everything recorded about a panel, read in one round trip (for its conclusion and receipt;
    its decided answer as text: `final_text`)."""

    state: dict[str, str]  # the panel hash without its spec
    calls: dict[str, Call]  # member (or "arbiter") -> its call
    votes: dict[str, str]  # member -> answer key ('' = no usable answer)
    tally: dict[str, int]  # answer key -> votes
    attempts: dict[str, list[Attempt]] = field(default_factory=dict)  # member -> its provider attempts (attempts.py)


Read = tuple[JobView, PanelSnapshot]  # what a conclusion reads: its job's view and the panel's snapshot


def json_mode(spec: PanelRun, job: Job) -> bool:
    """A member of this panel asks its model for JSON (a response schema, or a JSON agreement rule)."""
    return job.response_schema is not None or spec.agreement.get("rule") == "json"


def final_text(snap: PanelSnapshot) -> str | None:
    """The decided answer as text: the arbiter's, else the first answering member with the key."""
    st = snap.state
    if st.get("verdict"):
        return str(orjson.loads(st["verdict"])["final_answer"])
    key = st.get("answer")
    answered = [c for c in snap.calls.values() if c.status in ("answered", "late")]
    for c in sorted(answered, key=lambda c: c.member):
        if key and c.answer_key == key:
            return c.text
    return None
