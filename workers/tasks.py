"""Thin Celery entry points, called by name. Arguments are ids only; logic lives in
workers/jobs.py and workers/panel/. Names are what Flower shows.

Every job task runs under `attempt`: at most MAX_ATTEMPTS deliveries per task id, counting both
retries after an exception and redeliveries after a lost worker (acks_late puts the message back
when the process dies, so a task that kills its worker would otherwise loop forever and take a
worker down with it each time). The last attempt dead-letters the job with its reason.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable

from celery import Task

from producer import keys
from producer.wire import text
from workers import status
from workers.app import app
from workers.batch import lane as batch_lane
from workers.errors import failure_reason
from workers.jobs import conclude_panel, start_job
from workers.panel.act import carry_out
from workers.panel.arbiter import run_arbiter
from workers.panel.chord import TEST_HOOKS, abandon_member, run_member
from workers.panel.route import Route
from workers.panel.state import Member, PanelRun
from workers.panel.sweep import sweep
from workers.runtime import runtime

log = logging.getLogger("panel.tasks")
MAX_ATTEMPTS = 3
RETRY_BACKOFF_S = 1.0  # doubled per attempt: 1 s, 2 s, ...
ATTEMPTS_TTL_S = 24 * 3600
MEMBER_TASKS: dict[Route, tuple[str, str | None]] = {  # route -> (task, queue; None: the member's tier)
    "realtime": ("panel.member", None),
    "batch": ("panel.batch_member", "llm.batch"),
    # a batch panel's member made in real time (deadline near) pays, and says, the real-time price
    "batch_realtime": ("panel.batch_realtime", None),
}


class CeleryDispatcher:
    """The chord's Dispatcher on Celery: sends each action's task on the route it was given
    (workers/panel/route.py chose it); concludes in this process."""

    def member(self, spec: PanelRun, member: Member, route: Route) -> str:
        task, queue = MEMBER_TASKS[route]
        return str(app.send_task(task, args=[spec.panel_id, member.member], queue=queue or f"llm.{member.tier}").id)

    def arbiter(self, spec: PanelRun, route: Route) -> None:
        if route == "realtime":
            app.send_task("panel.arbiter", args=[spec.panel_id], queue="llm.frontier")
        else:  # through a batch, or in real time if the deadline is near when the task runs
            app.send_task("panel.batch_arbiter", args=[spec.panel_id], queue="llm.batch")

    def conclude(self, panel_id: str) -> None:
        conclude_panel(runtime(), self, panel_id)

    def revoke(self, task_ids: list[str]) -> None:
        app.control.revoke(task_ids)

    def run(self, job_id: str) -> None:
        app.send_task("panel.run", args=[job_id], queue="control", task_id=f"run-{job_id}")


dispatcher = CeleryDispatcher()


def job_of(panel_id: str) -> str:
    return panel_id.rsplit(".", 1)[0]  # panel ids are f"{job_id}.{n}" (workers/jobs.py new_panel)


def attempt(task: Task, job_id: str, body: Callable[[], str], abandon: Callable[[str], None] | None = None) -> str:
    """Run `body` as attempt n of this task id. An exception retries with backoff; the attempt
    after MAX_ATTEMPTS (or the last one failing) dead-letters instead of running: `abandon` first
    (a member gives up its vote and the panel goes on), else the whole job fails with the reason.

    A first delivery writes nothing: only a redelivered message (its worker was lost) or a retry
    counts in Redis, as attempt 2, 3, ..., so the common path costs no round trip here."""
    req = task.request
    task_id = str(req.id)
    key = keys.attempts(task_id)
    first = not (req.delivery_info or {}).get("redelivered") and not req.retries
    n = 1
    if not first:
        pipe = runtime().redis.pipeline(transaction=True)  # one key
        pipe.hincrby(key, "n", 1)
        pipe.hset(key, "last_worker", f"{socket.gethostname()} pid {os.getpid()}")
        pipe.expire(key, ATTEMPTS_TTL_S)
        n = int(pipe.execute()[0]) + 1
    if n > MAX_ATTEMPTS:
        last = runtime().redis.hget(key, "reason")
        reason = text(last) if last else f"its worker was lost mid-task {n - 1} times"
        return give_up(task, job_id, reason, n - 1, abandon)
    try:
        _test_poison(job_id)
        out = body()
    except Exception as e:
        reason = failure_reason(e)
        pipe = runtime().redis.pipeline(transaction=True)  # one key
        pipe.hset(key, "reason", reason)
        pipe.expire(key, ATTEMPTS_TTL_S)
        pipe.execute()
        if n >= MAX_ATTEMPTS:
            return give_up(task, job_id, reason, n, abandon)
        log.warning("%s[%s] attempt %d/%d failed (%s); retrying", task.name, task_id, n, MAX_ATTEMPTS, type(e).__name__)
        raise task.retry(exc=e, countdown=RETRY_BACKOFF_S * 2 ** (n - 1), max_retries=None) from None
    if not first:
        runtime().redis.delete(key)
    return out


def give_up(task: Task, job_id: str, reason: str, attempts: int, abandon: Callable[[str], None] | None) -> str:
    rt = runtime()
    if abandon is not None:
        try:
            abandon(reason)
            rt.redis.delete(keys.attempts(str(task.request.id)))
            return "abandoned"
        except Exception as e:  # the panel itself is unreadable: the job cannot go on
            log.warning("%s[%s] could not abandon its member (%s); failing the job", task.name, task.request.id, e)
    rt.jobs.dead_letter(job_id, str(task.name), str(task.request.id), reason, attempts, send=dispatcher.run)
    rt.redis.delete(keys.attempts(str(task.request.id)))
    return "dead-letter"


def _test_poison(job_id: str) -> None:
    """Test-only (PANEL_TEST_HOOKS=1): a job armed as poison raises, or kills its worker, on every
    attempt, so the reliability suite can prove it is dead-lettered and never blocks the queue."""
    if not TEST_HOOKS:
        return
    r = runtime().redis
    mode = r.get(keys.test_poison(job_id))
    if mode is not None:
        r.incr(keys.test_poison_hits(job_id))  # counted apart from `attempt`'s own bookkeeping
    if mode == b"raise":
        raise RuntimeError("poison job (test hook): this task fails every time")
    if mode == b"exit":
        os._exit(137)  # what the OOM killer or a segfault looks like from the broker's side


def _member_turn(panel_id: str, member_id: str, batch: bool | None = None) -> str:
    rt = runtime()
    with rt.watching(panel_id):  # from before the member's start read: its call needs no decided check
        turn = run_member(rt.chord, panel_id, member_id, batch=batch)
    carry_out(rt.store, dispatcher, turn)
    return turn.status


def _abandon(panel_id: str, member_id: str) -> Callable[[str], None]:
    def abandon(reason: str) -> None:
        rt = runtime()
        carry_out(rt.store, dispatcher, abandon_member(rt.chord, panel_id, member_id, reason))

    return abandon


def _arbiter_turn(panel_id: str) -> str:
    rt = runtime()
    turn = run_arbiter(rt.chord, panel_id)
    carry_out(rt.store, dispatcher, turn)
    return turn.status


@app.task(name="panel.run", bind=True, acks_late=True)
def run(self: Task, job_id: str) -> str:
    """Plan a job and send its first panel."""
    return attempt(self, job_id, lambda: start_job(runtime(), dispatcher, job_id))


@app.task(name="panel.member", bind=True, acks_late=True)
def member(self: Task, panel_id: str, member_id: str) -> str:
    """One member's call and vote."""
    return attempt(self, job_of(panel_id), lambda: _member_turn(panel_id, member_id),
                   abandon=_abandon(panel_id, member_id))  # fmt: skip


