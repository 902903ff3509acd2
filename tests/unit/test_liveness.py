"""fetch_problem and Liveness as specifications, on stand-ins for Celery's consumer (the real
thing is broken and probed in tests/reliability/test_liveness.py)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from workers import liveness
from workers.liveness import Liveness, fetch_problem


def consumer(sent: float | None = 100.0, can_consume: bool = True, state: int = 1, queues: bool = True,
             connected: bool = True) -> Any:  # fmt: skip
    channel = SimpleNamespace(closed=False, active_queues={"q"} if queues else set(), _brpop_sent_at=sent,
                              qos=SimpleNamespace(can_consume=lambda: can_consume))  # fmt: skip
    return SimpleNamespace(blueprint=SimpleNamespace(state=state), connection=object() if connected else None,
                           task_consumer=SimpleNamespace(channel=channel))  # fmt: skip


def test_a_recent_fetch_or_a_full_pool_is_alive() -> None:
    assert fetch_problem(consumer(sent=100.0), now=110.0, stale_s=30) is None
    assert fetch_problem(consumer(sent=10.0, can_consume=False), now=110.0, stale_s=30) is None  # busy


@pytest.mark.parametrize(("c", "needle"), [
    (None, "not running"),
    (consumer(state=2), "not running"),
    (consumer(connected=False), "no broker connection"),
    (consumer(queues=False), "no queue"),
    (consumer(sent=10.0), "last fetched 100 s ago"),
    (consumer(sent=None), "never"),
])  # fmt: skip
def test_a_consumer_free_to_fetch_that_does_not_is_named_not_alive(c: Any, needle: str) -> None:
    problem = fetch_problem(c, now=110.0, stale_s=30)
    assert problem is not None and needle in problem


def test_the_heartbeat_pauses_at_once_and_the_worker_leaves_only_after_the_grace(tmp_path: Path,
                                                                                monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    now = [1000.0]
    left: list[str] = []
    monkeypatch.setattr(Liveness, "_leave", lambda self, problem, for_s: left.append(problem))
    live = Liveness(str(tmp_path / "hb"), stale_s=30, exit_after_s=60, clock=lambda: now[0])
    assert live.tick(consumer(sent=now[0])) is None and (tmp_path / "hb").exists()
    (tmp_path / "hb").unlink()
    now[0] += 100
    assert live.tick(consumer(sent=900.0)) is not None and not (tmp_path / "hb").exists()
    now[0] += 59
    live.tick(consumer(sent=900.0))
    assert left == []
    now[0] += 1
    live.tick(consumer(sent=900.0))
    assert len(left) == 1
    assert live.tick(consumer(sent=now[0])) is None  # fetching again: the grace restarts
    assert liveness.RUN == 1
