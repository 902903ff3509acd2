"""Thin Celery entry points, called by name. Arguments are ids only; logic lives in
workers/jobs.py and workers/panel/. Names are what Flower shows.

Every job task runs under `attempt`: at most MAX_ATTEMPTS failed attempts per task id, an
exception or a death of the process running it alone, then it dead-letters with its reason.
acks_late puts a message back when its worker dies, so a task that kills its worker would
otherwise loop forever; the tasks that died beside it are not charged for it (see `attempt`).
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable, Mapping, Sequence

import redis
from celery import Task
from kombu.exceptions import KombuError

from producer import keys
from producer.contract import RUN_TASK, run_task_id
from producer.settings import Settings
from producer.wire import text
from workers import census, quarantine, status
from workers.app import app
from workers.batch import lane as batch_lane
from workers.duties import Duty
from workers.errors import failure_reason
from workers.jobs import conclude_panel, start_job
from workers.panel.act import carry_out
from workers.panel.admission import Ask
from workers.panel.arbiter import run_arbiter
from workers.panel.chord import TEST_HOOKS, abandon_member, run_member
from workers.panel.route import Route
from workers.panel.run import Member, PanelRun, Read
from workers.panel.sweep import sweep
from workers.runtime import runtime

log = logging.getLogger("panel.tasks")
MAX_ATTEMPTS = 3
# Losses no attempt was charged for (a suspect's worker lost while it waited its turn to run
# alone, say): bounds a loop the census could not break
MAX_LOSSES = 5
QUARANTINE_CALLS = 4  # a suspect alone may take this many call timeouts (retries, a fallback) plus a minute
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
        task = MEMBER_TASKS[route][0]
        return str(app.send_task(task, args=[spec.panel_id, member.member], queue=_queue(route, member)).id)

    def members(self, spec: PanelRun, members: Sequence[Member], route: Route,
                asks: Mapping[str, Ask] | None = None) -> dict[str, str]:  # fmt: skip
        """The members' messages in one pipeline (kombu's publish batch: their LPUSHes sent
        together). A batch that fails is "delivery uncertain" (some may have gone) and kombu does
        not retry it: each member is then sent on its own, with Celery's publish retries; a copy
        sent twice votes once and calls once (its lease). A broker connection whose pipelines
        could be replayed (kombu's `supports_batch_publish`) sends them one by one. `asks`: each
        member's admission ask, in its kwargs (workers/panel/admission.py); not on a re-send."""
        task = MEMBER_TASKS[route][0]
        sent: dict[str, str] = {}
        try:
            with app.producer_or_acquire() as producer, producer.batch():
                for m in members:
                    ask = asks.get(m.member) if asks else None
                    sent[m.member] = str(app.send_task(task, args=[spec.panel_id, m.member], queue=_queue(route, m),
                                                       kwargs={"admit": ask.args()} if ask else None,
                                                       producer=producer).id)  # fmt: skip
        except (KombuError, redis.RedisError, OSError) as e:
            log.warning("panel %s: the members' batch publish failed (%s): sending each on its own", spec.panel_id, e)
            return {m.member: self.member(spec, m, route) for m in members}
        return sent

    def arbiter(self, spec: PanelRun, route: Route) -> None:
        if route == "realtime":
            app.send_task("panel.arbiter", args=[spec.panel_id], queue="llm.frontier")
        else:  # through a batch, or in real time if the deadline is near when the task runs
            app.send_task("panel.batch_arbiter", args=[spec.panel_id], queue="llm.batch")

    def conclude(self, panel_id: str, cancel: bool = False, lease: str = "", read: Read | None = None) -> list[str] | None:
        return conclude_panel(runtime(), self, panel_id, cancel=cancel, lease=lease, read=read)

    def revoke(self, task_ids: list[str]) -> None:
        app.control.revoke(task_ids)

    def run(self, job_id: str) -> None:
        app.send_task(RUN_TASK, args=[job_id], queue="control", task_id=run_task_id(job_id))


dispatcher = CeleryDispatcher()


def _queue(route: Route, member: Member) -> str:
    return MEMBER_TASKS[route][1] or f"llm.{member.tier}"


def job_of(panel_id: str) -> str:
    return panel_id.rsplit(".", 1)[0]  # panel ids are f"{job_id}.{n}" (workers/jobs.py new_panel)


def attempt(task: Task, job_id: str, body: Callable[[], str], abandon: Callable[[str], None] | None = None) -> str:
    """Run `body` as this task id's next attempt. An exception is a failed attempt, retried with
    backoff; the MAX_ATTEMPTS-th failed attempt dead-letters: `abandon` first (a member gives up
    its vote and the panel goes on), else the whole job fails with the reason.

    A first delivery reads and writes nothing here. A redelivered message asks the census
    (workers/census.py) whether its worker was lost mid-task: if so it is a suspect, never
    charged for that loss (the task that killed the process and its neighbours look alike), and
    it runs its attempts alone in a child process (workers/quarantine.py), where a death is its
    own and is charged as a failed attempt. A message a live worker gave back (a broker
    reconnect, a task past the visibility timeout) runs here, uncharged; if its first copy is
    still running in this process, it waits for that copy instead."""
    req = task.request
    task_id = str(req.id)
    redelivered = bool((req.delivery_info or {}).get("redelivered"))
    if not redelivered and not req.retries:
        return _run_here(task, job_id, body, abandon, charged=0, written=False)
    rt = runtime()
    bound_s = QUARANTINE_CALLS * rt.settings.call_timeout_s + 60  # a run alone, or the copy running here
    running = census.CENSUS.running_here(task_id) if redelivered else None
    if running is not None and running.wait(bound_s):  # given back past the visibility timeout while it ran
        return "duplicate"  # here: that copy has acted (or retried) for both
    key = keys.attempts(task_id)
    pipe = rt.redis.pipeline(transaction=True)  # one key
    if redelivered:
        lost = census.verdict(rt.redis, task_id).kind == "lost"
        census.CENSUS.started(task_id)  # this process holds it now
        if lost:
            pipe.hincrby(key, "lost", 1)
            pipe.hset(key, mapping={"alone": 1, "back_on": f"{socket.gethostname()} pid {os.getpid()}"})
    pipe.hgetall(key)
    pipe.expire(key, ATTEMPTS_TTL_S)
    rec = {k.decode(): v for k, v in pipe.execute()[-2].items()}
    charged, lost_n = int(rec.get("n", 0)), int(rec.get("lost", 0))
    if charged >= MAX_ATTEMPTS:  # charged, then lost before giving up
        return give_up(task, job_id, text(rec.get("reason", b"")), charged, abandon)
    if lost_n > MAX_LOSSES:
        return give_up(task, job_id, f"its worker was lost mid-task {lost_n} times", charged, abandon)
    if "alone" not in rec:
        return _run_here(task, job_id, body, abandon, charged, written=True)
    got = quarantine.run_alone(str(task.name), list(req.args or ()), job_id, slots=rt.settings.quarantine_slots,
                               timeout_s=bound_s)  # fmt: skip
    if got.kind == "ok":
        rt.redis.delete(key)
        return got.out
    exc = quarantine.KilledItsProcess(str(task.name), got.exit_code) if got.kind == "died" else RuntimeError(got.reason)
    return _failed(task, job_id, abandon, charged, got.reason or str(exc), exc)


def _run_here(task: Task, job_id: str, body: Callable[[], str], abandon: Callable[[str], None] | None,
              charged: int, written: bool) -> str:  # fmt: skip
    try:
        _test_poison(job_id, str(task.name), list(task.request.args or ()))
        out = body()
    except Exception as e:
        return _failed(task, job_id, abandon, charged, failure_reason(e), e)
    if written:
        runtime().redis.delete(keys.attempts(str(task.request.id)))
    return out


def _failed(task: Task, job_id: str, abandon: Callable[[str], None] | None, charged: int, reason: str,
            e: BaseException) -> str:  # fmt: skip
    """Charge a failed attempt; retry with backoff, or give up at MAX_ATTEMPTS."""
    key = keys.attempts(str(task.request.id))
    pipe = runtime().redis.pipeline(transaction=True)  # one key
    pipe.hincrby(key, "n", 1)
    pipe.hset(key, "reason", reason)
    pipe.expire(key, ATTEMPTS_TTL_S)
    n = int(pipe.execute()[0])
    if n >= MAX_ATTEMPTS:
        return give_up(task, job_id, reason, n, abandon)
    log.warning("%s[%s] attempt %d/%d failed (%s); retrying", task.name, task.request.id, n, MAX_ATTEMPTS, type(e).__name__)
    raise task.retry(exc=e, countdown=RETRY_BACKOFF_S * 2 ** (n - 1), max_retries=None) from None


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


def _test_poison(job_id: str, task: str, args: list[str]) -> None:
    """Test-only (PANEL_TEST_HOOKS=1): a job armed as poison raises, or kills its process, on
    every attempt, so the reliability suite can prove it is dead-lettered, never blocks the queue
    and costs its neighbours nothing. Armed as `raise` or `exit`, optionally `:<task name>` (only
    that task of the job is poison) and `:<first argument>` (e.g. only one panel's members)."""
    if not TEST_HOOKS:
        return
    r = runtime().redis
    armed = r.get(keys.test_poison(job_id))
    if armed is None:
        return
    mode, _, only = text(armed).partition(":")
    only_task, _, only_arg = only.partition(":")
    if (only_task and only_task != task) or (only_arg and (not args or args[0] != only_arg)):
        return
    r.incr(keys.test_poison_hits(job_id))  # counted apart from `attempt`'s own bookkeeping
    if mode == "raise":
        raise RuntimeError("poison job (test hook): this task fails every time")
    if mode == "exit":
        os._exit(137)  # what the OOM killer or a segfault looks like from the broker's side


def _member_turn(panel_id: str, member_id: str, batch: bool | None = None, admit: object = None) -> str:
    rt = runtime()
    with rt.watching(panel_id):  # from before the member's start read: its call needs no decided check
        turn = run_member(rt.chord, panel_id, member_id, batch=batch, ask=Ask.from_args(admit))
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


def _run_job(job_id: str) -> str:
    return start_job(runtime(), dispatcher, job_id)


def _batch_member(panel_id: str, member_id: str) -> str:
    return batch_lane.enqueue_member(runtime(), panel_id, member_id, dispatcher)


def _batch_arbiter(panel_id: str) -> str:
    return batch_lane.enqueue_arbiter(runtime(), dispatcher, panel_id)


def _realtime_member(panel_id: str, member_id: str) -> str:
    return _member_turn(panel_id, member_id, batch=False)


# What each job task does, by name: run in the worker, or alone in a quarantine child
BODIES: dict[str, Callable[..., str]] = {
    "panel.run": _run_job,
    "panel.member": _member_turn,
    "panel.arbiter": _arbiter_turn,
    "panel.batch_member": _batch_member,
    "panel.batch_arbiter": _batch_arbiter,
    "panel.batch_realtime": _realtime_member,
}


def run_body(task: str, args: list[str], job_id: str) -> str:
    """A job task's body without its attempt bookkeeping (workers/quarantine.py's child)."""
    _test_poison(job_id, task, args)
    return BODIES[task](*args)


@app.task(name="panel.run", bind=True, acks_late=True)
def run(self: Task, job_id: str) -> str:
    """Plan a job and send its first panel."""
    return attempt(self, job_id, lambda: _run_job(job_id))


@app.task(name="panel.member", bind=True, acks_late=True)
def member(self: Task, panel_id: str, member_id: str, admit: dict[str, object] | None = None, **later: object) -> str:
    """One member's call and vote. `admit`: what its admission needs, so it goes with the
    member's first round trip (workers/panel/admission.py `Ask`; no prompt, no key). `later`:
    hints a newer control may add, ignored here, so a rolling upgrade in either order loses no member."""
    return attempt(self, job_of(panel_id), lambda: _member_turn(panel_id, member_id, admit=admit),
                   abandon=_abandon(panel_id, member_id))  # fmt: skip


@app.task(name="panel.arbiter", bind=True, acks_late=True)
def arbiter(self: Task, panel_id: str) -> str:
    return attempt(self, job_of(panel_id), lambda: _arbiter_turn(panel_id))


@app.task(name="panel.batch_member", bind=True, acks_late=True)
def batch_member(self: Task, panel_id: str, member_id: str) -> str:
    """Queue a member's call for its model's next provider batch (no provider call here)."""
    return attempt(self, job_of(panel_id), lambda: _batch_member(panel_id, member_id),
                   abandon=_abandon(panel_id, member_id))  # fmt: skip


def run_batch_flush() -> int:
    """Send the batch lane's due lines (workers/batch/lane.py `flush`): what every control worker's
    batch-flush thread runs in its turn (workers/duties.py), and `panel.batch_flush`."""
    return len(batch_lane.flush(runtime()))


def run_batch_poll() -> int:
    """Land the finished batches' lines (workers/batch/lane.py `poll`): what every control worker's
    batch-poll thread runs in its turn (workers/duties.py), and `panel.batch_poll`."""
    return batch_lane.poll(runtime(), dispatcher)


# Kept as tasks for a beat of an earlier release (it sends them during a rolling upgrade) and for
# an operator; beside a control worker's own turn they are harmless (workers/duties.py says why).
@app.task(name="panel.batch_flush", ignore_result=True, expires=30)
def batch_flush() -> int:
    return run_batch_flush()


@app.task(name="panel.batch_poll", ignore_result=True, expires=30)
def batch_poll() -> int:
    return run_batch_poll()


@app.task(name="panel.batch_arbiter", bind=True, acks_late=True)
def batch_arbiter(self: Task, panel_id: str) -> str:
    """Queue a batch panel's arbiter for the next batch (in real time when the deadline is near)."""
    return attempt(self, job_of(panel_id), lambda: _batch_arbiter(panel_id))


@app.task(name="panel.batch_realtime", bind=True, acks_late=True)
def batch_realtime(self: Task, panel_id: str, member_id: str) -> str:
    """A batch panel's member made in real time: its deadline is too near for another batch."""
    return attempt(self, job_of(panel_id), lambda: _realtime_member(panel_id, member_id),
                   abandon=_abandon(panel_id, member_id))  # fmt: skip


def run_sweep() -> int:
    """One deadline sweep (workers/panel/sweep.py) with the provider snapshot: what every control
    worker's sweep thread runs in its turn (workers/duties.py), and `panel.sweep` for a beat of
    an earlier release or an operator."""
    rt = runtime()
    status.publish(rt)
    def dead_letter(job_id: str, task: str, task_id: str, reason: str, attempts: int) -> bool:
        return rt.jobs.dead_letter(job_id, task, task_id, reason, attempts, send=dispatcher.run)

    return sweep(rt.store, dispatcher, dead_letter, watchdog_s=rt.settings.watchdog_s, send_run=dispatcher.run)


@app.task(name="panel.sweep", ignore_result=True, expires=30)
def deadline_sweep() -> int:
    return run_sweep()


def control_duties(settings: Settings) -> tuple[Duty, ...]:
    """What every `control` worker runs in its turns (workers/duties.py), each duty from a thread
    of its own: a flush or poll waits on a provider for seconds, and the sweep must not wait behind it."""
    return (
        Duty("deadline sweep", keys.SWEEP_TURN, settings.sweep_interval_s, run_sweep),
        Duty("batch flush", keys.BATCH_FLUSH_TURN, settings.batch_tick_s, run_batch_flush),
        Duty("batch poll", keys.BATCH_POLL_TURN, settings.batch_tick_s, run_batch_poll),
    )
