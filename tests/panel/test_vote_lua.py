"""vote.lua and decide.lua as specifications, on fakeredis, the real redis-server and a 3-node Redis Cluster."""

from __future__ import annotations

import threading
import time
from collections import Counter

import fakeredis
import pytest
import redis
from hypothesis import given, settings
from hypothesis import strategies as st

from workers.panel.record import Call
from workers.panel.run import Member, PanelRun
from workers.panel.state import PanelStore


def _spec(pid: str, n: int = 3, quorum: int = 2, dispatch: str = "parallel") -> PanelRun:
    return PanelRun(panel_id=pid, job_id="j", stage="panel", attempt=1,
                     members=[Member(f"m{i}", "gpt-4o-mini", "economy") for i in range(n)], quorum=quorum,
                     dispatch=dispatch, agreement={"rule": "exact"}, arbiter="gpt-4o", rubric=[],
                     deadline=time.time() + 60)  # type: ignore[arg-type]  # fmt: skip


@pytest.fixture(params=["fake", "real", "cluster"])
def store(request: pytest.FixtureRequest) -> PanelStore:
    if request.param == "fake":
        return PanelStore(fakeredis.FakeRedis())
    if request.param == "cluster":
        return PanelStore(request.getfixturevalue("cluster_client"))
    r = request.getfixturevalue("redis_client")
    return PanelStore(r)


def test_quorum_of_two_decides_on_second_agreeing_vote(store: PanelStore) -> None:
    store.create(_spec("p"), 60)
    assert store.vote("p", "m0", "a", 3).status == "pending"
    out = store.vote("p", "m1", "a", 3)
    assert (out.status, out.answer) == ("quorum", "a")
    late = store.vote("p", "m2", "b", 3)
    assert (late.status, late.outcome, late.answer) == ("decided", "quorum", "a")


def test_redelivered_member_does_not_count_twice(store: PanelStore) -> None:
    store.create(_spec("p"), 60)
    store.vote("p", "m0", "a", 3)
    again = store.vote("p", "m0", "a", 3)
    assert again.status == "pending" and again.duplicate
    assert store.tally("p") == {"a": 1}


def test_disagreement_exhausts_once_then_arbiter_replaces_it_once(store: PanelStore) -> None:
    store.create(_spec("p"), 60)
    store.vote("p", "m0", "a", 3)
    store.vote("p", "m1", "b", 3)
    out = store.vote("p", "m2", "c", 3)
    assert (out.status, out.distinct) == ("exhausted", 3)
    assert store.decide("p", "sweep")[0] is False  # the sweep cannot decide it again
    assert store.decide("p", "arbiter", "b", replace_exhausted=True) == (True, "arbiter", "b")
    assert store.decide("p", "arbiter", "c", replace_exhausted=True)[0] is False


def test_failed_members_vote_nothing_and_panel_still_ends(store: PanelStore) -> None:
    store.create(_spec("p"), 60)
    store.vote("p", "m0", None, 3)
    store.vote("p", "m1", "a", 3)
    out = store.vote("p", "m2", None, 3)
    assert (out.status, out.distinct) == ("exhausted", 1)  # one answer: nothing for an arbiter to settle
    assert store.tally("p") == {"a": 1}
    assert store.vote("p", "m2", None, 3).distinct == 1  # a redelivered vote is told the same


def test_staged_sends_next_member_only_on_disagreement(store: PanelStore) -> None:
    store.create(_spec("p", dispatch="staged"), 60)
    assert store.state("p")["dispatched"] == "2"
    store.vote("p", "m0", "a", 1)
    nxt = store.vote("p", "m1", "b", 1)
    assert (nxt.status, nxt.send_from, nxt.send_to) == ("next", 2, 3)
    assert store.vote("p", "m2", "b", 1).status == "quorum"


def test_sweep_decides_with_plurality(store: PanelStore) -> None:
    store.create(_spec("p"), 60)
    store.vote("p", "m0", "a", 3)
    assert store.decide("p", "sweep") == (True, "sweep", "a")


@settings(max_examples=200, deadline=None)
@given(votes=st.lists(st.tuples(st.sampled_from(["m0", "m1", "m2", "m3", "m4"]),
                                st.sampled_from(["a", "b", "c", ""])), min_size=1, max_size=25),
       quorum=st.integers(1, 5))  # fmt: skip
def test_any_order_with_redeliveries_decides_at_most_once(votes: list[tuple[str, str]], quorum: int) -> None:
    store = PanelStore(fakeredis.FakeRedis())
    store.create(_spec("p", n=5, quorum=quorum), 60)
    first: dict[str, str] = {}
    winners = []
    for member, answer in votes:
        first.setdefault(member, answer)
        out = store.vote("p", member, answer or None, 5)
        if out.status in ("quorum", "exhausted"):
            winners.append(out)
    assert len(winners) <= 1
    counts = Counter(a for a in first.values() if a)
    assert store.tally("p") == dict(counts)  # each member counted once, with its first answer
    if winners and winners[0].status == "quorum":
        assert counts[winners[0].answer] >= quorum
    if max(counts.values(), default=0) >= quorum:
        assert winners and winners[0].status == "quorum"


def test_concurrent_voters_on_real_redis_have_exactly_one_winner(redis_client) -> None:  # type: ignore[no-untyped-def]
    for trial in range(30):
        pid = f"p{trial}"
        PanelStore(redis_client).create(_spec(pid, n=8, quorum=3), 60)
        results: list[str] = []
        barrier = threading.Barrier(8)

        def voter(i: int, pid: str, barrier: threading.Barrier, results: list[str]) -> None:
            s = PanelStore(redis_client)
            barrier.wait()
            results.append(s.vote(pid, f"m{i}", "a" if i % 2 else "b", 8).status)

        threads = [threading.Thread(target=voter, args=(i, pid, barrier, results)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert results.count("quorum") == 1 and results.count("exhausted") == 0


def _answered(member: str, key: str) -> Call:
    return Call(member=member, model="gpt-4o-mini", provider="openai", tier="economy", status="answered",
                answer_key=key, text=key, cost_usd=0.001)  # fmt: skip


def test_a_record_and_its_vote_in_one_round_trip_count_once_and_decide(store: PanelStore) -> None:
    """put_call_and_vote: the record lands with its vote (a pipeline on a single Redis, two steps on
    a cluster); a redelivered copy sends both again and the vote still counts once."""
    store.create(_spec("p"), 60)
    assert store.put_call_and_vote("p", _answered("m0", "a"), 3).status == "pending"
    stored = store.call("p", "m0")
    assert stored is not None and stored.answer_key == "a" and stored.ended_at is not None
    again = store.put_call_and_vote("p", _answered("m0", "a"), 3)
    assert again.duplicate and store.tally("p") == {"a": 1}
    out = store.put_call_and_vote("p", _answered("m1", "a"), 3)
    assert (out.status, out.answer) == ("quorum", "a")
    assert set(store.calls("p")) == {"m0", "m1"}


def test_a_vote_script_redis_lost_is_loaded_and_the_vote_cast_once(redis_client: redis.Redis) -> None:
    """After a Redis restart (scripts flushed) the pipeline's vote fails with NOSCRIPT while its
    record was written: the vote is sent again on its own (loading the script), once."""
    store = PanelStore(redis_client)
    store.create(_spec("p"), 60)
    redis_client.script_flush()
    assert store.put_call_and_vote("p", _answered("m0", "a"), 3).status == "pending"
    assert store.call("p", "m0") is not None and store.votes("p") == {"m0": "a"}
    assert store.put_call_and_vote("p", _answered("m1", "a"), 3).status == "quorum"
