"""The policy table (policies/tasks.yaml): picks a job's lane and evaluates escalation triggers.

Loaded and checked once at worker start; a bad file stops the worker with file:line and field:

    table = PolicyTable.load(registry)
    plan = table.plan(job)          # Plan(lane="panel", triggers=["input:keyword:migrations?/"], ...)
"""

from __future__ import annotations

import math
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

RuleName = Literal["exact", "choice", "json", "numeric", "set", "similar"]
CheckName = Literal["logprob", "self_reported", "agreement", "agrees_previous", "schema", "always"]
LaneName = Literal["single", "panel", "cascade"]
MAX_STAGES = 4
NO_LOGPROBS = "Anthropic Messages returns no log-probabilities; use agreement or self_reported"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class EquivalenceSpec(_Strict):
    """`similar` only: before the arbiter, ask `model` (an economy model) whether the two closest
    answers that the rule did not join (token-set ratio in [min, threshold)) say the same thing;
    a yes that makes the quorum decides the panel without the arbiter. Charged in the receipt."""

    model: str
    min: float = Field(default=0.5, ge=0, le=1)


class AgreementSpec(_Strict):
    rule: RuleName
    options: list[str] | None = None  # choice: allowed labels (default: letters A-J)
    tolerance: float = Field(default=1e-6, ge=0)  # numeric
    # set: Jaccard (default 0.6); similar: rapidfuzz token-set ratio (default 0.9, the value
    # `python3 -m evaluation.freetext` calibrated); both in (0, 1]
    threshold: float | None = Field(default=None, gt=0, le=1)
    # similar: the JSON fields a reply may declare its answer in (default: answer, final_answer)
    answer_fields: list[str] | None = Field(default=None, min_length=1)
    equivalence: EquivalenceSpec | None = None  # similar: an LLM equivalence check for near misses

    @model_validator(mode="after")
    def _equivalence(self) -> AgreementSpec:
        if self.equivalence is None:
            return self
        if self.rule != "similar":
            raise ValueError(f"equivalence: only the `similar` rule has near misses to check, not {self.rule!r}")
        if self.equivalence.min >= (0.9 if self.threshold is None else self.threshold):
            raise ValueError(f"equivalence.min: {self.equivalence.min} must be below the rule's threshold "
                             "(the check asks about answers the rule did not join)")  # fmt: skip
        return self


class PanelSpec(_Strict):
    members: list[str] = Field(min_length=1)
    quorum: int = Field(ge=1)
    dispatch: Literal["parallel", "staged"] = "parallel"
    agreement: AgreementSpec
    arbiter: str
    # `different`: the arbiter's family (models.yaml `family`) must be none of the members' (a
    # judge tends to prefer answers in its own style); checked at load
    arbiter_family: Literal["any", "different"] = "any"

    @model_validator(mode="after")
    def _quorum(self) -> PanelSpec:
        if self.quorum > len(self.members):
            raise ValueError(f"quorum: {self.quorum} is more than the {len(self.members)} members")
        return self


class StagePanelSpec(PanelSpec):
    """A cascade stage's panel: as `panel:`, but the arbiter is optional (a split of a stage that
    is not the last escalates instead; a split of a last stage without one takes the plurality)."""

    arbiter: str | None = None  # type: ignore[assignment]


class AcceptSpec(_Strict):
    """A stage's acceptance check; `min` is range-checked per check at load (see check_cascade)."""

    check: CheckName
    min: float | None = None


class StageSpec(_Strict):
    model: str | None = None
    panel: StagePanelSpec | None = None
    accept: AcceptSpec | None = None  # omitted: `always` (the last stage only)

    @model_validator(mode="after")
    def _one_kind(self) -> StageSpec:
        if (self.model is None) == (self.panel is None):
            raise ValueError("give exactly one of `model` (a single-model stage) or `panel`")
        return self

    @property
    def check(self) -> CheckName:
        return self.accept.check if self.accept else "always"

    @property
    def models(self) -> list[str]:
        return [self.model] if self.model else list(self.panel.members) if self.panel else []


class CascadeSpec(_Strict):
    stages: list[StageSpec] = Field(min_length=1, max_length=MAX_STAGES)


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
    default_lane: LaneName
    single: SingleSpec
    panel: PanelSpec
    cascade: CascadeSpec | None = None
    rubric: list[str] = Field(default_factory=list)
    triggers: Triggers = Triggers()
    budget_usd: float | None = Field(default=None, gt=0)
    mode: Literal["realtime", "batch"] = "realtime"
    deadline_s: float | None = Field(default=None, gt=0)
    cache: CacheSpec | None = None

    @model_validator(mode="after")
    def _cascade_given(self) -> TaskPolicy:
        if self.default_lane == "cascade" and self.cascade is None:
            raise ValueError("default_lane: cascade needs a `cascade: {stages: [...]}` entry")
        return self

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
    lane: LaneName
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
        if job.lane == "cascade" and policy.cascade is None:
            raise PolicyError("tasks.yaml", None, f"task_classes.{job.task_class}.cascade",
                              "this task class declares no cascade; ask lane single or panel")  # fmt: skip
        if job.lane is not None:
            return Plan(job.task_class, job.lane, f"requested by the job (lane={job.lane})",
                        [f"explicit:lane={job.lane}"], mode)  # fmt: skip
        hits = self.input_triggers(job, policy)
        if hits and policy.default_lane in ("single", "cascade"):  # an input trigger asks for a panel
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
            refs: list[tuple[tuple[str | int, ...], str]] = [(("single", "model"), p.single.model)]
            refs += panel_refs(("panel",), p.panel)
            for i, stage in enumerate(p.cascade.stages if p.cascade else []):
                loc: Loc = ("cascade", "stages", i)
                refs += [(loc + ("model",), stage.model)] if stage.model else panel_refs(loc + ("panel",), stage.panel)
            for loc, model in refs:
                if model not in registry.models:
                    _refuse(path, lines, ("task_classes", name) + loc, f"model {model!r} is not in models.yaml")
            check_family(path, lines, ("task_classes", name, "panel"), p.panel, registry)
            if p.cascade is not None:
                check_cascade(path, lines, ("task_classes", name), p, registry)
        return cls(policies, registry)


