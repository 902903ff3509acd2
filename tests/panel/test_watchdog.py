"""The watchdog's choices on fakeredis: which lost `panel.run`s it sends again, and when it waits."""

from __future__ import annotations

import fakeredis
import orjson

from producer import keys
from workers.panel import watchdog

NOW = 1_000_000.0


def seeded(statuses: dict[str, str], panels: tuple[str, ...] = (), dispatched: tuple[str, ...] = ()) -> fakeredis.FakeRedis:
    r = fakeredis.FakeRedis()
    for job_id, status in statuses.items():
        r.hset(keys.job(job_id), "status", status)
        r.zadd(keys.JOB_WATCH, {job_id: NOW - 60})
    for job_id in panels:
        r.rpush(keys.job(job_id) + ":panels", orjson.dumps({"panel_id": f"{job_id}.1"}))
        r.hset(keys.panel(f"{job_id}.1"), "spec", b"{}")
        if job_id in dispatched:
            r.hset(keys.panel(f"{job_id}.1"), "task:m0", b"t0")
    return r


def test_a_job_queued_or_running_without_a_dispatched_panel_past_the_bound_is_run_again() -> None:
    r = seeded({"q": "queued", "run": "running", "planned": "running", "undispatched": "running", "done": "decided"},
               panels=("planned", "undispatched"), dispatched=("planned",))  # fmt: skip
    sent: list[str] = []
    assert watchdog.resend_lost_runs(r, NOW, 30.0, sent.append) == 3
    assert sorted(sent) == ["q", "run", "undispatched"]
    assert {m.decode() for m in r.zrange(keys.JOB_WATCH, 0, -1)} == {"q", "run", "undispatched"}  # bound restarted
    assert watchdog.resend_lost_runs(r, NOW, 30.0, sent.append) == 0  # not due again yet


def test_nothing_is_sent_while_control_has_a_backlog_or_before_the_bound() -> None:
    r = seeded({"q": "queued"})
    r.rpush("control", b"x")
    sent: list[str] = []
    assert watchdog.resend_lost_runs(r, NOW, 30.0, sent.append) == 0 and sent == []
    r.delete("control")
    assert watchdog.resend_lost_runs(r, NOW, 120.0, sent.append) == 0 and sent == []  # sent 60 s ago only


def test_a_run_that_never_starts_is_given_up_after_three_resends() -> None:
    r = seeded({"q": "queued"})
    sent: list[str] = []
    for i in range(5):
        watchdog.resend_lost_runs(r, NOW + i * 100, 30.0, sent.append)
    assert sent == ["q"] * watchdog.MAX_RESENDS and r.zscore(keys.JOB_WATCH, "q") is None
