"""The member watchdog: a member whose task has not started within its bound is sent again.

A member message can vanish from the broker (kombu's Redis transport takes a message with BRPOP
and records it as unacked in a second round trip: a Redis stop between the two loses it; an
operator can delete it). Its panel would then wait for its deadline, 600 s by default. So:

- `expect` records each sent member in one sorted set, scored by the time it was sent;
- `started` removes it when its task begins (any delivery: the first, a redelivery, a re-send);
- `resend_overdue`, called from the deadline sweep every tick, sends again each member still not
  started `bound_s` after it was sent, while its tier's queue is empty (a member behind a backlog
  is waiting its turn, not lost) and its panel is undecided, at most MAX_RESENDS times.

Running a member twice is harmless: its vote counts once (vote.lua), and a recorded answer is
re-used, never bought again. The bound is the queue wait plus a margin: the queue wait is the
tier queue's own state (checked, not guessed), the margin `PANEL_WATCHDOG_S` (default 30 s).

The same holds for a job's `panel.run` message on `control`: the producer records each job in
`keys.JOB_WATCH` at submit, and a job still `queued` `bound_s` later, with `control` empty, has
its `panel.run` sent again (a repeated run is safe: it sends what the first one lacks).

    expect(r, "job-1.1", ["m0", "m1"], now)   # at dispatch
    started(r, "job-1.1", "m0")               # first thing in the member's task
    resend_overdue(rt, d, now, bound_s=30.0)  # each sweep tick: re-sends m1 if it never started
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

import redis

from producer import keys

if TYPE_CHECKING:
    from workers.panel.chord import Dispatcher
    from workers.runtime import Runtime

WATCH = f"{keys.PREFIX}watchdog:members"  # zset: "panel_id|member" -> time sent (unix s)
RESENDS = f"{keys.PREFIX}watchdog:resends"  # hash: "panel_id|member" -> times re-sent
MAX_RESENDS = 3
TIERS = ("economy", "workhorse", "frontier")
PRIORITY_SUFFIXES = ("", ":3", ":6", ":9")  # producer/settings.py priority_steps, sep ":"
log = logging.getLogger("panel.watchdog")


def _entry(panel_id: str, member: str) -> str:
    return f"{panel_id}|{member}"


def expect(r: redis.Redis, panel_id: str, members: Iterable[str], now: float | None = None) -> None:
    """Members of `panel_id` just sent: each must start within the bound."""
    sent = time.time() if now is None else now
    mapping = {_entry(panel_id, m): sent for m in members}
    if mapping:
        r.zadd(WATCH, mapping)


def started(r: redis.Redis, panel_id: str, member: str, call_budget_s: float) -> None:
    """The member's task began: its bound now starts `call_budget_s` later (a whole call with its
    retries), so a task that started and was then lost (its retry never published while Redis
    was down) is sent again too. The entry goes once the member's call is recorded."""
    r.zadd(WATCH, {_entry(panel_id, member): time.time() + call_budget_s}, xx=True)


def queued(r: redis.Redis, tier: str) -> int:
    """Messages waiting in a tier's queue (every priority list)."""
    return sum(queued_list(r, f"llm.{tier}"))


def queued_list(r: redis.Redis, queue: str) -> list[int]:
    pipe = r.pipeline(transaction=False)
    for suffix in PRIORITY_SUFFIXES:
        pipe.llen(f"{queue}{suffix}")
    return [int(n) for n in pipe.execute()]


def resend_overdue(rt: Runtime, d: Dispatcher, now: float, bound_s: float, limit: int = 200) -> int:
    """Re-send the members overdue by `bound_s`; returns how many were sent again."""
    resent = 0
    due = rt.redis.zrangebyscore(WATCH, 0, now - bound_s, start=0, num=limit)
    if not due:
        return 0
    backlog = {tier: queued(rt.redis, tier) for tier in TIERS}
    if all(backlog.values()):
        return 0  # every tier has a backlog (overload): members are waiting their turn, none re-sent
    for raw in due:
        entry = raw.decode()
        panel_id, member_id = entry.rsplit("|", 1)
        spec = rt.store.spec(panel_id)
        if spec is None or spec.batch or rt.store.decided(panel_id) or rt.store.call(panel_id, member_id):
            forget(rt.redis, entry)  # gone, batch lane (its own poll), decided, or already called
            continue
        m = spec.member(member_id)
        if backlog.get(m.tier) or (m.tier not in backlog and queued(rt.redis, m.tier)):
            continue  # behind other messages: waiting its turn, not lost
        n = int(rt.redis.hincrby(RESENDS, entry, 1))
        if n > MAX_RESENDS:
            log.error("watchdog: %s member %s never started after %d re-sends; leaving it to the deadline sweep",
                      panel_id, member_id, MAX_RESENDS)  # fmt: skip
            forget(rt.redis, entry)
            continue
        rt.redis.zadd(WATCH, {entry: now})  # the bound starts again for the new message
        rt.store.set_task_id(panel_id, member_id, d.member(spec, m))
        log.warning("watchdog: %s member %s not started %.0f s after it was sent: sent again (%d/%d)",
                    panel_id, member_id, bound_s, n, MAX_RESENDS)  # fmt: skip
        resent += 1
    return resent


