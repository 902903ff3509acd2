"""OpenTelemetry for producers (the `panel.submit` span) and the one place the SDK is set up.

Off unless OTEL_EXPORTER_OTLP_ENDPOINT (or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT) is set: then spans
go over OTLP/HTTP (protobuf) to it, batched. When off, nothing of the SDK is imported and each hook
is one dict lookup, so tracing costs nothing. The trace context travels as a W3C `traceparent`
in the Celery message headers (and in the job's hash, for the worker that decides the job).
Attributes never hold a prompt, an answer or a key.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from typing import Any

ENDPOINT_VARS = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")


@cache
def enabled() -> bool:
    return any(os.environ.get(v) for v in ENDPOINT_VARS) and os.environ.get("OTEL_SDK_DISABLED", "") != "true"


@cache
def tracer(service: str = "panel-fleet") -> Any:
    """The process's tracer, exporting over OTLP/HTTP; only called when enabled()."""
    from opentelemetry import trace
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    name = os.environ.get("OTEL_SERVICE_NAME") or service
    provider = TracerProvider(resource=Resource.create({"service.name": name}))  # flushed at exit (atexit)
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    return trace.get_tracer("panel-fleet")


def inject(carrier: dict[str, str]) -> dict[str, str]:
    """Write the current span's `traceparent` into `carrier`."""
    from opentelemetry.propagate import inject as otel_inject

    otel_inject(carrier)
    return carrier


def extract(traceparent: str | None) -> Any:
    """A context whose parent is `traceparent` (None: a new trace)."""
    from opentelemetry.propagate import extract as otel_extract

    return otel_extract({"traceparent": traceparent} if traceparent else {})


@contextmanager
def submit_span(task_class: str, job_id: str, lane: str | None, mode: str) -> Iterator[dict[str, str]]:
    """Around one submit: yields the headers to send with the task (empty when tracing is off)."""
    if not enabled():
        yield {}
        return
    with tracer("panel-producer").start_as_current_span("panel.submit", kind=_kind("PRODUCER")) as span:
        span.set_attributes({"panel.job_id": job_id, "panel.task_class": task_class, "panel.mode": mode,
                             **({"panel.lane_requested": lane} if lane else {})})  # fmt: skip
        yield inject({})


def _kind(name: str) -> Any:
    from opentelemetry.trace import SpanKind

    return getattr(SpanKind, name)
