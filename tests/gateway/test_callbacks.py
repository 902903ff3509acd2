"""Callbacks: every decided job's callback arrives once with a valid HMAC-SHA256 signature,
through a receiver that fails the first two attempts (so each is retried with backoff), with two
gateway replicas over the same Redis both delivering; and a delivery outlives the replica that
took the job (killed -9): another replica delivers it."""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import orjson
import pytest
import redis as redis_lib

from gateway.callbacks import verify
from gateway.submission import callback_key
from producer.embedded import free_port, stop_process
from producer.fleet import Fleet
from tests.gateway.conftest import GatewayProc, Tenant, start_gateway


class Receiver:
    """A real HTTP server on loopback; fails each job's first `fail_first` attempts with 500."""

    def __init__(self, fail_first: int = 2, port: int | None = None):
        self.fail_first = fail_first
        self.attempts: dict[str, int] = defaultdict(int)
        self.accepted: dict[str, list[tuple[bytes, str]]] = defaultdict(list)
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers["content-length"]))
                job_id = self.headers["Panel-Callback-Id"]
                with receiver.lock:
                    receiver.attempts[job_id] += 1
                    ok = receiver.attempts[job_id] > receiver.fail_first
                    if ok:
                        receiver.accepted[job_id].append((body, self.headers["Panel-Signature"]))
                self.send_response(200 if ok else 500)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port or free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.stop()


def wait_until(cond, timeout: float = 60.0) -> None:  # type: ignore[no-untyped-def]
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, "condition not met in time"
        time.sleep(0.1)


def submit(url: str, t: Tenant, hook: str, n: int) -> list[str]:
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {t.key}"}, timeout=30) as h:
        return [h.post("/v1/jobs", json={"task_class": "extraction", "prompt": f"Invoice {i}: total ${i}.",
                                         "callback_url": hook}).json()["id"] for i in range(n)]  # fmt: skip


def test_each_callback_arrives_once_signed_after_two_failed_attempts(gateway: GatewayProc, gw_fleet: Fleet,
                                                                      tenant: Tenant, receiver: Receiver,
                                                                      gw_redis: redis_lib.Redis) -> None:  # fmt: skip
    second = start_gateway(gw_fleet.redis_url, gw_fleet.log_dir)  # two replicas both deliver callbacks
    try:
        ids = submit(gateway.url, tenant, receiver.url, 6) + submit(second.url, tenant, receiver.url, 6)
        wait_until(lambda: all(gw_redis.hget(callback_key(j), "state") == b"delivered" for j in ids))
        time.sleep(1.0)  # room for a duplicate to show up, were there one
    finally:
        stop_process(second.proc, timeout=10)
    for j in ids:
        assert receiver.attempts[j] == 3, (j, receiver.attempts[j])
        assert len(receiver.accepted[j]) == 1
        body, signature = receiver.accepted[j][0]
        assert verify(tenant.secret, body, signature)
        assert not verify(tenant.secret, body + b" ", signature)
        payload = orjson.loads(body)
        assert payload["job_id"] == j and payload["result"]["status"] == "decided" and payload["attempt"] == 3


def test_a_callback_outlives_the_replica_that_took_its_job(gateway: GatewayProc, gw_fleet: Fleet, tenant: Tenant,
                                                           gw_redis: redis_lib.Redis) -> None:  # fmt: skip
    port = free_port()  # nothing listens yet: every attempt fails until the receiver starts
    lonely = start_gateway(gw_fleet.redis_url, gw_fleet.log_dir)
    ids = submit(lonely.url, tenant, f"http://127.0.0.1:{port}/hook", 3)
    wait_until(lambda: all(int(gw_redis.hget(callback_key(j), "attempts") or 0) >= 1 for j in ids))
    lonely.proc.kill()
    lonely.proc.wait()
    receiver = Receiver(fail_first=0, port=port)
    try:
        wait_until(lambda: all(gw_redis.hget(callback_key(j), "state") == b"delivered" for j in ids), timeout=90)
        assert all(len(receiver.accepted[j]) == 1 for j in ids)
    finally:
        receiver.stop()