def resend_lost_runs(rt: Runtime, now: float, bound_s: float, send_run: Callable[[str], None],
                     limit: int = 200) -> int:  # fmt: skip
    """Re-send `panel.run` for jobs still `queued` `bound_s` after submit while `control` is empty."""
    due = rt.redis.zrangebyscore(keys.JOB_WATCH, 0, now - bound_s, start=0, num=limit)
    if not due:
        return 0
    pipe = rt.redis.pipeline(transaction=False)
    for raw in due:
        pipe.hget(keys.job(raw.decode()), "status")
    statuses = pipe.execute()
    moved_on = [raw for raw, st in zip(due, statuses, strict=True) if st != b"queued"]
    if moved_on:
        rt.redis.zrem(keys.JOB_WATCH, *moved_on)
    waiting = [raw.decode() for raw, st in zip(due, statuses, strict=True) if st == b"queued"]
    if not waiting or sum(queued_list(rt.redis, "control")):
        return 0  # none lost, or they are behind other messages: waiting their turn
    for job_id in waiting:
        n = int(rt.redis.hincrby(RESENDS, job_id, 1))
        if n > MAX_RESENDS:
            log.error("watchdog: job %s never started after %d re-sends of panel.run", job_id, MAX_RESENDS)
            rt.redis.zrem(keys.JOB_WATCH, job_id)
            rt.redis.hdel(RESENDS, job_id)
            continue
        rt.redis.zadd(keys.JOB_WATCH, {job_id: now})
        send_run(job_id)
        log.warning("watchdog: job %s still queued %.0f s after submit: panel.run sent again (%d/%d)",
                    job_id, bound_s, n, MAX_RESENDS)  # fmt: skip
    return len(waiting)


CONCLUDED_OUTCOMES = ("quorum", "sweep", "arbiter", "failed")
SCAN_LOCK = f"{keys.PREFIX}watchdog:scan"


def conclude_stranded(rt: Runtime, d: Dispatcher, now: float, every_s: float, window_s: float,
                      limit: int = 500) -> int:  # fmt: skip
    """Conclude panels decided but never concluded, long before their deadline: the member that
    decided raised mid-conclusion (Redis went down) and its retry was never published, so nobody
    holds the conclusion lease and the deadline sweep would wait until `window_s` before the
    deadline. Runs at most once per `every_s` fleet-wide, over the `limit` nearest deadlines."""
    if not rt.redis.set(SCAN_LOCK, 1, nx=True, ex=max(1, round(every_s))):
        return 0
    pids = [raw.decode() for raw in rt.redis.zrangebyscore(keys.PANEL_DEADLINES, now + window_s, "+inf",
                                                           start=0, num=limit)]  # fmt: skip
    pipe = rt.redis.pipeline(transaction=False)
    for pid in pids:
        pipe.hmget(keys.panel(pid), ["decided", "once:concluded"])
        pipe.exists(keys.panel(pid) + ":concluding")
    rows = pipe.execute()
    acted = 0
    for pid, (decided, concluded), lease in zip(pids, rows[::2], rows[1::2], strict=True):
        if decided and decided.decode() in CONCLUDED_OUTCOMES and not concluded and not lease:
            log.warning("watchdog: panel %s decided (%s) but never concluded: concluding", pid, decided.decode())
            d.conclude(pid)
            acted += 1
    return acted


def forget(r: redis.Redis, entry: str) -> None:
    pipe = r.pipeline(transaction=False)
    pipe.zrem(WATCH, entry)
    pipe.hdel(RESENDS, entry)
    pipe.execute()
