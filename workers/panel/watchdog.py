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
    resend_overdue(store, d, now, bound_s=30.0)  # each sweep tick: re-sends m1 if it never started
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING

import orjson
import redis
from redis.client import Pipeline

from producer import keys
from producer.wire import text

if TYPE_CHECKING:
    from workers.panel.ports import Dispatcher
    from workers.panel.state import PanelStore

WATCH = keys.WATCH_MEMBERS  # zset: "panel_id|member" -> time sent (unix s)
RESENDS = keys.WATCH_RESENDS  # hash: "panel_id|member" -> times re-sent
MAX_RESENDS = 3
TIERS = ("economy", "workhorse", "frontier")
PRIORITY_SUFFIXES = ("", ":3", ":6", ":9")  # producer/settings.py priority_steps, sep ":"
log = logging.getLogger("panel.watchdog")


def _entry(panel_id: str, member: str) -> str:
    return f"{panel_id}|{member}"


def expect(r: redis.Redis | Pipeline, panel_id: str, members: Iterable[str], now: float | None = None) -> None:
    """Members of `panel_id` about to be sent: each must start within the bound. Given a
    pipeline, the entries are queued on it (a new panel's MULTI sends them: workers/jobs.py)."""
    sent = time.time() if now is None else now
    mapping = {_entry(panel_id, m): sent for m in members}
    if mapping:
        r.zadd(WATCH, mapping)


def started(r: redis.Redis | Pipeline, panel_id: str, member: str, call_budget_s: float | None = None) -> None:
    """The member's task began: its bound now starts `call_budget_s` later, so a task that started
    and was then lost (its retry never published while Redis was down, its record lost with a
    failover) is sent again too. The chord passes the member lease's length: a copy still calling
    holds its lease and `resend_overdue` leaves it (default: a whole call with its retries, for
    callers without a lease). The entry goes once the member's call is recorded. Given a
    pipeline, the mark is queued on it (a member's start read sends it: `PanelStore.turn`)."""
    budget = 2 * float(os.environ.get("PANEL_CALL_TIMEOUT_S", 120)) if call_budget_s is None else call_budget_s
    r.zadd(WATCH, {_entry(panel_id, member): time.time() + budget}, xx=True)


def queued(r: redis.Redis, tier: str) -> int:
    """Messages waiting in a tier's queue (every priority list)."""
    return sum(queued_list(r, f"llm.{tier}"))


def queued_list(r: redis.Redis, queue: str) -> list[int]:
    pipe = r.pipeline(transaction=False)
    for suffix in PRIORITY_SUFFIXES:
        pipe.llen(f"{queue}{suffix}")
    return [int(n) for n in pipe.execute()]


def resend_overdue(store: PanelStore, d: Dispatcher, now: float, bound_s: float, limit: int = 200) -> int:
    """Re-send the members overdue by `bound_s`; returns how many were sent again."""
    from workers.panel.route import route

    r = store.r
    resent = 0
    due: list[bytes] = r.zrangebyscore(WATCH, 0, now - bound_s, start=0, num=limit)  # type: ignore[assignment]
    if not due:
        return 0
    backlog = {tier: queued(r, tier) for tier in TIERS}
    if all(backlog.values()):
        return 0  # every tier has a backlog (overload): members are waiting their turn, none re-sent
    for raw in due:
        entry = text(raw)
        panel_id, member_id = entry.rsplit("|", 1)
        start = store.turn(panel_id, member_id)
        spec = start.spec
        if spec is None or start.decided or start.prior:
            forget(r, entry)  # gone, decided, or already called
            continue
        if start.running:
            continue  # a copy holds its lease, calling now: looked at again next tick (a dead one's lease expires)
        m = spec.member(member_id)
        lane = route(spec)
        if lane == "batch":
            forget(r, entry)  # the batch lane's lines are polled, not queued
            continue
        if backlog.get(m.tier) or (m.tier not in backlog and queued(r, m.tier)):
            continue  # behind other messages: waiting its turn, not lost
        n = int(r.hincrby(RESENDS, entry, 1))
        if n > MAX_RESENDS:
            log.error("watchdog: %s member %s never started after %d re-sends; leaving it to the deadline sweep",
                      panel_id, member_id, MAX_RESENDS)  # fmt: skip
            forget(r, entry)
            continue
        r.zadd(WATCH, {entry: now})  # the bound starts again for the new message
        store.set_task_ids(panel_id, {member_id: d.member(spec, m, lane)})
        log.warning("watchdog: %s member %s not started %.0f s after it was sent: sent again (%d/%d)",
                    panel_id, member_id, bound_s, n, MAX_RESENDS)  # fmt: skip
        resent += 1
    return resent