@app.task(name="panel.arbiter", bind=True, acks_late=True)
def arbiter(self: Task, panel_id: str) -> str:
    return attempt(self, job_of(panel_id), lambda: _arbiter_turn(panel_id))


@app.task(name="panel.batch_member", bind=True, acks_late=True)
def batch_member(self: Task, panel_id: str, member_id: str) -> str:
    """Queue a member's call for its model's next provider batch (no provider call here)."""
    return attempt(self, job_of(panel_id), lambda: batch_lane.enqueue_member(runtime(), panel_id, member_id, dispatcher),
                   abandon=_abandon(panel_id, member_id))  # fmt: skip


@app.task(name="panel.batch_flush", ignore_result=True, expires=30)
def batch_flush() -> int:
    return len(batch_lane.flush(runtime()))


@app.task(name="panel.batch_poll", ignore_result=True, expires=30)
def batch_poll() -> int:
    return batch_lane.poll(runtime(), dispatcher)


@app.task(name="panel.batch_arbiter", bind=True, acks_late=True)
def batch_arbiter(self: Task, panel_id: str) -> str:
    """Queue a batch panel's arbiter for the next batch (in real time when the deadline is near)."""
    return attempt(self, job_of(panel_id), lambda: batch_lane.enqueue_arbiter(runtime(), dispatcher, panel_id))


@app.task(name="panel.batch_realtime", bind=True, acks_late=True)
def batch_realtime(self: Task, panel_id: str, member_id: str) -> str:
    """A batch panel's member made in real time: its deadline is too near for another batch."""
    return attempt(self, job_of(panel_id), lambda: _member_turn(panel_id, member_id, batch=False),
                   abandon=_abandon(panel_id, member_id))  # fmt: skip


@app.task(name="panel.sweep", ignore_result=True, expires=30)
def deadline_sweep() -> int:
    rt = runtime()
    status.publish(rt)
    def dead_letter(job_id: str, task: str, task_id: str, reason: str, attempts: int) -> bool:
        return rt.jobs.dead_letter(job_id, task, task_id, reason, attempts, send=dispatcher.run)

    return sweep(rt.store, dispatcher, dead_letter, watchdog_s=rt.settings.watchdog_s, send_run=dispatcher.run)
