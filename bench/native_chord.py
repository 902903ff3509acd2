"""Celery's own chord doing the same panel, for comparison: every member is awaited, and the
callback decides only after the slowest one (Celery chords cannot exit early).

Run as a worker: `celery -A bench.native_chord worker -Q native --pool threads -c 64`.
"""

from __future__ import annotations

import os
import time
from collections import Counter

import httpx
from celery import Celery

url = os.environ.get("PANEL_REDIS_URL", "redis://127.0.0.1:6379/0")
app = Celery("native_chord", broker=url, backend=url)
app.conf.update(task_default_queue="native", task_serializer="json", result_serializer="json",
                worker_prefetch_multiplier=1, task_acks_late=True)  # fmt: skip
_http = httpx.Client(timeout=30)


@app.task(name="native.member")
def member(base_url: str, model: str, prompt: str) -> str:
    r = _http.post(f"{base_url}/v1/chat/completions", headers={"Authorization": "Bearer sim-local-key-not-a-secret"},
                   json={"model": model, "messages": [{"role": "user", "content": prompt}]})  # fmt: skip
    r.raise_for_status()
    return str(r.json()["choices"][0]["message"]["content"]).strip()


@app.task(name="native.decide")
def decide(answers: list[str], submitted_at: float, panel_id: str) -> float:
    Counter(answers).most_common(1)
    latency = time.time() - submitted_at
    app.backend.client.hset("bench:native", panel_id, latency)
    return latency
