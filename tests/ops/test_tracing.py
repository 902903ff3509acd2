"""One panel job's trace, as a tracing backend receives it: a real OTLP/HTTP receiver on loopback
decodes the protobuf ExportTraceServiceRequest that the producer (`panel submit`, its own process)
and the real worker processes send. One root span (panel.submit), the job under it, a child per
member call and the arbiter with GenAI attributes (model, tokens), cost and the decision; no
prompt, answer or key anywhere in the attributes.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from producer.client import PanelClient
from producer.contract import Receipt
from producer.embedded import free_port
from producer.fleet import SIM_KEY, Fleet, WorkerSpec

REPO = Path(__file__).resolve().parents[2]
PROMPT_MARK = "canary-prompt-" + uuid.uuid4().hex[:8]


class Receiver:
    """An OTLP/HTTP trace receiver: POST /v1/traces, protobuf body, decoded span by span."""

    def __init__(self) -> None:
        self.spans: list[dict[str, Any]] = []
        self.raw: list[bytes] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers["Content-Length"]))
                ok = self.path == "/v1/traces" and self.headers["Content-Type"] == "application/x-protobuf"
                if ok:
                    receiver.add(body)
                out = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200 if ok else 404)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def add(self, body: bytes) -> None:
        req = ExportTraceServiceRequest()
        req.ParseFromString(body)
        with self.lock:
            self.raw.append(body)
            for rs in req.resource_spans:
                service = next(a.value.string_value for a in rs.resource.attributes if a.key == "service.name")
                for ss in rs.scope_spans:
                    for s in ss.spans:
                        self.spans.append({
                            "trace": s.trace_id.hex(), "id": s.span_id.hex(), "parent": s.parent_span_id.hex(),
                            "name": s.name, "service": service, "start": s.start_time_unix_nano,
                            "end": s.end_time_unix_nano, "attrs": {a.key: _value(a.value) for a in s.attributes},
                        })  # fmt: skip


def _value(v: Any) -> Any:
    kind = v.WhichOneof("value")
    if kind == "array_value":
        return [_value(x) for x in v.array_value.values]
    return getattr(v, kind)


@pytest.fixture(scope="module")
def traced() -> Iterator[tuple[Fleet, Receiver]]:
    receiver = Receiver()
    otel = {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint, "OTEL_BSP_SCHEDULE_DELAY": "100"}
    fleet = Fleet(workers=[WorkerSpec("control", "control", concurrency=8),
                           WorkerSpec("tiers", "llm.economy,llm.workhorse,llm.frontier,llm.batch", concurrency=16)],
                  env=otel)  # fmt: skip
    try:
        fleet.start()
        yield fleet, receiver
    finally:
        fleet.stop()
        receiver.server.shutdown()


def test_one_panel_jobs_trace_arrives_over_otlp_http(traced: tuple[Fleet, Receiver]) -> None:
    fleet, receiver = traced
    fleet.sim("/_sim/config", {"models": {"qwen2.5-72b-instruct": {"latency_ms": 50, "answer": "B"},
                                          "qwen2.5-32b-coder-instruct": {"latency_ms": 50, "answer": "C"},
                                          "llama3.1-70b": {"latency_ms": 50, "answer": "D"}}})  # fmt: skip
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint, "PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}
    sub = subprocess.run([sys.executable, "-m", "producer", "--redis-url", fleet.redis_url, "submit", "--task-class",
                          "multiple_choice", "--lane", "panel", "--prompt", f"{PROMPT_MARK}: pick one\nA) w\nB) x\nC) y\nD) z"],
                         cwd=REPO, env=env, capture_output=True, timeout=60, check=True)  # fmt: skip
    job_id = sub.stdout.decode().strip()
    client = PanelClient(fleet.redis_url)
    res = client.wait(job_id, timeout=90)
    # the receipt as first decided (the ledger's, which the trace is built from; a late call's
    # re-render may add to the result's afterwards)
    (first,) = [x for x in client.ledger() if x["job_id"] == job_id]
    client.close()
    r = Receipt.model_validate(first)
    assert res.status == "decided" and r.decision in ("arbiter", "majority")

    end = time.monotonic() + 30
    while time.monotonic() < end:
        with receiver.lock:
            mine = [s for s in receiver.spans if s["attrs"].get("panel.job_id") == job_id]
            if any(s["name"] == "panel.submit" for s in mine) and any(s["name"].startswith("panel.job") for s in mine):
                break
        time.sleep(0.1)
    with receiver.lock:
        (trace_id,) = {s["trace"] for s in receiver.spans if s["attrs"].get("panel.job_id") == job_id}
        spans = [s for s in receiver.spans if s["trace"] == trace_id]
    ids = {s["id"]: s for s in spans}
    roots = [s for s in spans if not s["parent"]]
    assert [s["name"] for s in roots] == ["panel.submit"] and roots[0]["service"] == "panel-producer"
    assert all(s["parent"] in ids for s in spans if s["parent"]), "a span's parent never arrived"

    (job,) = [s for s in spans if s["name"] == "panel.job multiple_choice"]
    assert job["parent"] == roots[0]["id"] and job["service"] == "panel-worker"
    assert job["attrs"]["panel.decision"] == r.decision
    assert job["attrs"]["panel.cost_usd"] == pytest.approx(r.total_cost_usd)
    assert "panel.plan" in {s["name"] for s in spans if s["parent"] == roots[0]["id"]}  # via the Celery headers

    calls = [s for s in spans if s["name"].startswith("chat ")]
    made = [c for c in r.calls if c.status not in ("skipped",) and not (c.status == "cancelled" and not c.latency_ms)]
    assert len(calls) == len(made) >= 4  # three members + the arbiter
    for c in made:
        (span,) = [s for s in calls if s["attrs"]["panel.member"] == c.member]
        a = span["attrs"]
        assert span["name"] == f"chat {c.model}" and ids[span["parent"]]["parent"] == job["id"]  # call < lane < job
        assert (a["gen_ai.request.model"], a["gen_ai.usage.input_tokens"], a["gen_ai.usage.output_tokens"]) == (
            c.model, c.tokens_in, c.tokens_out)  # fmt: skip
        assert a["gen_ai.operation.name"] == "chat" and a["panel.role"] == c.role
        assert a["panel.cost_usd"] == pytest.approx(c.cost_usd)
        assert span["end"] - span["start"] == pytest.approx(c.latency_ms * 1e6, rel=0.01, abs=1e3)
    assert [s["attrs"]["panel.role"] for s in calls].count("arbiter") == 1
    (decision,) = [s for s in spans if s["name"] == "panel.decision"]
    assert decision["parent"] == job["id"] and decision["attrs"]["panel.decision"] == r.decision

    with receiver.lock:
        wire = b"".join(receiver.raw)
    assert PROMPT_MARK.encode() not in wire and SIM_KEY.encode() not in wire
