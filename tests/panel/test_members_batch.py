"""A panel's members leave in one round trip (kombu's publish batch), and a batch whose delivery
is uncertain is sent again member by member (issue 13: ~0.67 round trips per member call).
Celery's app reads its broker at import, so each case runs in a child process on a real
redis-server; the child prints what it measured."""

from __future__ import annotations

import json
import subprocess
import sys

import redis

from producer.embedded import child_env

SEND = """
import json, sys
import redis
from kombu.exceptions import BatchPublishError
from kombu.transport import redis as kr
from workers.panel.act import dispatch
from workers.panel.run import Member, PanelRun
from workers.panel.state import PanelStore
from workers.tasks import dispatcher
r = redis.Redis.from_url(sys.argv[1])
store = PanelStore(r)
spec = PanelRun(panel_id="j.1", job_id="j", stage="panel", attempt=1, quorum=2, dispatch="parallel",
                members=[Member(f"m{i}", "x", "workhorse") for i in range(3)], agreement={}, arbiter="",
                rubric=[], deadline=0.0)
if sys.argv[2] == "fail":  # the batch's pipeline fails once: delivery uncertain
    flush = kr.PublishBatch.flush
    def failing(self):
        kr.PublishBatch.flush = flush
        raise BatchPublishError("Redis publish batch failed; delivery is uncertain")
    kr.PublishBatch.flush = failing
dispatcher.member(spec, spec.members[0], "realtime")  # warm-up: the broker connection
r.delete("llm.workhorse")
before = int(r.info("stats")["total_reads_processed"])
dispatch(store, dispatcher, spec, spec.members, expected=True)
trips = int(r.info("stats")["total_reads_processed"]) - before - 1
print(json.dumps({"trips": trips, "ids": store.task_ids("j.1")}))
"""


def sent(redis_url: str, mode: str) -> dict[str, object]:
    out = subprocess.run([sys.executable, "-c", SEND, redis_url, mode], env=child_env({"PANEL_REDIS_URL": redis_url}),
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def queued(r: redis.Redis) -> list[tuple[str, str]]:
    """(member, task id) of each message on the workhorse queue."""
    got = []
    for raw in r.lrange("llm.workhorse", 0, -1):
        msg = json.loads(raw)
        got.append((msg["headers"]["argsrepr"].split("'")[3], msg["headers"]["id"]))
    return sorted(got)


def test_a_panels_members_are_sent_in_one_round_trip_then_their_task_ids_in_one(redis_client: redis.Redis,
                                                                               redis_url: str) -> None:  # fmt: skip
    got = sent(redis_url, "ok")
    assert got["trips"] == 2  # before: 4 (three LPUSHes, then the task ids)
    on_queue = queued(redis_client)
    assert [m for m, _ in on_queue] == ["m0", "m1", "m2"]
    assert dict(on_queue) == got["ids"]  # each recorded id is the message's: a quorum revokes the right one


def test_a_batch_whose_delivery_is_uncertain_is_sent_again_member_by_member(redis_client: redis.Redis,
                                                                           redis_url: str) -> None:  # fmt: skip
    got = sent(redis_url, "fail")
    on_queue = queued(redis_client)
    assert [m for m, _ in on_queue] == ["m0", "m1", "m2"]  # the failed batch sent nothing here; each went alone
    assert dict(on_queue) == got["ids"]
