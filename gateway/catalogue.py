"""What `model` may name in an OpenAI-shaped request:

- `panel/<task_class>`: that row of the policy table, its lanes and triggers as the policy says;
- a registry model (`gpt-4o-mini`): a single-lane job of the first task class (by name) whose
  single lane is that model. A model no task class runs alone is refused with the names that work.

Read from the policy files the workers load (PANEL_POLICIES, else `policies/` beside the code),
as YAML: the gateway does not import the workers' policy code.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import yaml

from gateway.errors import NotFound

PANEL_PREFIX = "panel/"


def policies_dir() -> Path:
    env = os.environ.get("PANEL_POLICIES")
    return Path(env) if env else Path(__file__).resolve().parent.parent / "policies"


@dataclass(frozen=True)
class Route:
    task_class: str
    lane: str | None  # None: as the policy says; "single": the registry model alone


@dataclass
class Catalogue:
    task_classes: list[str]
    single_models: dict[str, str]  # registry model -> task class whose single lane it is
    models: list[str]

    @classmethod
    def load(cls, folder: Path | None = None) -> Catalogue:
        folder = folder or policies_dir()
        tasks = yaml.safe_load((folder / "tasks.yaml").read_text())["task_classes"]
        models = sorted(yaml.safe_load((folder / "models.yaml").read_text())["models"])
        singles: dict[str, str] = {}
        for name in sorted(tasks):
            model = ((tasks[name] or {}).get("single") or {}).get("model")
            if model and model not in singles:
                singles[model] = name
        return cls(sorted(tasks), singles, models)

    def route(self, model: str, param: str = "model") -> Route:
        if model.startswith(PANEL_PREFIX) and model[len(PANEL_PREFIX):] in self.task_classes:
            return Route(model[len(PANEL_PREFIX):], None)
        if model in self.single_models:
            return Route(self.single_models[model], "single")
        hint = ", ".join([PANEL_PREFIX + t for t in self.task_classes] + sorted(self.single_models))
        shown = model if len(model) <= 80 else model[:80] + "..."
        raise NotFound(f"model {shown!r} is not served here; use one of: {hint}", param=param, code="model_not_found")

    def names(self) -> list[str]:
        return [PANEL_PREFIX + t for t in self.task_classes] + sorted(self.single_models)
