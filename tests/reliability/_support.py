"""Shared pieces of the reliability suite's part B (faults, hostile input, secrets): a test
policies dir written from plain dicts, an llmock process, a socket whose backlog is full (so a
connect times out on loopback), and a dump of every Redis key for leak scans.

Part A owns `conftest.py`; these are plain helpers the test modules build fixtures from.
"""

from __future__ import annotations

import socket
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import redis
import yaml

from producer.client import PanelClient
from producer.contract import Result
from tests.providers.conftest import Llmock, llmock_process  # noqa: F401  (re-exported)

SHIPPED_POLICIES = Path(__file__).resolve().parents[2] / "policies"


def uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def model_entry(provider: str, tier: str = "economy", **overrides: Any) -> dict[str, Any]:
    """A registry entry with generous limits and no fallbacks unless the caller gives them."""
    entry: dict[str, Any] = {
        "provider": provider, "tier": tier,
        "price": {"input": 1.0, "output": 2.0}, "batch_price": {"input": 0.5, "output": 1.0},
        "rpm": 100_000, "tpm": 10_000_000, "context_window": 128_000, "max_output_tokens": 256,
    }  # fmt: skip
    entry.update(overrides)
    return entry


def single_lane_class(model: str, deadline_s: float, **overrides: Any) -> dict[str, Any]:
    """A task class whose jobs are one call to `model`: the outcome of a job is that call's."""
    entry: dict[str, Any] = {
        "default_lane": "single", "single": {"model": model},
        "panel": {"members": [model], "quorum": 1, "agreement": {"rule": "exact"}, "arbiter": model},
        "deadline_s": deadline_s, "budget_usd": 10.0,
    }  # fmt: skip
    entry.update(overrides)
    return entry


def write_policies(dest: Path, providers: dict[str, Any], models: dict[str, Any], task_classes: dict[str, Any],
                   defaults: dict[str, Any] | None = None) -> Path:  # fmt: skip
    """A policies dir (models.yaml + tasks.yaml) for `PANEL_POLICIES`; returns `dest`."""
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "models.yaml").write_text(yaml.safe_dump({"providers": providers, "models": models}, sort_keys=False))
    doc = {"defaults": defaults or {"deadline_s": 30}, "task_classes": task_classes}
    (dest / "tasks.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    return dest


def openai_provider(url_env: str, key_env: str) -> dict[str, str]:
    # default_base_url is never used: every test sets `url_env` (a real provider is never called)
    return {"api": "openai", "base_url_env": url_env, "key_env": key_env, "default_base_url": "http://127.0.0.1:9/v1"}


@contextmanager
def full_backlog_port() -> Iterator[int]:
    """A listening port that never completes a handshake: its accept queue (backlog 0) is filled
    by connections nobody accepts, so Linux drops further SYNs and a client's connect times out."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(0)
    port = server.getsockname()[1]
    fillers = []
    for _ in range(3):
        c = socket.socket()
        c.setblocking(False)
        try:
            c.connect(("127.0.0.1", port))
        except BlockingIOError:
            pass
        fillers.append(c)
    time.sleep(0.05)
    try:
        yield port
    finally:
        for c in fillers:
            c.close()
        server.close()


def redis_values(r: redis.Redis) -> Iterator[tuple[bytes, bytes]]:
    """(key, every byte the key holds) for every key of every type: what a leak scan reads."""
    for key in r.scan_iter(count=1000):
        kind = r.type(key)
        if kind == b"string":
            yield key, r.get(key) or b""
        elif kind == b"hash":
            yield key, b"\n".join(k + b"=" + v for k, v in r.hgetall(key).items())
        elif kind == b"list":
            yield key, b"\n".join(r.lrange(key, 0, -1))
        elif kind == b"set":
            yield key, b"\n".join(r.smembers(key))
        elif kind == b"zset":
            yield key, b"\n".join(m for m, _ in r.zrange(key, 0, -1, withscores=True))
        elif kind == b"stream":
            yield key, b"\n".join(b"\n".join(k + b"=" + v for k, v in f.items()) for _, f in r.xrange(key))
        elif kind == b"none":  # gone since SCAN listed it (an ack, an expiry): it holds nothing now
            continue
        else:  # a type this scan does not know must not pass unread
            raise AssertionError(f"redis key {key!r} has type {kind!r}: teach redis_values to read it")


def wait_all(client: PanelClient, job_ids: list[str], timeout: float) -> dict[str, Result]:
    """Every job's final result; raises JobTimeout for the first job not done in time."""
    end = time.monotonic() + timeout
    return {jid: client.wait(jid, timeout=max(0.1, end - time.monotonic())) for jid in job_ids}
