"""A bare Celery task making one member's provider call: the floor the fleet's member task is
measured against in `bench.hotpath`. Same broker, pool, Celery settings and task class (from
workers/app.py) and HTTP client library as the fleet; no panel logic, no Redis of its own beyond
one INCR that tells the benchmark it finished.

Run as a worker: `celery -A bench.bare_task worker -Q bench.bare --pool threads -c 128`.

Two forms, so `bench.hotpath` can print the bare task both as plain Celery runs it and with the
fleet's own Celery-side settings: by default (BARE_AS=celery) task events are Celery's (each event
asks the worker's event loop for a flush on its next turn, in effect one PUBLISH per event) and
kombu builds a new redis-py client per broker command; with BARE_AS=fleet the worker runs the
fleet's consumer step that publishes task events in one message per 100 ms
(workers/task_events.py), keeps one client per kombu channel (workers/kombu_client.py) and sends
each ack with the next delivery's unacked record (workers/deferred_ack.py). A comma list of
`events`, `client`, `acks` turns on only those (`bench.celery_share` measures each alone).
"""

from __future__ import annotations

import os

import httpx
import redis
from celery import Celery

from workers import kombu_client
from workers.app import PanelTask
from workers.app import app as fleet_app
from workers.deferred_ack import DeferredAcks
from workers.task_events import BufferedTaskEvents

SAME = ("task_serializer", "result_serializer", "accept_content", "event_serializer", "task_ignore_result",
        "task_store_errors_even_if_ignored", "task_acks_late", "task_reject_on_worker_lost",
        "worker_prefetch_multiplier", "worker_disable_prefetch", "worker_send_task_events", "task_send_sent_event",
        "task_track_started", "broker_transport_options", "broker_connection_retry_on_startup",
        "worker_hijack_root_logger")  # fmt: skip
url = os.environ.get("PANEL_REDIS_URL", "redis://127.0.0.1:6379/0")
app = Celery("bare", broker=url, task_cls=PanelTask)  # the fleet's task class too (no task-started event)
app.conf.update({k: fleet_app.conf[k] for k in SAME}, task_default_queue="bench.bare")
# BARE_AS: "celery" (none of the three), "fleet" (all three) or a comma list of them
FLEET_SETTINGS = ("events", "client", "acks")
_as = os.environ.get("BARE_AS", "celery")
SETTINGS = set(FLEET_SETTINGS if _as == "fleet" else () if _as == "celery" else _as.split(","))
if SETTINGS - set(FLEET_SETTINGS):
    raise SystemExit(f"BARE_AS: unknown {sorted(SETTINGS - set(FLEET_SETTINGS))}; use celery, fleet or of {FLEET_SETTINGS}")
if "events" in SETTINGS:
    app.steps["consumer"].add(BufferedTaskEvents)
if "acks" in SETTINGS:
    app.steps["consumer"].add(DeferredAcks)
if "client" in SETTINGS:
    kombu_client.install()
else:
    kombu_client.uninstall()  # importing workers.app installed it
_http = httpx.Client(timeout=30, limits=httpx.Limits(max_connections=2000, max_keepalive_connections=500))
_done = redis.Redis.from_url(url, client_name="bench-bare")
KEY = os.environ.get("SIM_KEY", "sim-local-key-not-a-secret")


@app.task(name="bench.bare", bind=True, acks_late=True)
def bare(self: object, base_url: str, model: str, prompt: str) -> None:
    r = _http.post(f"{base_url}/v1/chat/completions", headers={"Authorization": f"Bearer {KEY}"},
                   json={"model": model, "messages": [{"role": "user", "content": prompt}]})  # fmt: skip
    r.raise_for_status()
    _done.incr("bench:bare:done")
