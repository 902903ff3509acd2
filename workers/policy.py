"""The policy table (policies/tasks.yaml): picks a job's lane and evaluates escalation triggers.

Loaded and checked once at worker start; a bad file stops the worker with file:line and field:

    table = PolicyTable.load(registry)
    plan = table.plan(job)          # Plan(lane="panel", triggers=["input:keyword:migrations?/"], ...)
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from producer.contract import Job
from workers import policy_files
from workers.errors import PolicyError
from workers.registry import Registry, policies_dir

RuleName = Literal["exact", "choice", "json", "numeric", "set"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class AgreementSpec(_Strict):
    rule: RuleName
    options: list[str] | None = None  # choice: allowed labels (default: letters A-J)
    tolerance: float = Field(default=1e-6, ge=0)  # numeric
    threshold: float = Field(default=0.6, gt=0, le=1)  # set: Jaccard


class PanelSpec(_Strict):
    members: list[str] = Field(min_length=1)
    quorum: int = Field(ge=1)
    dispatch: Literal["parallel", "staged"] = "parallel"
    agreement: AgreementSpec
    arbiter: str

    @model_validator(mode="after")
    def _quorum(self) -> PanelSpec:
        if self.quorum > len(self.members):
            raise ValueError(f"quorum: {self.quorum} is more than the {len(self.members)} members")
        return self


class SingleSpec(_Strict):
    model: str


class InputTriggers(_Strict):
    flags: list[str] = Field(default_factory=list)
    keywords: list[str] = Field(default_factory=list)

    @field_validator("keywords")
    @classmethod
    def _regex(cls, v: list[str]) -> list[str]:
        for k in v:
            try:
                re.compile(k)
            except re.error as e:
                raise ValueError(f"keyword {k!r} is not a valid regex: {e}") from None
        return v


class OutputTriggers(_Strict):
    schema_invalid: int | None = Field(default=None, ge=1, description="escalate after N invalid answers")
    low_confidence: float | None = Field(default=None, gt=0, le=1)
    missing_citations: bool = False


class Triggers(_Strict):
    input: InputTriggers = InputTriggers()
    output: OutputTriggers = OutputTriggers()


class CacheSpec(_Strict):
    """The answer cache of a task class (off when absent): a decided answer is served again for
    the same input under the same policy for `ttl_s` seconds (workers/answer_cache.py)."""

    enabled: bool = True
    ttl_s: float = Field(gt=0, description="seconds a decided answer is served again")


class TaskPolicy(_Strict):
    description: str = ""
    default_lane: Literal["single", "panel"]
    single: SingleSpec
    panel: PanelSpec
    rubric: list[str] = Field(default_factory=list)
    triggers: Triggers = Triggers()
    budget_usd: float | None = Field(default=None, gt=0)
    mode: Literal["realtime", "batch"] = "realtime"
    deadline_s: float | None = Field(default=None, gt=0)
    cache: CacheSpec | None = None

    @cached_property
    def keyword_patterns(self) -> list[re.Pattern[str]]:
        return [re.compile(k, re.IGNORECASE) for k in self.triggers.input.keywords]


class Defaults(_Strict):
    deadline_s: float = Field(default=600, gt=0)
    rubric: list[str] = Field(default_factory=list)


class PolicyFile(_Strict):
    defaults: Defaults = Defaults()
    task_classes: dict[str, TaskPolicy] = Field(min_length=1)


@dataclass(frozen=True)
class Plan:
    """Where a job starts and why."""

    task_class: str
    lane: Literal["single", "panel"]
    reason: str
    triggers: list[str] = field(default_factory=list)
    mode: Literal["realtime", "batch"] = "realtime"


class PolicyTable:
    def __init__(self, policies: PolicyFile, registry: Registry):
        self.file = policies
        self.registry = registry

    @property
    def task_classes(self) -> dict[str, TaskPolicy]:
        return self.file.task_classes

    def get(self, task_class: str) -> TaskPolicy:
        try:
            return self.file.task_classes[task_class]
        except KeyError:
            known = ", ".join(sorted(self.file.task_classes))
            raise PolicyError("tasks.yaml", None, "task_class", f"unknown {task_class!r}; known: {known}") from None

    def plan(self, job: Job) -> Plan:
        policy = self.get(job.task_class)
        mode: Literal["realtime", "batch"] = "batch" if job.mode == "batch" or policy.mode == "batch" else "realtime"
        if job.lane is not None:
            return Plan(job.task_class, job.lane, f"requested by the job (lane={job.lane})",
                        [f"explicit:lane={job.lane}"], mode)  # fmt: skip
        hits = self.input_triggers(job, policy)
        if hits and policy.default_lane == "single":
            return Plan(job.task_class, "panel", f"input trigger {hits[0]}", hits, mode)
        return Plan(job.task_class, policy.default_lane, "default lane of the task class", hits, mode)

    @staticmethod
    def input_triggers(job: Job, policy: TaskPolicy) -> list[str]:
        hits = [f"input:flag:{f}" for f in job.flags if f in policy.triggers.input.flags]
        text = "\n".join(m["content"] for m in job.chat())
        hits += [f"input:keyword:{p.pattern}" for p in policy.keyword_patterns if p.search(text)]
        return hits

    @classmethod
    def load(cls, registry: Registry, path: Path | None = None) -> PolicyTable:
        path = path or policies_dir() / "tasks.yaml"
        data, lines = policy_files.load(path)
        policies = policy_files.validate(PolicyFile, data, path, lines)
        for name, p in policies.task_classes.items():  # every model named must be in the registry
            refs: list[tuple[tuple[str | int, ...], str]] = [(("single", "model"), p.single.model),
                                                               (("panel", "arbiter"), p.panel.arbiter)]
            refs += [(("panel", "members", i), m) for i, m in enumerate(p.panel.members)]
            for loc, model in refs:
                if model not in registry.models:
                    full = ("task_classes", name) + loc
                    raise PolicyError(str(path), policy_files.line_of(lines, full), ".".join(map(str, full)),
                                      f"model {model!r} is not in models.yaml")  # fmt: skip
        return cls(policies, registry)
