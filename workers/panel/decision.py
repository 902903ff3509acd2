"""What a vote means for its panel, as plain values: the decision core of the chord.

    actions = after_vote(spec, store.vote(...), late=False)   # e.g. (Conclude(), Cancel())
    carry_out(chord, dispatcher, spec, actions)               # workers/panel/act.py does them

`after_vote` reads nothing and writes nothing, so every outcome can be specified without Redis
or Celery. Each action is carried out at most once per panel (the executor guards it), so a
redelivered member that repeats a vote repeats exactly the follow-ups that did not happen.
An empty tuple means there is nothing to do (a vote that leaves the panel pending).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from workers.panel.run import PanelRun, Read, VoteOutcome

Settle = Literal["", "quorum", "failed", "split"]


@dataclass(frozen=True)
class Conclude:
    """The panel is decided: escalate, retry or finalise its job. With `settle`, an exhausted
    panel that has nothing to arbitrate (one distinct answer, or none) is first decided so.
    `lease`: the conclusion lease was taken already, with the member's record (a cut-off
    member: workers/panel/state.py `put_cut_off`): "taken" on a panel not yet concluded,
    "concluded" on one concluded before (re-render only); "": the conclusion takes it."""

    settle: Settle = ""
    lease: Literal["", "taken", "concluded"] = ""
    read: Read | None = field(default=None, compare=False)  # what the lease's round trip read with it


@dataclass(frozen=True)
class CallArbiter:
    """The members disagree and every one has voted: one arbiter call decides."""


@dataclass(frozen=True)
class NextStage:
    """A staged panel's sent members disagree: send members[send_from:send_to]."""

    send_from: int
    send_to: int


@dataclass(frozen=True)
class Cancel:
    """A quorum decided: stop the stragglers (in flight: cancelled; queued: revoked)."""


Action = Conclude | CallArbiter | NextStage | Cancel
Nothing: tuple[Action, ...] = ()
_DECISIONS = ("quorum", "sweep", "arbiter", "failed", "split")


def after_vote(spec: PanelRun, vote: VoteOutcome, late: bool = False) -> tuple[Action, ...]:
    """The follow-ups of one vote. `late`: this call answered after the panel was decided (its
    receipt line, and so the job's receipt, must be rendered again)."""
    if vote.status == "pending":
        return Nothing
    if vote.status == "next":
        return (NextStage(vote.send_from, vote.send_to),)
    fresh = vote.status != "decided"
    outcome = vote.status if fresh else vote.outcome
    actions: list[Action] = []
    if outcome in _DECISIONS and (fresh or vote.duplicate or late):
        # the decision first, then the stragglers: the revoke broadcast is a broker round trip
        # the decision need not wait for (a straggler that starts meanwhile sees `decided`)
        actions.append(Conclude())
    if outcome == "quorum":
        actions.append(Cancel())
    elif outcome == "exhausted":
        actions.append(arbiter_or_settle(spec, vote.distinct))
    return tuple(actions)


def arbiter_or_settle(spec: PanelRun, distinct: int) -> Action:
    """An exhausted panel calls its arbiter only when there is something to arbitrate, and has
    one: a cascade stage without a judge settles as `split` (its plurality), which escalates,
    unless its agreement has an equivalence check to ask first (the arbiter's task asks it, and
    settles the split on a no: workers/panel/arbiter.py before_judge)."""
    if distinct <= 1 or len(spec.members) == 1:
        return Conclude(settle="quorum" if distinct else "failed")
    if not spec.arbiter and spec.agreement_spec().equivalence is None:
        return Conclude(settle="split")
    return CallArbiter()