Loc = tuple[str | int, ...]


def _refuse(path: Path, lines: dict[Loc, int], loc: Loc, message: str) -> None:
    raise PolicyError(str(path), policy_files.line_of(lines, loc), ".".join(map(str, loc)), message)


def panel_refs(loc: Loc, panel: PanelSpec | None) -> list[tuple[Loc, str]]:
    if panel is None:
        return []
    refs = [(loc + ("members", i), m) for i, m in enumerate(panel.members)]
    if panel.agreement.equivalence is not None:
        refs.append((loc + ("agreement", "equivalence", "model"), panel.agreement.equivalence.model))
    return refs + ([(loc + ("arbiter",), panel.arbiter)] if panel.arbiter else [])


def check_family(path: Path, lines: dict[Loc, int], loc: Loc, panel: PanelSpec, registry: Registry) -> None:
    """`arbiter_family: different`: every model involved needs a `family`, and the arbiter's must
    be none of the members'."""
    if panel.arbiter_family != "different":
        return
    if not panel.arbiter:
        _refuse(path, lines, loc + ("arbiter_family",), "`different` needs an arbiter; name one or drop the option")
    for model in [*panel.members, panel.arbiter]:
        if registry.models[model].family is None:
            _refuse(path, lines, loc + ("arbiter_family",),
                    f"model {model!r} has no `family` in models.yaml; give it one")  # fmt: skip
    arbiter = registry.models[panel.arbiter].family
    same = [m for m in panel.members if registry.models[m].family == arbiter]
    if same:
        _refuse(path, lines, loc + ("arbiter",), f"arbiter {panel.arbiter!r} is of family {arbiter!r} like member(s) "
                f"{', '.join(same)}; arbiter_family: different asks for a judge of another family")  # fmt: skip


def check_cascade(path: Path, lines: dict[Loc, int], loc: Loc, policy: TaskPolicy, registry: Registry) -> None:
    """The cascade's semantics, each refusal naming file:line and the field: thresholds in range
    per check, `agreement` on panel stages only, `logprob` on OpenAI-wire models only, `always`
    (or an omitted accept) on the last stage only."""
    assert policy.cascade is not None
    stages = policy.cascade.stages
    for i, stage in enumerate(stages):
        at = loc + ("cascade", "stages", i)
        last = i == len(stages) - 1
        if stage.panel is not None:
            check_family(path, lines, at + ("panel",), stage.panel, registry)
        check, bound = stage.check, stage.accept.min if stage.accept else None
        if check == "always" and not last:
            _refuse(path, lines, at + ("accept", "check") if stage.accept else at,
                    f"stage {i + 1} of {len(stages)} would always accept, so the stages after it never run; "
                    "give it a check (logprob, self_reported, agreement, schema) or make it the last stage")  # fmt: skip
        if check in ("logprob", "self_reported"):
            lo, hi = (-math.inf, 0.0) if check == "logprob" else (0.0, 1.0)
            if bound is None:
                _refuse(path, lines, at + ("accept",), f"check {check} needs `min` (in {_range(lo, hi)})")
            elif not lo <= bound <= hi:
                _refuse(path, lines, at + ("accept", "min"), f"{bound} is out of range for {check}: give a value in {_range(lo, hi)}")
        elif bound is not None:
            _refuse(path, lines, at + ("accept", "min"), f"check {check} takes no `min`; remove it")
        if check == "agrees_previous" and (i == 0 or stage.panel is not None):
            _refuse(path, lines, at + ("accept", "check"), "agrees_previous accepts a single-model stage whose answer is "
                    "the stage before's; it needs a stage before it and a `model:` stage (a panel stage uses agreement)")  # fmt: skip
        if check == "agreement" and stage.panel is None:
            _refuse(path, lines, at + ("accept", "check"), "agreement needs a panel stage (two or more members); "
                    "use logprob, self_reported or schema on a single-model stage")  # fmt: skip
        if check == "logprob":
            for j, model in enumerate(stage.models):
                if registry.provider_of(model).api != "openai":
                    where = at + (("model",) if stage.model else ("panel", "members", j))
                    _refuse(path, lines, where, f"logprob check on {model!r}: {NO_LOGPROBS}")


def _range(lo: float, hi: float) -> str:
    return f"(-inf, {hi:g}]" if lo == -math.inf else f"[{lo:g}, {hi:g}]"
