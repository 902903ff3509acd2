"""OpenTelemetry spans for every job, from the workers' side, with the least reach into the hot path.

- Celery signals: `before_task_publish` writes the current `traceparent` into a task's headers;
  `task_prerun`/`task_postrun` wrap `panel.run` in a `panel.plan` span, child of the producer's
  `panel.submit` (context from the message headers).
- When a job is decided (`job_decided`, called once by finalise_job), the rest of the trace is
  built from its receipt and call records: `panel.job` (submit to decision) with a `panel.lane`
  span per lane, a `chat {model}` span per member call and the arbiter (their recorded end time
  and latency), and a `panel.decision` span. So no span is held open across tasks and processes.

Attributes follow OpenTelemetry's GenAI semantic conventions (gen_ai.operation.name,
gen_ai.provider.name, gen_ai.request.model, gen_ai.usage.input_tokens/output_tokens, error.type)
plus ours under `panel.*` (decision, changed_vs_default, cost_usd, role, ...). Never a prompt, an
answer or a key. Off (no SDK import, no signal connected) unless an OTLP endpoint is configured.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from celery import Celery
from celery.signals import before_task_publish, task_postrun, task_prerun

from producer import keys
from producer.contract import Receipt
from producer.tracing import enabled, extract, inject, tracer

log = logging.getLogger("panel.tracing")
_open: dict[str, tuple[Any, Any]] = {}  # task id -> (span, context token) of a running panel.run


def install(app: Celery) -> None:
    if not enabled():
        return
    before_task_publish.connect(_inject, weak=False)
    task_prerun.connect(_plan_started, weak=False)
    task_postrun.connect(_plan_ended, weak=False)


def _inject(headers: dict[str, Any] | None = None, **_: Any) -> None:
    from opentelemetry import trace

    if headers is not None and trace.get_current_span().get_span_context().is_valid:
        inject(headers)


def _plan_started(task_id: str, task: Any, args: tuple[Any, ...] = (), **_: Any) -> None:
    if task.name != "panel.run":
        return
    from opentelemetry import context, trace

    parent = getattr(task.request, "traceparent", None) or (task.request.headers or {}).get("traceparent")
    span = tracer("panel-worker").start_span("panel.plan", context=extract(parent), kind=trace.SpanKind.CONSUMER,
                                             attributes={"panel.job_id": str(args[0]) if args else ""})  # fmt: skip
    _open[task_id] = (span, context.attach(trace.set_span_in_context(span)))


def _plan_ended(task_id: str, state: str | None = None, **_: Any) -> None:
    opened = _open.pop(task_id, None)
    if opened is None:
        return
    from opentelemetry import context

    span, token = opened
    span.set_attribute("panel.task_state", state or "")
    span.end()
    context.detach(token)


def job_decided(rt: Any, job_id: str, receipt: Receipt, panels: list[dict[str, Any]]) -> None:
    """Export the job's spans; a tracing fault is logged, never fails the job."""
    if not enabled():
        return
    try:
        _export_job(rt, job_id, receipt, panels)
    except Exception as e:  # noqa: BLE001 - observability must not break decisions
        log.warning("tracing: job %s not exported: %s", job_id, type(e).__name__)


def _ns(seconds: float) -> int:
    return int(seconds * 1e9)


def _export_job(rt: Any, job_id: str, receipt: Receipt, panels: list[dict[str, Any]]) -> None:
    from opentelemetry import trace
    from opentelemetry.trace import SpanKind, Status, StatusCode

    t = tracer("panel-worker")
    now = time.time()
    traceparent, submitted = rt.redis.hmget(keys.job(job_id), ["traceparent", "submitted_at"])
    start = float(submitted) if submitted else now - receipt.latency_ms / 1000
    job = t.start_span(f"panel.job {receipt.task_class}", context=extract(traceparent.decode() if traceparent else None),
                       start_time=_ns(start), attributes=_job_attributes(receipt))  # fmt: skip
    jctx = trace.set_span_in_context(job)
    for n, p in enumerate(panels, start=1):
        spec = rt.store.spec(p["panel_id"])
        if spec is None:
            continue
        records = rt.store.calls(spec.panel_id)
        created = float(rt.store.state(spec.panel_id).get("created_at") or start)
        lane = "batch" if spec.batch else spec.stage
        ends = [r.ended_at for r in records.values() if r.ended_at]
        span = t.start_span(f"panel.lane {lane}", context=jctx, start_time=_ns(created),
                            attributes={"panel.lane": lane, "panel.lane.reason": str(p.get("reason", ""))[:200],
                                        "panel.panel_id": spec.panel_id})  # fmt: skip
        lctx = trace.set_span_in_context(span)
        for c in receipt.calls:
            if not c.member.startswith(f"{n}."):
                continue
            rec = records.get(c.member.split(".", 1)[1])
            if rec is None or not rec.ended_at or c.status == "skipped":
                continue  # never sent: no call to trace
            end = rec.ended_at
            call = t.start_span(f"chat {c.model}", context=lctx, kind=SpanKind.CLIENT,
                                start_time=_ns(end - c.latency_ms / 1000), attributes=_call_attributes(c))  # fmt: skip
            if c.status == "failed":
                call.set_status(Status(StatusCode.ERROR))
            call.end(end_time=_ns(end))
        span.end(end_time=_ns(max(ends, default=now)))
    decision = t.start_span("panel.decision", context=jctx, start_time=_ns(now), attributes=_decision_attributes(receipt))
    decision.end(end_time=_ns(now))
    if receipt.decision == "failed":
        job.set_status(Status(StatusCode.ERROR))
    job.end(end_time=_ns(now))


def _job_attributes(r: Receipt) -> dict[str, Any]:
    attrs = {"panel.job_id": r.job_id, "panel.task_class": r.task_class, "panel.tenant": r.tenant,
             "panel.lanes": [s.lane for s in r.lanes], "panel.triggers": list(r.triggers),
             "panel.calls": len(r.calls), "panel.calls_saved": r.calls_saved, "panel.early_exit": r.early_exit,
             **_decision_attributes(r)}  # fmt: skip
    arbiter = [c.model for c in r.calls if c.role == "arbiter"]
    if arbiter:
        attrs["panel.arbiter.model"] = arbiter[0]
    return attrs


def _decision_attributes(r: Receipt) -> dict[str, Any]:
    attrs: dict[str, Any] = {"panel.decision": r.decision, "panel.cost_usd": r.total_cost_usd,
                             "panel.latency_ms": r.latency_ms}  # fmt: skip
    if r.changed_vs_default is not None:
        attrs["panel.changed_vs_default"] = r.changed_vs_default
    if r.verdict is not None:
        attrs["panel.verdict.fallback"] = r.verdict.fallback
    return attrs


def _call_attributes(c: Any) -> dict[str, Any]:
    attrs = {"gen_ai.operation.name": "chat", "gen_ai.provider.name": c.provider, "gen_ai.request.model": c.model,
             "gen_ai.usage.input_tokens": c.tokens_in, "gen_ai.usage.output_tokens": c.tokens_out,
             "panel.role": c.role, "panel.member": c.member, "panel.call.status": c.status, "panel.cost_usd": c.cost_usd,
             "panel.tier": c.tier, "panel.batch": c.batch}  # fmt: skip
    if c.status == "failed":
        attrs["error.type"] = "call_failed"
    if c.failed_over_from:
        attrs["panel.failed_over_from"] = c.failed_over_from
    return attrs
