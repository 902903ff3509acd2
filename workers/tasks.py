"""Thin Celery entry points, called by name. Arguments are ids only; logic lives in
workers/jobs.py and workers/panel/. Names are what Flower shows."""

from __future__ import annotations

import logging

from celery import Task

from workers.app import app
from workers.batch import lane as batch_lane
from workers.jobs import conclude_panel, start_job
from workers.panel.arbiter import run_arbiter
from workers.panel.chord import run_member
from workers.panel.state import Member, PanelSpec
from workers.panel.sweep import sweep
from workers import status
from workers.runtime import runtime

log = logging.getLogger("panel.tasks")


class CeleryDispatcher:
    """The chord's Dispatcher on Celery: members to their tier queue, arbiter to frontier."""

    def member(self, spec: PanelSpec, member: Member) -> str:
        if spec.batch:
            return str(app.send_task("panel.batch_member", args=[spec.panel_id, member.member], queue="llm.batch").id)
        return self.realtime_member(spec, member)

    def realtime_member(self, spec: PanelSpec, member: Member) -> str:
        queue = f"llm.{member.tier}"
        return str(app.send_task("panel.member", args=[spec.panel_id, member.member], queue=queue).id)

    def arbiter(self, panel_id: str) -> None:
        app.send_task("panel.arbiter", args=[panel_id], queue="llm.frontier")

    def conclude(self, panel_id: str) -> None:
        conclude_panel(runtime(), self, panel_id)

    def revoke(self, task_ids: list[str]) -> None:
        app.control.revoke(task_ids)


dispatcher = CeleryDispatcher()


@app.task(name="panel.run", bind=True, acks_late=True)
def run(self: Task, job_id: str) -> str:
    """Plan a job and send its first panel."""
    return start_job(runtime(), dispatcher, job_id)


@app.task(name="panel.member", bind=True, acks_late=True)
def member(self: Task, panel_id: str, member_id: str) -> str:
    """One member's call and vote."""
    return run_member(runtime(), dispatcher, panel_id, member_id)


@app.task(name="panel.arbiter", bind=True, acks_late=True)
def arbiter(self: Task, panel_id: str) -> str:
    return run_arbiter(runtime(), dispatcher, panel_id)


@app.task(name="panel.batch_member", bind=True, acks_late=True)
def batch_member(self: Task, panel_id: str, member_id: str) -> str:
    """Queue a member's call for its model's next provider batch (no provider call here)."""
    return batch_lane.enqueue_member(runtime(), panel_id, member_id)


@app.task(name="panel.batch_flush", ignore_result=True, expires=30)
def batch_flush() -> int:
    return len(batch_lane.flush(runtime()))


@app.task(name="panel.batch_poll", ignore_result=True, expires=30)
def batch_poll() -> int:
    return batch_lane.poll(runtime(), dispatcher)


@app.task(name="panel.sweep", ignore_result=True, expires=30)
def deadline_sweep() -> int:
    rt = runtime()
    status.publish(rt)
    return sweep(rt, dispatcher)
