"""The `task-panel-decided` event (workers/metrics.py `announce_decision`) from wherever a job is
decided: a task's thread (the event rides on that task), or a control worker's duty thread (the
batch poll or the deadline sweep, workers/duties.py), where no Celery task runs: the event rides on
the job's own `panel.run` task, so an event consumer and Flower still see one per decision."""

from __future__ import annotations

import os
import threading
from types import SimpleNamespace
from typing import Any

import pytest
from celery._state import _task_stack

from producer.contract import Receipt
from workers import metrics, task_events


class Buffered:
    """The worker process's buffering event dispatcher (workers/task_events.py), as a recorder."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, dict[str, Any]]] = []

    def send(self, type: str, **fields: Any) -> None:
        self.sent.append((type, fields))


@pytest.fixture
def buffered(monkeypatch: pytest.MonkeyPatch) -> Buffered:
    d = Buffered()
    monkeypatch.setattr(task_events, "_current", (os.getpid(), d))
    return d


def receipt(job_id: str = "j-7") -> Receipt:
    return Receipt(job_id=job_id, task_class="multiple_choice", decision="quorum", calls_saved=1, total_cost_usd=0.25)


def test_a_job_decided_in_a_duty_thread_announces_it_on_its_run_task(buffered: Buffered) -> None:
    # a control worker's batch-poll thread lands the line that decides the job: no task on that thread
    t = threading.Thread(target=metrics.announce_decision, args=(receipt(),), name="panel-batch-poll")
    t.start()
    t.join()
    assert [(ty, f["uuid"], f["job_id"], f["decision"]) for ty, f in buffered.sent] == [
        (metrics.DECISION_EVENT, "run-j-7", "j-7", "quorum")
    ], "a batch-lane (or swept) decision sent no task-panel-decided event"


def test_a_job_decided_in_a_task_announces_it_on_that_task(buffered: Buffered) -> None:
    _task_stack.push(SimpleNamespace(request=SimpleNamespace(id="member-task-1")))
    try:
        metrics.announce_decision(receipt())
    finally:
        _task_stack.pop()
    assert [f["uuid"] for _, f in buffered.sent] == ["member-task-1"]


def test_outside_a_worker_nothing_is_sent_and_nothing_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("DEBUG", logger="panel.metrics"):
        metrics.announce_decision(receipt())  # plain-call tests: no dispatcher, no task
    assert not caplog.records, "a send was tried with nothing to send it through"
