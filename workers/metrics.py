"""Prometheus metrics of a worker process, served on PANEL_METRICS_PORT (0: off), and the Celery
event a decided job announces to Flower.

They mirror the receipts (calls, tokens, cost, decisions) and show what receipts cannot:
429s, breaker state and limiter headroom. Flower's own /metrics covers task runtimes.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from prometheus_client import Counter, Gauge, start_http_server

if TYPE_CHECKING:
    from producer.contract import Receipt

log = logging.getLogger("panel.metrics")

CALLS = Counter("panel_calls_total", "Model calls by outcome", ["model", "provider", "status", "role"])
TOKENS = Counter("panel_tokens_total", "Tokens by direction", ["model", "direction"])
COST = Counter("panel_cost_usd_total", "Spend in USD", ["model", "batch"])
RATE_LIMITED = Counter("panel_provider_429_total", "429 answers from providers", ["provider", "model"])
DECISIONS = Counter("panel_decisions_total", "Jobs decided, by how", ["task_class", "decision"])
EARLY_EXITS = Counter("panel_early_exits_total", "Panels decided before every member answered", ["task_class"])
CALLS_SAVED = Counter("panel_calls_saved_total", "Member calls cancelled or never sent", ["task_class"])
ARBITER = Counter("panel_arbiter_calls_total", "Arbiter calls", ["task_class"])
BREAKER = Gauge("panel_breaker_state", "0 closed, 1 half-open, 2 open", ["key"])
HEADROOM_REQ = Gauge("panel_limiter_requests_available", "Requests grantable now", ["key"])
HEADROOM_TOK = Gauge("panel_limiter_tokens_available", "Tokens grantable now", ["key"])

# Flower keeps custom events whose type starts with `task-` on the task they name, and counts
# them in its own `flower_events_total{type=...}`.
DECISION_EVENT = "task-panel-decided"

_BREAKER_LEVEL = {"closed": 0, "half_open": 1, "open": 2}
_started = False


def serve(port: int) -> None:
    global _started
    if port and not _started:
        start_http_server(port)
        _started = True


def breaker_state(key: str, state: str) -> None:
    BREAKER.labels(key).set(_BREAKER_LEVEL.get(state, -1))


def announce_decision(receipt: Receipt) -> None:
    """Send `task-panel-decided` on a task of the job, so Flower shows the decision there (and an
    event consumer sees every decision as it happens): on the Celery task that decided it; for a job
    decided where no task runs (a control worker's batch poll or deadline sweep, in threads of their
    own: workers/duties.py), on the job's `panel.run` task, `run-<job id>` (the id every sender
    gives it: producer/client.py, gateway/submission.py, workers/tasks.py).

    Ids, counts and money only: never the prompt or the answer. Outside a worker and outside a task
    (plain-call tests) there is nothing to send it through, so nothing is sent. A broker blip costs
    the event, never the decision: the result and receipt are already stored when this runs.
    """
    from celery import current_task

    from producer.contract import run_task_id
    from workers import task_events

    in_task = bool(current_task) and bool(current_task.request.id)  # a Proxy: `is None` is never true
    buffered = task_events.dispatcher()
    if not in_task and buffered is None:
        return
    uuid = str(current_task.request.id) if in_task else run_task_id(receipt.job_id)
    fields = dict(
        job_id=receipt.job_id, task_class=receipt.task_class, decision=receipt.decision, lane=receipt.lane,
        early_exit=receipt.early_exit, calls=len(receipt.calls), calls_saved=receipt.calls_saved,
        arbiter_calls=sum(1 for c in receipt.calls if c.role == "arbiter"), cost_usd=receipt.total_cost_usd,
    )  # fmt: skip
    try:
        if buffered is not None:  # in the worker: in the next batch of this process's task events
            buffered.send(DECISION_EVENT, uuid=uuid, **fields)
        else:  # a publisher of its own (Celery's default for a task's custom event)
            current_task.send_event(DECISION_EVENT, retry=False, **fields)
    except Exception as e:  # the event is for people watching; the job is already decided
        log.warning("could not send %s for job %s: %s", DECISION_EVENT, receipt.job_id, type(e).__name__)
