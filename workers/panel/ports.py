"""The narrow things the panel path is given, as protocols: a `Caller` that makes one model call
(budget, breaker, limiter, retries, failover, cancellation), a `Dispatcher` that sends work and
concludes panels (Celery in production, plain recorders in tests), and `Chord`, what a member's
turn reads and writes through. Nothing here imports Celery or the runtime.

    chord = Chord(store=PanelStore(r), registry=registry, jobs=JobStore(r, policies, ttl), caller=caller)
    turn = run_member(chord, panel_id, "m0")      # workers/panel/chord.py
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from producer.contract import Job
from workers.budget import Spend
from workers.limits.steps import Owed
from workers.panel.admission import Ask, Speculation
from workers.panel.calls import Admitted, CallOutcome
from workers.panel.route import Route
from workers.panel.run import Member, PanelRun, Read
from workers.panel.state import PanelStore
from workers.registry import Registry


class Caller(Protocol):
    """One model call as the fleet makes it (workers/panel/calls.py `ModelCaller`). With a
    panel id the call is cancelled (raises `Cancelled`) when the panel is decided first. With
    `owed`, an answer's settlement is left in it, to be sent with the member's record."""

    def __call__(self, panel_id: str | None, model: str, messages: list[dict[str, str]], deadline: float,
                 json_mode: bool = False, spend: Spend | None = None, logprobs: bool = False,
                 member: str | None = None, in_panel: frozenset[str] = frozenset(),
                 owed: Owed | None = None, admitted: Admitted | None = None) -> CallOutcome: ...  # fmt: skip


class Admission(Protocol):
    """A member's admission queued with its start (workers/panel/admission.py `Admissions`)."""

    def speculate(self, store_r: Any, panel_id: str, member: str, ask: Ask, token: str) -> Speculation | None: ...


class Jobs(Protocol):
    """The stored jobs (workers/jobstore.py `JobStore`)."""

    def has(self, job_id: str) -> bool: ...

    def load(self, job_id: str, raw: bytes | str | None = None) -> Job: ...

    def spend(self, job: Job, batch: bool) -> Spend: ...


class Dispatcher(Protocol):
    """How the chord's actions leave the process: Celery in production (workers/tasks.py)."""

    def member(self, spec: PanelRun, member: Member, route: Route) -> str:
        """Send one member's call on `route`; returns the task id (revoked if a quorum wins)."""
        ...

    def members(self, spec: PanelRun, members: Sequence[Member], route: Route,
                asks: Mapping[str, Ask] | None = None) -> dict[str, str]:  # fmt: skip
        """Send several members' calls on `route` at once (one round trip on Celery); returns
        member -> task id. A member may go twice (a batch whose delivery was uncertain sent
        again): its vote counts once and its lease stops a second call. `asks`: each member's
        admission ask, sent in its task's kwargs (workers/panel/admission.py)."""
        ...

    def arbiter(self, spec: PanelRun, route: Route) -> None: ...

    def conclude(self, panel_id: str, cancel: bool = False, lease: str = "", read: Read | None = None) -> list[str] | None:
        """Conclude a decided panel. With `cancel` (a quorum), its cancel may be taken with the
        conclusion's reads: returns the task ids to revoke then ([]: none), None if not taken.
        `lease`: the caller holds the conclusion lease already, and `read` what it read with it
        (`Conclude.lease`, `Conclude.read`)."""
        ...

    def revoke(self, task_ids: list[str]) -> None: ...

    def run(self, job_id: str) -> None:
        """Send a job's `panel.run` (a coalesced job the answer cache promotes to leader)."""
        ...


@dataclass(frozen=True)
class Chord:
    """What a member's turn, the arbiter and the sweep use, and nothing more."""

    store: PanelStore
    registry: Registry
    jobs: Jobs
    caller: Caller
    admission: Admission | None = None  # None: a member asks for its admission when it calls
