"""The chord's test doubles: a fake caller, a recording dispatcher, a job and a panel stored on
fakeredis, a chord and a runtime over them (tests/panel/test_chord.py, test_jobs.py)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import fakeredis

from producer import keys
from producer.contract import Job
from producer.settings import Settings
from workers.budget import Budget, Spend
from workers.jobstore import JobStore
from workers.limits.steps import Owed
from workers.panel.calls import CallOutcome
from workers.panel.ports import Chord
from workers.panel.route import Route
from workers.panel.run import Member, PanelRun
from workers.panel.state import PanelStore
from workers.policy import PolicyTable
from workers.providers.base import Completion
from workers.registry import Registry

REGISTRY = Registry.load()
POLICIES = PolicyTable.load(REGISTRY)
MODELS = ["qwen2.5-72b-instruct", "qwen2.5-32b-coder-instruct", "llama3.1-70b"]  # multiple_choice's panel
ARBITER = "llama3.1-405b"


@dataclass
class FakeCaller:
    """Answers per model from a table; counts calls. A model mapped to None fails its call. With
    a `budget`, each answer holds HOLD_USD of it and leaves its settlement (to COST_USD) owed, as
    workers/panel/calls.py does."""

    answers: dict[str, str | None]
    calls: list[tuple[str | None, str]] = field(default_factory=list)
    budget: Budget | None = None

    def __call__(self, panel_id: str | None, model: str, messages: list[dict[str, str]], deadline: float,
                 json_mode: bool = False, spend: Spend | None = None, logprobs: bool = False,
                 member: str | None = None, in_panel: frozenset[str] = frozenset(),
                 owed: Owed | None = None, admitted: Any = None) -> CallOutcome:  # fmt: skip
        self.calls.append((panel_id, model))
        text = self.answers[model]
        if text is None:
            return CallOutcome(model, None, "HTTP 503: upstream unavailable", attempts=4)
        if self.budget is not None and spend is not None and owed is not None:
            hold = self.budget.reserve(spend.job_id, spend.tenant, None, HOLD_USD)
            owed.r, owed.steps = self.budget.r, [self.budget.settle_step(hold, COST_USD)]
        return CallOutcome(model, Completion(text, 40, 3, 12.0, model, "sim", "stop"), attempts=1)


HOLD_USD, COST_USD = 1.0, 0.25


@dataclass
class Recorder:
    """A Dispatcher that records what the chord asked for."""

    sent: list[tuple[str, str, Route]] = field(default_factory=list)
    arbiters: list[tuple[str, Route]] = field(default_factory=list)
    concluded: list[str] = field(default_factory=list)
    revoked: list[str] = field(default_factory=list)
    ran: list[str] = field(default_factory=list)

    def member(self, spec: PanelRun, member: Member, route: Route) -> str:
        self.sent.append((spec.panel_id, member.member, route))
        return f"task-{spec.panel_id}-{member.member}"

    def members(self, spec: PanelRun, members: Sequence[Member], route: Route, asks: Any = None) -> dict[str, str]:
        return {m.member: self.member(spec, m, route) for m in members}

    def arbiter(self, spec: PanelRun, route: Route) -> None:
        self.arbiters.append((spec.panel_id, route))

    def conclude(self, panel_id: str, cancel: bool = False, lease: str = "", read: Any = None) -> list[str] | None:
        self.concluded.append(panel_id)
        return None  # the cancel is the chord's own (PanelStore.cancel)

    def revoke(self, task_ids: list[str]) -> None:
        self.revoked.extend(task_ids)

    def run(self, job_id: str) -> None:
        self.ran.append(job_id)


def store_job(r: fakeredis.FakeRedis, job_id: str, **extra: Any) -> Job:
    job = Job.model_validate({"id": job_id, "task_class": "multiple_choice", "lane": "panel", "prompt": "pick\nA) x\nB) y", **extra})
    r.hset(keys.job(job_id), mapping={"spec": job.model_dump_json(), "status": "queued", "submitted_at": time.time()})
    return job


def make_panel(store: PanelStore, job_id: str = "j1", dispatch_: str = "parallel", batch: bool = False,
           deadline_in: float = 60.0) -> PanelRun:  # fmt: skip
    spec = PanelRun(panel_id=f"{job_id}.1", job_id=job_id, stage="panel", attempt=1,
                    members=[Member(f"m{i}", m, REGISTRY.model(m).tier) for i, m in enumerate(MODELS)], quorum=2,
                    dispatch=dispatch_, agreement={"rule": "choice"}, arbiter=ARBITER, rubric=["be right"],  # type: ignore[arg-type]
                    deadline=time.time() + deadline_in, batch=batch)  # fmt: skip
    store.create(spec, 60)
    return spec



def make_chord(r: fakeredis.FakeRedis, caller: FakeCaller) -> Chord:
    return Chord(store=PanelStore(r), registry=REGISTRY, jobs=JobStore(r, POLICIES, 60), caller=caller)



def make_runtime(r: fakeredis.FakeRedis, caller: FakeCaller) -> SimpleNamespace:
    chord = make_chord(r, caller)
    return SimpleNamespace(redis=r, store=chord.store, jobs=chord.jobs, policies=POLICIES, registry=REGISTRY,
                           settings=Settings(), chord=chord)  # fmt: skip
