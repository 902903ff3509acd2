"""The member lease (workers/panel/lease.py): two copies of one member, delivered while the first
still calls (kombu restoring unacked messages on a broker reconnect, a watchdog re-send), pay for
one answer; a copy whose holder died calls once the lease ends. Driven on fakeredis with the
real chord and a caller that blocks until told to answer."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

import fakeredis
import pytest

from producer import keys
from tests.panel.fakes import MODELS, FakeCaller, Recorder, make_chord, make_panel, store_job
from workers.budget import Spend
from workers.limits.steps import Owed
from workers.panel import chord as chord_mod
from workers.panel import watchdog
from workers.panel.act import dispatch
from workers.panel.calls import CallOutcome
from workers.panel.chord import Turn, run_member
from workers.panel.state import PanelStore


@dataclass
class GatedCaller(FakeCaller):
    """A FakeCaller whose calls wait for `go`; `entered` is set when a call has started."""

    go: threading.Event = field(default_factory=threading.Event)
    entered: threading.Event = field(default_factory=threading.Event)

    def __call__(self, panel_id: str | None, model: str, messages: list[dict[str, str]], deadline: float,
                 json_mode: bool = False, spend: Spend | None = None, logprobs: bool = False,
                 member: str | None = None, in_panel: frozenset[str] = frozenset(),
                 owed: Owed | None = None, admitted: Any = None) -> CallOutcome:  # fmt: skip
        self.entered.set()
        assert self.go.wait(30), "the test never let the call answer"
        return super().__call__(panel_id, model, messages, deadline, json_mode, spend, logprobs, member, in_panel)


@pytest.fixture
def r() -> fakeredis.FakeRedis:
    return fakeredis.FakeRedis()


@pytest.fixture
def waiting(monkeypatch: pytest.MonkeyPatch) -> threading.Event:
    """Set when a copy starts waiting on another copy's lease."""
    entered = threading.Event()
    real = chord_mod.wait_for_holder

    def spy(*a: Any, **k: Any) -> Any:
        entered.set()
        return real(*a, **k)

    monkeypatch.setattr(chord_mod, "wait_for_holder", spy)
    return entered


def _in_thread(fn: Any, *args: Any) -> tuple[threading.Thread, list[Turn]]:
    out: list[Turn] = []
    t = threading.Thread(target=lambda: out.append(fn(*args)), daemon=True)
    t.start()
    return t, out


def test_a_second_copy_of_a_member_in_flight_waits_and_reuses_the_one_paid_answer(
        r: fakeredis.FakeRedis, waiting: threading.Event) -> None:  # fmt: skip
    caller = GatedCaller({m: "B" for m in MODELS})
    chord = make_chord(r, caller)
    store_job(r, "j1")
    spec = make_panel(chord.store)
    first, first_out = _in_thread(run_member, chord, spec.panel_id, "m0")
    assert caller.entered.wait(10)
    assert r.exists(keys.member_lease(spec.panel_id, "m0"))
    # the redelivered copy, in another process (its own store): it must not call while the first does
    other = make_chord(r, caller)
    second, second_out = _in_thread(run_member, other, spec.panel_id, "m0")
    assert waiting.wait(10)  # the copy found the lease taken and waits for the holder's record
    caller.go.set()
    first.join(10)
    second.join(10)
    assert not first.is_alive() and not second.is_alive()
    assert first_out[0].status == "answered" and second_out[0].status == "reused"
    assert len(caller.calls) == 1  # one answer bought
    assert chord.store.tally(spec.panel_id) == {"B": 1}  # and voted once


def test_a_copy_whose_holder_died_calls_once_the_lease_ends(r: fakeredis.FakeRedis) -> None:
    caller = FakeCaller({m: "B" for m in MODELS})
    chord = make_chord(r, caller)
    store_job(r, "j1")
    spec = make_panel(chord.store)
    # a holder that was killed -9 mid-call: its lease is no longer renewed and runs out
    r.set(keys.member_lease(spec.panel_id, "m0"), "dead-holder", px=400)
    t, out = _in_thread(run_member, chord, spec.panel_id, "m0")
    t.join(30)
    assert not t.is_alive() and out[0].status == "answered" and len(caller.calls) == 1


