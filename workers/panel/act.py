"""Carrying out a vote's actions (workers/panel/decision.py) through a Dispatcher, each at most
once per panel: the executor, kept apart from the decision so the decision stays plain logic.

    carry_out(store, dispatcher, turn)          # after run_member / land / cast_vote

Guards: `Cancel` and `CallArbiter` run once per panel and `NextStage` once per stage
(`PanelStore.once`); `Conclude` is itself idempotent (a lease, and `once:concluded`), and its
`settle` replaces an exhausted decision once at most (decide.lua).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

from workers.panel import watchdog
from workers.panel.admission import Ask
from workers.panel.decision import Action, CallArbiter, Cancel, Conclude, NextStage
from workers.panel.ports import Dispatcher
from workers.panel.route import route
from workers.panel.run import Member, PanelRun
from workers.panel.state import PanelStore


class HasActions(Protocol):
    @property
    def spec(self) -> PanelRun | None: ...

    @property
    def actions(self) -> tuple[Action, ...]: ...


def carry_out(store: PanelStore, d: Dispatcher, turn: HasActions) -> None:
    if turn.spec is not None:
        carry_out_actions(store, d, turn.spec, turn.actions)


def carry_out_actions(store: PanelStore, d: Dispatcher, spec: PanelRun, actions: Sequence[Action]) -> None:
    pid = spec.panel_id
    cancelled = False  # a conclusion followed by a cancel takes the cancel with its reads
    for i, action in enumerate(actions):
        if isinstance(action, Conclude):
            if action.settle:
                store.decide(pid, action.settle, "", replace_exhausted=True)
            if action.lease:  # taken with the member's record: the conclusion must not take it again
                d.conclude(pid, lease=action.lease, read=action.read)
            elif any(isinstance(a, Cancel) for a in actions[i + 1 :]):
                pending = d.conclude(pid, cancel=True)
                if pending is not None:
                    cancelled = True
                    if pending:
                        d.revoke(pending)
            else:
                d.conclude(pid)
        elif isinstance(action, Cancel):
            if cancelled:
                continue
            first, pending = store.cancel(spec)
            if first and pending:
                d.revoke(pending)
        elif isinstance(action, CallArbiter):
            if store.once(pid, "arbiter"):
                d.arbiter(spec, route(spec))
        elif isinstance(action, NextStage):
            if store.once(pid, f"stage:{action.send_to}"):
                dispatch(store, d, spec, spec.members[action.send_from : action.send_to])


def dispatch(store: PanelStore, d: Dispatcher, spec: PanelRun, members: Sequence[Member], expected: bool = False,
             asks: Mapping[str, Ask] | None = None) -> None:  # fmt: skip
    """Send members on the panel's route (batch or real time, decided once for the lot) and
    record their task ids, so a quorum can revoke the ones still queued. `expected`: the
    watchdog's entries were written already (with the panel: workers/jobs.py open_panel).
    `asks`: each member's admission ask (workers/panel/admission.py), sent with a real-time member."""
    r = route(spec)
    if r != "batch" and not expected:  # before sending: a member whose send failed (Redis went down
        # mid-dispatch) or that never starts is sent again (workers/panel/watchdog.py)
        watchdog.expect(store.r, spec.panel_id, [m.member for m in members])
    asks = asks if r == "realtime" else None
    sent = d.members(spec, members, r, asks) if len(members) > 1 or asks else {m.member: d.member(spec, m, r) for m in members}
    store.set_task_ids(spec.panel_id, sent)


def cancel_stragglers(store: PanelStore, d: Dispatcher, spec: PanelRun) -> None:
    """Decided: stop in-flight calls (pub/sub) and revoke queued members (best effort; a member
    that still starts checks `decided` first and makes no provider call)."""
    _, pending = store.cancel(spec)
    if pending:
        d.revoke(pending)
