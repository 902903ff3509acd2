"""Cascades offline: the `cascade:` stages of a tasks.yaml entry (CASCADE-SCHEMA.md, shared with
the fleet's cascade lane), read, written and replayed on recorded rows.

    entry = {"default_lane": "cascade", "single": {...}, "panel": {...},
             "cascade": {"stages": [{"model": "llama3.1-8b", "accept": {"check": "logprob", "min": -0.35}},
                                    {"model": "llama3.1-405b"}]}}
    spec = CascadeSpec.from_entry(entry["cascade"])
    d = run_row(row, spec, prices)      # StageDecision: answer, winner, cost, calls, the stage that accepted

A stage is one model or one panel. `logprob`: the replay file's `conf` is the answer's sequence
log-probability (what the fleet sums from `logprobs.content`); a row without it escalates. `agreement`
(panel stages): accepted when the panel reaches its quorum without an arbiter; a split escalates.
The last stage accepts whatever it answers (a last panel stage with an arbiter arbitrates a split).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from evaluation import offline
from evaluation.reference import recorded_cost
from evaluation.replay import Row, credit, is_correct

Check = Literal["logprob", "self_reported", "agreement", "agrees_previous", "schema", "always"]
OFFLINE_CHECKS = ("logprob", "agreement", "agrees_previous", "always")  # what recorded rows can replay


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Accept(_Strict):
    check: Check = "always"
    min: float | None = None

    @model_validator(mode="after")
    def _range(self) -> Accept:
        if self.check == "logprob" and (self.min is None or not -math.inf < self.min <= 0):
            raise ValueError(f"min: a logprob threshold is a log-probability in (-inf, 0], got {self.min}")
        if self.check == "self_reported" and (self.min is None or not 0 <= self.min <= 1):
            raise ValueError(f"min: a self_reported threshold is in [0, 1], got {self.min}")
        if self.check in ("agreement", "agrees_previous", "schema", "always") and self.min is not None:
            raise ValueError(f"min: the {self.check} check takes no threshold")
        return self


class StagePanel(_Strict):
    members: list[str] = Field(min_length=1)
    quorum: int = Field(ge=1)
    dispatch: Literal["parallel", "staged"] = "parallel"
    agreement: dict[str, Any] = Field(default_factory=lambda: {"rule": "exact"})
    arbiter: str | None = None

    @model_validator(mode="after")
    def _quorum(self) -> StagePanel:
        if self.quorum > len(self.members):
            raise ValueError(f"quorum: {self.quorum} is more than the {len(self.members)} members")
        return self


class Stage(_Strict):
    model: str | None = None
    panel: StagePanel | None = None
    accept: Accept = Accept()

    @model_validator(mode="after")
    def _one(self) -> Stage:
        if (self.model is None) == (self.panel is None):
            raise ValueError("a stage names exactly one of `model` or `panel`")
        if self.accept.check == "agrees_previous" and self.panel is not None:
            raise ValueError("accept.check: agrees_previous is for single-model stages (a panel stage uses agreement)")
        if self.accept.check == "agreement" and self.panel is None:
            raise ValueError("accept.check: agreement is for panel stages (a single model agrees with itself)")
        return self

    @property
    def models(self) -> list[str]:
        if self.model:
            return [self.model]
        assert self.panel is not None
        return [*self.panel.members, *([self.panel.arbiter] if self.panel.arbiter else [])]


class CascadeSpec(_Strict):
    stages: list[Stage] = Field(min_length=1, max_length=4)

    @model_validator(mode="after")
    def _last(self) -> CascadeSpec:
        if self.stages[0].accept.check == "agrees_previous":
            raise ValueError("stages.0.accept: agrees_previous needs a stage before it")
        for i, s in enumerate(self.stages[:-1]):
            if s.accept.check == "always":
                raise ValueError(f"stages.{i}.accept: a stage before the last needs a check (`always` never escalates)")
        return self

    @classmethod
    def from_entry(cls, raw: Any, where: str = "cascade") -> CascadeSpec:
        try:
            return cls.model_validate(raw)
        except ValidationError as e:
            err = e.errors()[0]
            raise ValueError(f"{where}.{'.'.join(map(str, err['loc']))}: {err['msg']}") from None

    @property
    def models(self) -> list[str]:
        return list(dict.fromkeys(m for s in self.stages for m in s.models))

    def to_entry(self) -> dict[str, Any]:
        """The `cascade:` mapping as tasks.yaml spells it (no nulls, `accept` omitted on an
        `always` last stage)."""
        out = []
        for s in self.stages:
            st: dict[str, Any] = {"model": s.model} if s.model else {"panel": s.panel.model_dump(exclude_none=True)}  # type: ignore[union-attr]
            if s.accept.check != "always":
                st["accept"] = s.accept.model_dump(exclude_none=True)
            out.append(st)
        return {"stages": out}

    def describe(self) -> str:
        parts = []
        for s in self.stages:
            who = s.model or f"[{'+'.join(s.panel.members)}{'>' + s.panel.arbiter if s.panel.arbiter else ''}]"  # type: ignore[union-attr]
            gate = {"agreement": "agree", "agrees_previous": "agrees", "always": ""}.get(s.accept.check, f"{s.accept.check}>={s.accept.min}")
            parts.append(f"{who}{'?' + gate if gate else ''}")
        return " -> ".join(parts)


@dataclass(frozen=True)
class StageDecision:
    answer: str | None
    winner: str | None
    cost_usd: float
    calls: int
    stage: int  # index of the stage that accepted (the last when none before it did)
    arbiter: bool
    latency_ms: float


def run_row(row: Row, spec: CascadeSpec, prices: offline.Prices) -> StageDecision:
    """One question through the stages, as the cascade lane runs it: each stage's calls are paid,
    the first stage whose check accepts decides."""
    cost = latency = 0.0
    calls = 0
    last = len(spec.stages) - 1
    previous: str | None = None  # the vote key of the stage before's answer (`agrees_previous`)
    for i, s in enumerate(spec.stages):
        if s.model is not None:
            rec = row.models[s.model]
            cost += recorded_cost(row, s.model, prices.get(s.model))[0]
            calls += 1
            latency += rec.latency_ms or 0.0
            key = offline.vote_key(row.kind, rec.answer)
            accepted = i == last or (s.accept.check == "logprob" and rec.conf is not None
                                     and s.accept.min is not None and rec.conf >= s.accept.min) or (
                s.accept.check == "agrees_previous" and key is not None and key == previous)  # fmt: skip
            if accepted:
                return StageDecision(rec.answer, s.model, cost, calls, i, False, latency)
            previous = key
            continue
        assert s.panel is not None
        arbiter = s.panel.arbiter if i == last else None
        shape = offline.PanelShape(tuple(s.panel.members), s.panel.quorum, s.panel.dispatch, arbiter)
        d = offline.decide(row, shape, prices)
        cost, calls, latency = cost + d.cost_usd, calls + d.calls, latency + d.latency_ms
        previous = offline.vote_key(row.kind, d.answer)
        if i == last or d.quorum_reached:
            return StageDecision(d.answer, d.winner, cost, calls, i, d.arbiter, latency)
    raise AssertionError("unreachable: the last stage always accepts")


def is_right(row: Row, d: StageDecision) -> bool:
    return credit(row, d.winner) if d.winner else is_correct(row.kind, d.answer, row.gold)
