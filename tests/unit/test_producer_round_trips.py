"""The producer's own Redis round trips per job (issue 13: a member call's round trips count the
producer's too): a submit stores the job and reads its class's cache settings in one round trip,
and a wait on a decided job is one look. Counted on a real redis-server with nothing else on it
(its `total_reads_processed`: one per request a client sends; a pipeline is one)."""

from __future__ import annotations

import json
import threading

import pytest
import redis

from producer import keys
from producer.client import PanelClient
from producer.contract import Result

JOB = {"task_class": "multiple_choice", "prompt": "Which? A) x B) y"}


def reads(r: redis.Redis) -> int:
    """The server's reads so far; this INFO is one of them."""
    return int(r.info("stats")["total_reads_processed"])


def trips(r: redis.Redis, step: object) -> int:
    before = reads(r)
    step()  # type: ignore[operator]
    return reads(r) - before - 1  # the INFO after the step counts itself


def test_a_submit_and_the_wait_for_its_result_cost_four_round_trips(redis_client: redis.Redis, redis_url: str) -> None:
    redis_client.sadd(keys.task_classes(), "multiple_choice")
    client = PanelClient(redis_url)
    try:
        client.submit(JOB)  # warm-up: the broker connection, the script loaded
        held: dict[str, str] = {}
        # the class check (kept from the submit before), the store with its watchdog entry and the
        # cache settings, then the task's LPUSH with its task-sent event: before, 8 (SMEMBERS,
        # HSETNX, HSET, EXPIRE, HGET, ZADD, LPUSH, PUBLISH)
        assert trips(redis_client, lambda: held.update(id=client.submit(JOB))) == 2
        jid = held["id"]
        stored = redis_client.hgetall(keys.job(jid))
        assert stored[b"status"] == b"queued" and b"spec" in stored and b"submitted_at" in stored
        assert 0 < redis_client.ttl(keys.job(jid)) <= client.settings.result_ttl_s
        assert redis_client.zscore(keys.JOB_WATCH, jid) is not None  # the watchdog sends a run that never starts
        # decided as a worker decides it: the result, then the done signal
        redis_client.hset(keys.job(jid), mapping={"status": "decided",
                                                  "result": Result(job_id=jid, status="decided", answer="B").model_dump_json()})  # fmt: skip
        redis_client.rpush(keys.done_channel(jid), "decided")
        got: dict[str, Result] = {}
        # one look: before, 3 (the result, the rescue's read, and for a job still running the wait)
        assert trips(redis_client, lambda: got.update(res=client.wait(jid, timeout=10))) == 1
        assert got["res"].status == "decided" and got["res"].answer == "B"
    finally:
        client.close()


def test_a_running_job_is_waited_for_and_read_in_one_round_trip_per_look(
    redis_client: redis.Redis, redis_url: str
) -> None:
    redis_client.sadd(keys.task_classes(), "multiple_choice")
    client = PanelClient(redis_url)
    try:
        jid = client.submit(JOB)

        # a worker decides it while the client waits: the look after the wait reads the result
        # in the same pipeline as the BLMOVE that the done signal woke
        def decide() -> None:
            w = redis.Redis.from_url(redis_url)
            w.hset(keys.job(jid), mapping={"status": "decided",
                                           "result": Result(job_id=jid, status="decided", answer="A").model_dump_json()})  # fmt: skip
            w.rpush(keys.done_channel(jid), "decided")
            w.close()

        t = threading.Timer(0.3, decide)
        t.start()
        res = client.wait(jid, timeout=10)
        t.join()
        assert res.status == "decided" and res.answer == "A"
        assert redis_client.lrange(keys.done_channel(jid), 0, -1) == [b"decided"]  # the signal is left for others
    finally:
        client.close()


def test_a_resubmitted_job_id_leaves_the_first_job_untouched(redis_client: redis.Redis, redis_url: str) -> None:
    redis_client.sadd(keys.task_classes(), "multiple_choice")
    client = PanelClient(redis_url)
    try:
        jid = client.submit({**JOB, "id": "job-1"})
        redis_client.hset(keys.job(jid), "status", "running")
        assert client.submit({**JOB, "id": "job-1", "prompt": "another"}) == jid
        assert redis_client.hget(keys.job(jid), "status") == b"running"
        assert b"Which?" in redis_client.hget(keys.job(jid), "spec")  # type: ignore[operator]
        assert redis_client.llen("control") == 1  # sent once
        assert redis_client.zcard(keys.JOB_WATCH) == 1
    finally:
        client.close()


def test_a_class_published_after_the_client_read_the_classes_is_accepted(
    redis_client: redis.Redis, redis_url: str
) -> None:
    from producer.errors import ContractError

    redis_client.sadd(keys.task_classes(), "multiple_choice")
    client = PanelClient(redis_url)
    try:
        client.submit(JOB)
        try:
            client.submit({**JOB, "task_class": "extraction"})
            raise AssertionError("an unpublished class was accepted")
        except ContractError as e:
            assert "task_class" in str(e) and "extraction" in str(e)
        redis_client.sadd(keys.task_classes(), "extraction")  # a worker with new policies started
        client.submit({**JOB, "task_class": "extraction"})  # looked up again, not refused from the cache
    finally:
        client.close()


def sent_events(p: redis.client.PubSub) -> list[dict[str, object]]:
    """task-sent events published so far (Celery's event exchange: a PUBLISH per event)."""
    import base64

    got = []
    while (msg := p.get_message(timeout=1.0)) is not None:
        if msg["type"] == "pmessage":
            body = json.loads(msg["data"])["body"]
            got.append(json.loads(base64.b64decode(body)))
    return got


def test_the_run_and_its_task_sent_event_go_out_together_or_again_on_their_own(redis_client: redis.Redis, redis_url: str,
                                                                              monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    from kombu.exceptions import BatchPublishError
    from kombu.transport import redis as kombu_redis

    redis_client.sadd(keys.task_classes(), "multiple_choice")
    client = PanelClient(redis_url)
    events = redis_client.pubsub()
    events.psubscribe("*celeryev*")
    try:
        first = client.submit(JOB)
        assert [e["uuid"] for e in sent_events(events) if e["type"] == "task-sent"] == [
            f"run-{first}"
        ]  # Flower lists it
        flush = kombu_redis.PublishBatch.flush

        failed: list[bool] = []

        def failing(self: object) -> None:  # the pipeline fails before Redis ran it: delivery uncertain
            failed.append(True)
            monkeypatch.setattr(kombu_redis.PublishBatch, "flush", flush)
            raise BatchPublishError("Redis publish batch failed; delivery is uncertain")

        monkeypatch.setattr(kombu_redis.PublishBatch, "flush", failing)
        again = client.submit(JOB)
        assert failed  # the batch was tried and failed
        assert [e["uuid"] for e in sent_events(events) if e["type"] == "task-sent"] == [f"run-{again}"]
        queued = [json.loads(m)["headers"]["id"] for m in redis_client.lrange("control", 0, -1)]
        assert sorted(queued) == sorted([f"run-{first}", f"run-{again}"])  # sent again on its own, once
    finally:
        events.close()
        client.close()
