"""An idempotency key never hands back a job that does not exist (producer/client.py
`_claim_idempotency`), on a real redis-server: the key holding this very submit's id (its SET
replayed by redis-py after a lost reply) stores and sends the job; a key naming a job whose
submitter stopped before storing it is taken over once that job is still missing after the
wait; a stored first job is returned as before."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator

import pytest
import redis

from producer import client as client_mod
from producer import keys
from producer.client import PanelClient
from producer.settings import Settings
from tests.topologies import ClusterProcess

JOB = {"task_class": "multiple_choice", "prompt": "Which? A) x B) y", "tenant": "idem-tests"}


@pytest.fixture
def client(redis_client: redis.Redis, redis_url: str) -> Iterator[PanelClient]:
    redis_client.sadd(keys.task_classes(), "multiple_choice")
    c = PanelClient(redis_url)
    yield c
    c.close()


def test_a_key_holding_this_submits_own_id_stores_and_sends_the_job(client: PanelClient, redis_client: redis.Redis) -> None:
    job_id, key = uuid.uuid4().hex, uuid.uuid4().hex
    # what redis-py's retry of a SET NX whose reply was lost leaves: the key already names this id
    redis_client.set(keys.idempotency("idem-tests", key), job_id)
    got = client.submit({**JOB, "id": job_id, "idempotency_key": key})
    assert got == job_id
    assert redis_client.hget(keys.job(job_id), "status") == b"queued", "the job was stored"
    assert redis_client.zscore(keys.JOB_WATCH, job_id) is not None, "and its run sent (or due from the watchdog)"


def test_a_key_naming_a_job_never_stored_is_taken_over_after_the_wait(
    client: PanelClient, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(client_mod, "IDEMPOTENCY_WAIT_S", 0.2)
    key, ghost = uuid.uuid4().hex, uuid.uuid4().hex
    redis_client.set(keys.idempotency("idem-tests", key), ghost)  # its submitter stopped before the store
    got = client.submit({**JOB, "idempotency_key": key})
    assert got != ghost
    assert redis_client.hget(keys.job(got), "status") == b"queued"
    assert redis_client.get(keys.idempotency("idem-tests", key)) == got.encode(), "the key now names the stored job"
    assert client.submit({**JOB, "idempotency_key": key}) == got, "and a resubmit gets it"


def test_a_stored_first_job_is_returned_and_nothing_more_is_stored(client: PanelClient, redis_client: redis.Redis) -> None:
    key = uuid.uuid4().hex
    first = client.submit({**JOB, "idempotency_key": key})
    jobs_before = len(redis_client.keys("pf:{j:*}:job"))
    assert client.submit({**JOB, "idempotency_key": key}) == first
    assert len(redis_client.keys("pf:{j:*}:job")) == jobs_before


def test_a_key_taken_over_by_another_submit_gets_the_wait_again(
    client: PanelClient, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The wait is per holder: a submit that has waited out a ghost must not take the key from
    the submit that took it over a moment ago and is storing its job (both would be stored, each
    caller told it was the only one)."""
    monkeypatch.setattr(client_mod, "IDEMPOTENCY_WAIT_S", 1.0)
    key, ghost, other = uuid.uuid4().hex, uuid.uuid4().hex, uuid.uuid4().hex
    ikey = keys.idempotency("idem-tests", key)
    redis_client.set(ikey, ghost)

    def other_submit() -> None:  # took the ghost's key at 0.5 s (its own wait over), stores its job at 1.3 s
        time.sleep(0.5)
        redis_client.set(ikey, other)
        time.sleep(0.8)
        redis_client.hset(keys.job(other), mapping={"status": "queued", "tenant": "idem-tests"})

    t = threading.Thread(target=other_submit)
    t.start()
    try:
        got = client.submit({**JOB, "idempotency_key": key})
    finally:
        t.join()
    assert got == other, "the key's new holder stored its job within its wait: it is the first job"
    assert redis_client.get(ikey) == other.encode()


def test_a_ghost_key_is_taken_over_on_a_redis_cluster(
    redis_cluster: ClusterProcess, cluster_client: redis.Redis, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """State on a Redis Cluster: the take-over's WATCH needs a transactional cluster pipeline
    (a plain one refuses WATCH), or every submit with that key fails for the key's whole TTL."""
    monkeypatch.setattr(client_mod, "IDEMPOTENCY_WAIT_S", 0.2)
    cluster_client.sadd(keys.task_classes(), "multiple_choice")
    settings = Settings.model_validate({**Settings.from_env().model_dump(), "redis_url": redis_url,
                                        "broker_url": redis_url, "state_url": redis_cluster.url})  # fmt: skip
    c = PanelClient(settings=settings)
    try:
        key, ghost = uuid.uuid4().hex, uuid.uuid4().hex
        cluster_client.set(keys.idempotency("idem-tests", key), ghost)
        got = c.submit({**JOB, "idempotency_key": key})
        assert got != ghost
        assert cluster_client.hget(keys.job(got), "status") == b"queued"
        assert cluster_client.get(keys.idempotency("idem-tests", key)) == got.encode()
    finally:
        c.close()
