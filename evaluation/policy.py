"""Evaluation policies: a panel (or one model) to replay through the fleet, as a small YAML file.
`--policy NAME` finds policies/eval/NAME.yaml; `--policy PATH` reads that file; a tasks.yaml-style
file with `cascade:` stages (what `panel tune --write` writes) is a `CascadePolicy`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from evaluation.cascade import CascadeSpec, Stage, StagePanel
from evaluation.replay import agreement_for

EVAL_DIR = Path(__file__).resolve().parent.parent / "policies" / "eval"


class EvalPolicy(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    lane: Literal["single", "panel"] = "panel"
    model: str | None = None  # lane single
    members: list[str] = Field(default_factory=list)
    quorum: int = Field(default=2, ge=1)
    dispatch: Literal["parallel", "staged"] = "parallel"
    arbiter: str | None = None
    mode: Literal["realtime", "batch"] = "realtime"
    cache_ttl_s: float | None = Field(default=None, gt=0, description="answer cache on, for this long (tasks.yaml `cache`)")

    @model_validator(mode="after")
    def _shape(self) -> EvalPolicy:
        if self.lane == "single" and not self.model:
            raise ValueError("model: a single-lane policy names its model")
        if self.lane == "panel":
            if not self.members or not self.arbiter:
                raise ValueError("members: a panel names its members and arbiter")
            if self.quorum > len(self.members):
                raise ValueError(f"quorum: {self.quorum} is more than the {len(self.members)} members")
        return self

    @property
    def models(self) -> list[str]:
        return [self.model] if self.lane == "single" and self.model else [*self.members, *([self.arbiter] if self.arbiter else [])]

    @property
    def task_class(self) -> str:
        return f"eval_{self.name}".replace(".", "_")


def load(ref: str) -> EvalPolicy:
    path = Path(ref) if Path(ref).suffix in (".yaml", ".yml") else EVAL_DIR / f"{ref}.yaml"
    if not path.exists():
        known = ", ".join(sorted(p.stem for p in EVAL_DIR.glob("*.yaml")))
        raise ValueError(f"--policy {ref}: no such policy (give a YAML path or one of: {known})")
    try:
        return EvalPolicy.model_validate(yaml.safe_load(path.read_text()))
    except ValidationError as e:
        err = e.errors()[0]
        raise ValueError(f"{path}: {'.'.join(map(str, err['loc'])) or '(top)'}: {err['msg']}") from None


@dataclass(frozen=True)
class CascadePolicy:
    """A tasks.yaml-style entry with `cascade:` stages (what `panel tune --write` writes): `panel
    eval` runs it on the fleet's cascade lane, `--offline` replays it by the same rules
    (`evaluation.cascade`)."""

    name: str
    spec: CascadeSpec
    path: Path

    @property
    def models(self) -> list[str]:
        return self.spec.models

    @property
    def task_class(self) -> str:
        return f"eval_{self.name}".replace(".", "_")

    def entry(self) -> dict[str, Any]:
        """The task class's tasks.yaml entry as written in its file (what the fleet runs)."""
        raw = yaml.safe_load(self.path.read_text())
        entry: dict[str, Any] = (raw.get("task_classes") or {self.path.stem: raw})[self.name]
        return entry


def load_any(ref: str) -> list[EvalPolicy | CascadePolicy]:
    """`--policy` for `panel eval`: an eval policy (policies/eval/NAME or its YAML), or a tasks.yaml
    file whose task classes have `cascade:` stages (every such class is evaluated)."""
    path = Path(ref) if Path(ref).suffix in (".yaml", ".yml") else EVAL_DIR / f"{ref}.yaml"  # a name, as `load`
    if path.exists():
        raw = yaml.safe_load(path.read_text())
        if isinstance(raw, dict) and ("task_classes" in raw or "cascade" in raw):
            classes = raw.get("task_classes") or {path.stem: raw}
            out: list[EvalPolicy | CascadePolicy] = []
            for name, entry in classes.items():
                if isinstance(entry, dict) and "cascade" in entry:
                    where = f"{path}: task_classes.{name}.cascade"
                    out.append(CascadePolicy(str(name), CascadeSpec.from_entry(entry["cascade"], where), path))
            if not out:
                raise ValueError(f"{path}: no task class has `cascade:` stages (write one with `panel tune FILE --write {path}`)")
            return out
    return [load(ref)]


def as_cascade(p: EvalPolicy | CascadePolicy, kind: str) -> CascadeSpec:
    """Any evaluated policy as cascade stages: one model, one arbitrated panel, or the stages."""
    if isinstance(p, CascadePolicy):
        return p.spec
    if p.lane == "single":
        return CascadeSpec(stages=[Stage(model=p.model)])
    panel = StagePanel(members=p.members, quorum=p.quorum, dispatch=p.dispatch, agreement=agreement_for(kind), arbiter=p.arbiter)
    return CascadeSpec(stages=[Stage(panel=panel)])
