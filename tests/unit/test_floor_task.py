"""The floor contender of `bench.hotpath` (bench/floor_task.py): its two scripts on a real Redis,
and a panel through a real Celery worker, so the benchmark's figure is of a floor that decides."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import redis
from kombu.transport import redis as kombu_redis

import workers.app  # noqa: F401  (installs the fleet's kombu client first, so it can be put back below)
from producer.embedded import free_port

_fleet_client = kombu_redis.Channel.conn_or_acquire
from bench import floor_task  # noqa: E402  (its bare task's default, BARE_AS=celery, takes kombu's own back)
from bench.overhead import MEMBERS  # noqa: E402

kombu_redis.Channel.conn_or_acquire = _fleet_client  # type: ignore[method-assign]  (for the tests after these)

BENCH = Path(floor_task.__file__).resolve().parent
ANSWERS = dict(zip(MEMBERS, "BBC", strict=True))  # two agree: the third is the straggler, and dissents


def admit(r: redis.Redis, caps: tuple[int, int, int], tokens: int = 10, breaker: bool = False) -> str:
    if breaker:
        r.set("brk", 1)
    script = r.register_script((BENCH / "floor_admit.lua").read_text())
    return str(script(keys=["brk", "rpm", "tpm", "budget"], args=[tokens, *caps, tokens]).decode())


def test_admission_counts_a_call_and_a_refusal_leaves_every_counter_as_it_found_it(redis_client: redis.Redis) -> None:
    r = redis_client
    assert admit(r, (2, 100, 1000)) == "ok"
    assert admit(r, (2, 100, 1000)) == "ok"
    counters = [r.get(k) for k in ("rpm", "tpm", "budget")]
    assert counters == [b"2", b"20", b"20"] and 0 < r.ttl("rpm") <= 120
    assert admit(r, (2, 100, 1000)) == "rate"  # a third request this minute
    assert admit(r, (10, 100, 25)) == "budget"
    assert admit(r, (10, 100, 1000), breaker=True) == "breaker"
    assert [r.get(k) for k in ("rpm", "tpm", "budget")] == counters


def test_landing_decides_once_at_the_second_equal_answer_and_a_redelivery_votes_once(redis_client: redis.Redis) -> None:
    land = redis_client.register_script((BENCH / "floor_land.lua").read_text())
    keys = floor_task.panel_keys("p1")

    def vote(member: str, answer: str) -> str:
        return str(land(keys=keys, args=[member, "m", answer, 200, 30, 2, 60, "1.5"]).decode())

    got = [vote("m0", "B"), vote("m0", "B"), vote("m1", "C"), vote("m2", "B")]
    assert got == ["voted", "duplicate", "voted", "decided"]
    assert vote("m3", "B") == "voted"  # a fourth vote for the winner decides nothing more
    assert redis_client.hgetall(keys[2]) == {b"answer": b"B", b"votes": b"2", b"member": b"m2", b"at": b"1.5"}
    assert redis_client.hget(keys[1], "B") == b"3" and redis_client.hlen(keys[0]) == 4
    assert all(0 < redis_client.ttl(k) <= 60 for k in keys)


class Provider(BaseHTTPRequestHandler):
    def do_POST(self) -> None:  # noqa: N802  (http.server's name)
        model = json.loads(self.rfile.read(int(self.headers["Content-Length"])))["model"]
        body = json.dumps({"choices": [{"message": {"content": ANSWERS[model]}}], "usage": {"total_tokens": 30}})
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body.encode())

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def provider() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", free_port()), Provider)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@pytest.fixture
def floor_on(redis_url: str, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch) -> redis.Redis:
    """bench.floor_task's app and clients on the test Redis."""
    state = redis.Redis.from_url(redis_url, decode_responses=True)
    monkeypatch.setattr(floor_task, "_state", state)
    monkeypatch.setattr(floor_task, "_done", redis.Redis.from_url(redis_url))
    monkeypatch.setattr(floor_task, "_admit", state.register_script((BENCH / "floor_admit.lua").read_text()))
    monkeypatch.setattr(floor_task, "_land", state.register_script((BENCH / "floor_land.lua").read_text()))
    monkeypatch.setattr(floor_task.app.conf, "broker_url", redis_url)
    return redis_client


FORMS = [(True, False, "sync"), (True, True, "async"), (False, False, "sync")]  # control hop?, batch publish?, http


@pytest.mark.parametrize(("hop", "batch", "http"), FORMS)
def test_a_panel_decides_through_a_celery_worker_in_each_form_the_benchmark_runs(
        floor_on: redis.Redis, provider: str, hop: bool, batch: bool, http: str) -> None:  # fmt: skip
    from celery.contrib.testing.worker import start_worker

    app = floor_task.app
    with start_worker(app, pool="threads", concurrency=4, queues=[floor_task.CONTROL_QUEUE, floor_task.MEMBERS_QUEUE],
                      perform_ping_check=False):  # fmt: skip
        if hop:
            floor_task.start.apply_async(args=[provider, "q A) x B) y", "p1"], kwargs={"batch": batch, "http": http},
                                         queue=floor_task.CONTROL_QUEUE)  # fmt: skip
        else:
            for i, model in enumerate(ANSWERS):
                floor_task.member.apply_async(args=[provider, model, "q A) x B) y", "p1", f"m{i}"],
                                              queue=floor_task.MEMBERS_QUEUE)  # fmt: skip
        end = time.monotonic() + 20
        while int(floor_on.get("bench:floor:done") or 0) < 3 and time.monotonic() < end:
            time.sleep(0.05)
    assert int(floor_on.get("bench:floor:done") or 0) == 3
    decision = floor_on.hgetall(floor_task.panel_keys("p1")[2])
    assert decision[b"answer"] == b"B" and decision[b"votes"] == b"2"
    assert floor_on.hlen(floor_task.panel_keys("p1")[0]) == 3  # the straggler's call is recorded too