def test_a_copy_waiting_on_a_holder_stops_when_the_panel_is_decided_and_records_nothing(
        r: fakeredis.FakeRedis, waiting: threading.Event) -> None:  # fmt: skip
    caller = FakeCaller({m: "B" for m in MODELS})
    chord = make_chord(r, caller)
    store_job(r, "j1")
    spec = make_panel(chord.store)
    r.set(keys.member_lease(spec.panel_id, "m0"), "live-holder", px=60_000)
    t, out = _in_thread(run_member, chord, spec.panel_id, "m0")
    assert waiting.wait(10)
    r.hset(keys.panel(spec.panel_id), "decided", "quorum")
    t.join(30)
    assert not t.is_alive() and out[0].status == "cancelled" and caller.calls == []
    assert r.hget(keys.calls(spec.panel_id), "m0") is None  # the live holder writes its own record


def test_a_member_that_raises_gives_its_lease_up_so_its_retry_calls_at_once(r: fakeredis.FakeRedis) -> None:
    class Boom(FakeCaller):
        def __call__(self, *a: Any, **k: Any) -> CallOutcome:
            super().__call__(*a, **k)
            raise RuntimeError("bug in the call path")

    chord = make_chord(r, Boom({m: "B" for m in MODELS}))
    store_job(r, "j1")
    spec = make_panel(chord.store)
    with pytest.raises(RuntimeError):
        run_member(chord, spec.panel_id, "m0")
    assert not r.exists(keys.member_lease(spec.panel_id, "m0"))
    caller = FakeCaller({m: "B" for m in MODELS})
    assert run_member(make_chord(r, caller), spec.panel_id, "m0").status == "answered"


def test_held_leases_are_renewed_and_let_go_after_the_call(r: fakeredis.FakeRedis) -> None:
    store = PanelStore(r)
    k = keys.member_lease("j9.1", "m1")
    r.set(k, "me", px=1000)
    with store.leases.holding("j9.1", "m1"):
        assert store.leases.held() == [k]
        store.leases.renew()
        assert r.pttl(k) > 1000  # back to the whole LEASE_S
    assert store.leases.held() == []
    assert 0 < r.pttl(k) <= store.leases.lease_s * 1000  # left to expire: a copy reads the record first


def test_the_watchdog_does_not_resend_a_member_whose_lease_is_held(r: fakeredis.FakeRedis) -> None:
    chord, d = make_chord(r, FakeCaller({m: "B" for m in MODELS})), Recorder()
    store_job(r, "j1")
    spec = make_panel(chord.store)
    dispatch(chord.store, d, spec, spec.members[:1])
    later = spec.deadline - 1  # long past the bound, before the deadline
    r.set(keys.member_lease(spec.panel_id, "m0"), "running-copy", px=60_000)
    assert watchdog.resend_overdue(chord.store, d, later, bound_s=30.0) == 0  # calling now: not lost
    r.delete(keys.member_lease(spec.panel_id, "m0"))
    assert watchdog.resend_overdue(chord.store, d, later, bound_s=30.0) == 1  # no lease, never started: sent again
    assert [m for _, m, _ in d.sent] == ["m0", "m0"]


def test_a_started_member_whose_record_was_lost_is_resent_a_lease_after_not_a_call_budget(r: fakeredis.FakeRedis) -> None:
    """The Sentinel drill's lost job: a member's call record and vote were acknowledged by the old
    primary and never replicated before the replica was promoted, while its started mark (sent
    earlier) was. Its watchdog entry used to wait a whole call budget (2 x 120 s) past the start;
    the lease now says whether a copy still calls, so it is re-sent once its lease has ended."""
    chord, d = make_chord(r, FakeCaller({m: "B" for m in MODELS})), Recorder()
    store_job(r, "j1")
    spec = make_panel(chord.store)
    dispatch(chord.store, d, spec, spec.members[:1])
    started = time.time()
    assert run_member(chord, spec.panel_id, "m0").status == "answered"
    for k in (keys.calls(spec.panel_id), keys.votes(spec.panel_id), keys.tally(spec.panel_id),
              keys.member_lease(spec.panel_id, "m0")):  # fmt: skip
        r.delete(k)  # the writes the failover lost; the lease has run out since
    lease_s, bound = chord.store.leases.lease_s, 30.0
    assert watchdog.resend_overdue(chord.store, d, started + bound - 1, bound_s=bound) == 0
    assert watchdog.resend_overdue(chord.store, d, started + lease_s + bound + 1, bound_s=bound) == 1
    assert [m for _, m, _ in d.sent] == ["m0", "m0"]