def resend_lost_runs(r: redis.Redis, now: float, bound_s: float, send_run: Callable[[str], None],
                     limit: int = 200) -> int:  # fmt: skip
    """Re-send `panel.run` for jobs that have no dispatched panel `bound_s` after submit while
    `control` is empty: still `queued` (the message vanished), or `running` with no panel, or a
    panel none of whose members was sent (the run raised in a Redis outage and its retry was
    never published). A repeated run plans again, or sends what its panel lacks."""
    due: list[bytes] = r.zrangebyscore(keys.JOB_WATCH, 0, now - bound_s, start=0, num=limit)  # type: ignore[assignment]
    if not due:
        return 0
    pipe = r.pipeline(transaction=False)
    for raw in due:
        pipe.hget(keys.job(text(raw)), "status")
        pipe.lindex(keys.job_panels(text(raw)), -1)
    got = pipe.execute()
    statuses, lasts = got[0::2], got[1::2]
    pipe = r.pipeline(transaction=False)
    for last in lasts:  # a panel created but never dispatched (the run raised before any send)
        pipe.hkeys(keys.panel(orjson.loads(last)["panel_id"])) if last else pipe.echo(b"")
    fields = pipe.execute()
    stuck = {raw: st in (b"queued", b"running") and (
                 not last or not any(f.startswith(b"task:") or f == b"decided" for f in (fl or [])))
             for raw, st, last, fl in zip(due, statuses, lasts, fields, strict=True)}  # fmt: skip
    moved_on = [raw for raw, s in stuck.items() if not s]
    if moved_on:
        r.zrem(keys.JOB_WATCH, *[text(raw) for raw in moved_on])
    waiting = [text(raw) for raw, s in stuck.items() if s]
    if not waiting or any(queued_list(r, "control")):
        return 0  # none lost, or they are behind other messages: waiting their turn
    for job_id in waiting:
        n = int(r.hincrby(RESENDS, job_id, 1))
        if n > MAX_RESENDS:
            log.error("watchdog: job %s never started after %d re-sends of panel.run", job_id, MAX_RESENDS)
            r.zrem(keys.JOB_WATCH, job_id)
            r.hdel(RESENDS, job_id)
            continue
        r.zadd(keys.JOB_WATCH, {job_id: now})
        send_run(job_id)
        log.warning("watchdog: job %s has no panel %.0f s after submit: panel.run sent again (%d/%d)",
                    job_id, bound_s, n, MAX_RESENDS)  # fmt: skip
    return len(waiting)


CONCLUDED_OUTCOMES = ("quorum", "sweep", "arbiter", "failed")
SCAN_LOCK = keys.WATCH_SCAN_LOCK


def conclude_stranded(r: redis.Redis, d: Dispatcher, now: float, every_s: float, window_s: float,
                      limit: int = 500) -> int:  # fmt: skip
    """Conclude panels decided but never concluded, long before their deadline: the member that
    decided raised mid-conclusion (Redis went down) and its retry was never published, so nobody
    holds the conclusion lease and the deadline sweep would wait until `window_s` before the
    deadline. Runs at most once per `every_s` fleet-wide, over the `limit` nearest deadlines."""
    if not r.set(SCAN_LOCK, 1, nx=True, ex=max(1, round(every_s))):
        return 0
    raws: list[bytes] = r.zrangebyscore(keys.PANEL_DEADLINES, now + window_s, "+inf", start=0, num=limit)  # type: ignore[assignment]
    pids = [text(raw) for raw in raws]
    pipe = r.pipeline(transaction=False)
    for pid in pids:
        pipe.hmget(keys.panel(pid), ["decided", "once:concluded"])
        pipe.exists(keys.concluding(pid))
    rows = pipe.execute()
    acted = 0
    for pid, (decided, concluded), lease in zip(pids, rows[::2], rows[1::2], strict=True):
        if decided and decided.decode() in CONCLUDED_OUTCOMES and not concluded and not lease:
            log.warning("watchdog: panel %s decided (%s) but never concluded: concluding", pid, decided.decode())
            d.conclude(pid)
            acted += 1
    return acted


def queue_forget_members(pipe: Pipeline, panels: Mapping[str, Iterable[str]]) -> None:
    """Queue the removal of the entries of these panels' members (a finalised job's). Without it
    an entry stayed until the sweep found it due (`started` pushes it a whole call budget on, 240 s)
    and forgot it, at most `limit` (200) per tick: past ~66 panels/s of three members at the default
    1 s tick, the zset grew without bound, and it held ~4,000 entries at 5 panels/s."""
    entries = [_entry(pid, m) for pid, members in panels.items() for m in members]
    if entries:
        pipe.zrem(WATCH, *entries)
        pipe.hdel(RESENDS, *entries)


def forget(r: redis.Redis, entry: str) -> None:
    pipe = r.pipeline(transaction=False)
    pipe.zrem(WATCH, entry)
    pipe.hdel(RESENDS, entry)
    pipe.execute()
