"""The deadline sweep as a specification, on fakeredis: what it decides, and what it leaves alone."""

from __future__ import annotations

import dataclasses
import time
from types import SimpleNamespace
from typing import Any

import fakeredis

from tests.panel.test_vote_lua import _spec
from workers.panel.state import PanelStore
from workers.panel.sweep import sweep_panel


class Recorder:
    def __init__(self) -> None:
        self.concluded: list[str] = []
        self.revoked: list[str] = []

    def conclude(self, panel_id: str, cancel: bool = False, lease: str = "", read: Any = None) -> list[str] | None:
        self.concluded.append(panel_id)
        return None  # the cancel is the chord's own (PanelStore.cancel)

    def revoke(self, task_ids: list[str]) -> None:
        self.revoked.extend(task_ids)


def exhausted_panel(deadline: float) -> tuple[SimpleNamespace, PanelStore]:
    r = fakeredis.FakeRedis()
    store = PanelStore(r)
    spec = dataclasses.replace(_spec("p"), deadline=deadline)
    store.create(spec, 60)
    for member, answer in (("m0", "a"), ("m1", "b"), ("m2", "c")):
        store.vote("p", member, answer, 3)  # three answers, no quorum: the vote leaves it 'exhausted'
    assert store.decided("p") == "exhausted"
    return SimpleNamespace(store=store), store


def test_an_exhausted_panel_whose_arbiter_never_came_is_decided_by_plurality_at_its_deadline() -> None:
    rt, store = exhausted_panel(deadline=time.time() - 1)
    d = Recorder()
    assert sweep_panel(rt.store, d, "p", time.time()) == 1  # type: ignore[arg-type]
    assert store.decided("p") == "sweep"
    assert d.concluded == ["p"]
    # a verdict that arrives now is late: it cannot replace the sweep's decision
    assert store.decide("p", "arbiter", "b", replace_exhausted=True) == (False, "sweep", "a")  # plurality tie: lowest key


def test_an_exhausted_panel_before_its_deadline_is_left_to_its_arbiter() -> None:
    rt, store = exhausted_panel(deadline=time.time() + 60)
    d = Recorder()
    assert sweep_panel(rt.store, d, "p", time.time()) == 0  # type: ignore[arg-type]
    assert store.decided("p") == "exhausted" and d.concluded == []
