"""Every key a decided job leaves in Redis goes with its result TTL, whoever waited on it.

The one-hour soak (bench/soak.py) found three kinds of keys outliving their job: a waiter's
BLPOP + RPUSH re-created the job's done list without a TTL (one key per waited job, forever), the
panels' attempt hashes kept their 7-day TTL and the job's budget counter its 8 days whatever the
result TTL, and the watchdog's member entries stayed until its sweep came round to forget them
(at most 200 a tick: a zset growing without bound past ~66 panels/s). A real fleet, a short TTL.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pytest
import redis

from producer import keys
from producer.client import PanelClient
from producer.fleet import Fleet
from producer.settings import Settings
from producer.waiting import wait_all

TTL_S = 900


@pytest.fixture(scope="module")
def fleet() -> Iterator[Fleet]:
    f = Fleet(env={"PANEL_RESULT_TTL": str(TTL_S)})
    f.start()
    yield f
    f.stop()


def test_a_decided_jobs_keys_all_expire_with_its_result(fleet: Fleet) -> None:
    client = PanelClient(fleet.redis_url, Settings.from_env().model_copy(update={"result_ttl_s": TTL_S}))
    r = redis.Redis.from_url(fleet.redis_url)
    try:
        fleet.sim("/_sim/config", {"default": {"latency_ms": 50, "answer": "B"}})
        ids = [client.submit({"task_class": "multiple_choice", "lane": "panel",
                              "prompt": f"{uuid.uuid4().hex}: pick one\nA) x\nB) y"}) for _ in range(6)]  # fmt: skip
        for jid in ids[:3]:  # one waiter per job, as PanelClient.wait and the gateway wait
            assert client.wait(jid, timeout=60).status == "decided"
        # `panel wait` over many jobs (one BLPOP across their done lists), and a second waiter
        # on jobs already waited: the done signal is still there for it
        assert {res.status for res in wait_all(client, ids, timeout=60).values()} == {"decided"}
        for jid in ids:
            assert r.lrange(keys.done_channel(jid), 0, -1) == [b"decided"]

        def keys_left() -> dict[str, int]:
            return {k.decode(): r.ttl(k) for jid in ids for k in r.scan_iter(match=f"*{jid}*", count=1000)}

        def settled() -> dict[str, object]:  # a late member may still be landing: wait for it, not a leak
            left = keys_left()
            wrong = {k: t for k, t in left.items() if not 0 < t <= TTL_S}
            watched = [e.decode() for e in r.zrange(keys.WATCH_MEMBERS, 0, -1) if e.decode().split(".", 1)[0] in ids]
            return {} if wrong or watched else left  # a key with no TTL or a 7-day one never settles

        left = settled() or {}
        if not left:
            time.sleep(10)  # generous, then the verdict with what is still wrong
            left = keys_left()
            wrong = {k: t for k, t in left.items() if not 0 < t <= TTL_S}
            assert not wrong, f"keys that outlive the {TTL_S} s result TTL (-1: none): {wrong}"
            watched = [e.decode() for e in r.zrange(keys.WATCH_MEMBERS, 0, -1) if e.decode().split(".", 1)[0] in ids]
            assert not watched, f"watchdog entries of finalised jobs: {watched}"
        assert len(left) >= 6 * 6, f"expected each job's hash, done list, panels, budget ...: {sorted(left)}"
        kinds = {k.rsplit("}", 1)[1].split(":")[1] for k in left}  # :job, :done, :panel, :budget ...
        assert {"job", "done", "panels", "panel", "budget"} <= kinds, kinds
    finally:
        client.close()
        r.close()
