"""The Celery app: queues, routing and the reliability settings every worker runs with.

Queues: `control` (orchestration: run, sweep), one per tier (`llm.economy`, `llm.workhorse`,
`llm.frontier`) for model calls, `llm.batch` for the batch lane. Tasks carry ids only; prompts
and keys never enter a message.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery, Task, bootsteps
from celery.signals import after_setup_logger
from celery.worker.request import Request
from kombu.entity import Queue

import producer.wire  # noqa: F401  (registers the orjson codec)
from producer.settings import Settings
from workers import broker_reconnect, kombu_client
from workers.deferred_ack import DeferredAcks
from workers.task_events import BufferedTaskEvents

broker_reconnect.install()  # kombu 5.7.0's reconnect crash after a Redis restart (see the module)
kombu_client.install()  # one redis-py client per kombu channel, not one per broker command

QUEUES = ("control", "llm.economy", "llm.workhorse", "llm.frontier", "llm.batch")

settings = Settings.from_env()

class ReceivedIsStarted(Request):
    """A task's request without the task-started event: with prefetch off a worker receives a
    message only when a thread is free, so `received` already says it started (and on which
    worker); the third event per task was one more PUBLISH per member call that Flower does not
    need to list or settle the task (task-received and task-succeeded do that)."""

    def send_event(self, type: str, **fields: Any) -> None:
        if type != "task-started":
            super().send_event(type, **fields)


class PanelTask(Task):
    Request = ReceivedIsStarted


BROKER_URL, BROKER_OPTIONS = settings.broker_options()  # a Redis Cluster URL is refused (producer/connect.py)
app = Celery("panel_fleet", broker=BROKER_URL, include=["workers.tasks"], task_cls=PanelTask)
app.conf.update(
    task_serializer="orjson",
    result_serializer="orjson",
    accept_content=["orjson", "json"],  # json: broadcast control (ping, revoke) from plain Celery clients
    event_serializer="json",  # Flower decodes events itself
    # Results live in our own Redis keys (producer/keys.py); Celery's backend is not used.
    task_ignore_result=True,
    task_store_errors_even_if_ignored=False,
    task_queues=[Queue(q, routing_key=q) for q in QUEUES],
    task_default_queue="control",
    task_routes={
        "panel.run": {"queue": "control"},
        "panel.sweep": {"queue": "control"},
        "panel.batch_member": {"queue": "llm.batch"},
        # the control workers run the batch ticks themselves (workers/duties.py); these tasks come
        # from an older beat in a rolling upgrade or an operator, to control: llm.batch can scale to zero
        "panel.batch_flush": {"queue": "control"},
        "panel.batch_poll": {"queue": "control"},
        "panel.arbiter": {"queue": "llm.frontier"},
        # panel.member is routed per call to its model's tier queue
    },
    # A worker killed mid-call must not lose the task: ack after the body, requeue on loss.
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    # Long I/O tasks: take one message at a time, so a revoked or queued member is never
    # held (and run) by a busy worker; see FIELD-NOTES on revoke with the threads pool.
    worker_prefetch_multiplier=1,
    worker_disable_prefetch=True,
    # Flower lists a task from its task-received event (name, args, worker) and settles it with
    # task-succeeded; a task-sent event from a worker sending members is one more PUBLISH per
    # member that nothing reads (the producer's client still sends one for panel.run).
    worker_send_task_events=True,
    task_send_sent_event=False,
    # no STARTED state in a result backend: there is none (task_ignore_result), so this was a no-op
    task_track_started=False,
    worker_soft_shutdown_timeout=settings.soft_shutdown_s,
    broker_connection_retry_on_startup=True,
    broker_transport_options=BROKER_OPTIONS,
    task_publish_retry_policy=settings.publish_retry_policy(),
    worker_hijack_root_logger=False,
)


@after_setup_logger.connect
def _quiet_per_task_lines(**_: object) -> None:
    """Celery logs two INFO lines per task ("received", "succeeded"): at fleet rates that is
    log I/O and formatting on every member call that no one reads (Flower and our receipts carry
    the same facts). Failures and retries still log at WARNING and above."""
    for name in ("celery.app.trace", "celery.worker.strategy"):
        logging.getLogger(name).setLevel(logging.WARNING)


class Heartbeat(bootsteps.StartStopStep):
    """Touches PANEL_HEARTBEAT_FILE every few seconds *while the consumer fetches* (see
    workers/liveness.py): the liveness probe reads its age, so a worker alive but no longer
    taking work fails it, while a broker blip shorter than the probe's max age does not make
    every pod fail it at once (unlike `celery inspect ping`)."""

    requires = {"celery.worker.components:Timer"}

    def __init__(self, worker, **kwargs):  # type: ignore[no-untyped-def]
        super().__init__(worker, **kwargs)
        self.tref = None

    def start(self, worker):  # type: ignore[no-untyped-def]
        from pathlib import Path

        from workers.liveness import Liveness

        live = Liveness(settings.heartbeat_file, stale_s=settings.liveness_stale_s,
                        exit_after_s=settings.liveness_exit_s,
                        hard_exit_s=max(30.0, settings.soft_shutdown_s + 15.0))  # fmt: skip
        self.tref = worker.timer.call_repeatedly(
            settings.heartbeat_interval_s, lambda: live.tick(getattr(worker, "consumer", None)), (), priority=10
        )
        Path(settings.heartbeat_file).touch()  # starting: the startup probe waits for the first fetch after

    def stop(self, worker):  # type: ignore[no-untyped-def]
        if self.tref is not None:
            self.tref.cancel()


class PolicyCheck(bootsteps.Step):
    """Loads policies/*.yaml before the worker consumes anything: a bad file stops the worker
    with file:line and field, so it never starts and misroutes jobs. Publishes the task classes
    so producers can reject unknown ones at submit."""

    def __init__(self, worker, **kwargs):  # type: ignore[no-untyped-def]
        import sys

        from producer import keys
        from producer.errors import PanelError
        from workers import answer_cache
        from workers.runtime import Runtime

        try:
            rt = Runtime.get()
        except PanelError as e:
            print(f"panel-fleet: cannot start: {e}", file=sys.stderr, flush=True)
            raise SystemExit(2) from None
        pipe = rt.redis.pipeline(transaction=True)  # MULTI: producers never see a half-written set
        pipe.delete(keys.task_classes())
        pipe.sadd(keys.task_classes(), *rt.policies.task_classes)
        answer_cache.publish(pipe, rt.policies)  # policy versions: producers key the answer cache by them
        pipe.execute()
        super().__init__(worker, **kwargs)


class Census(bootsteps.StartStopStep):
    """Records which tasks this worker process runs (workers/census.py), so a redelivered task
    can tell a lost worker from a live one that gave its message back."""

    def __init__(self, worker, **kwargs):  # type: ignore[no-untyped-def]
        super().__init__(worker, **kwargs)
        self.stop_flush = None

    def start(self, worker):  # type: ignore[no-untyped-def]
        from workers import census
        from workers.runtime import runtime

        rt = runtime()  # past the redelivery of a lost worker's message (its visibility timeout)
        self.stop_flush = census.start(rt.redis, held_ttl_s=rt.settings.visibility_timeout_s + 3600)

    def stop(self, worker):  # type: ignore[no-untyped-def]
        if self.stop_flush is not None:
            self.stop_flush.set()


class Duties(bootsteps.StartStopStep):
    """On workers that consume `control`: the fleet's periodic duties (the deadline sweep every
    PANEL_SWEEP_INTERVAL_S, the batch lane's flush and poll every PANEL_BATCH_TICK_S), each once per
    interval fleet-wide from a thread of its own (workers/duties.py). No beat sends them."""

    def __init__(self, worker, **kwargs):  # type: ignore[no-untyped-def]
        super().__init__(worker, **kwargs)
        self.running = None

    def start(self, worker):  # type: ignore[no-untyped-def]
        from workers import duties
        from workers.runtime import runtime
        from workers.tasks import control_duties

        if duties.consumes_control(worker.app):
            self.running = duties.start(runtime().redis, *control_duties(settings))

    def stop(self, worker):  # type: ignore[no-untyped-def]
        from workers import duties

        if self.running is not None:  # a warm shutdown lets a flush mid-upload record its batch
            self.running.stop(wait_s=duties.STOP_WAIT_S)


app.steps["worker"].add(Heartbeat)
app.steps["worker"].add(PolicyCheck)
app.steps["worker"].add(Census)
app.steps["worker"].add(Duties)
app.steps["consumer"].add(BufferedTaskEvents)
app.steps["consumer"].add(DeferredAcks)


from workers import tracing  # noqa: E402  (needs `app` above; connects nothing unless OTLP is configured)

tracing.install(app)
