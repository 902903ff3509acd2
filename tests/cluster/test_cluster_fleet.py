"""A fleet with its state on a real 3-node Redis Cluster and its broker on a plain Redis decides
panel jobs: every job decided once, every provider answer charged once, keys spread over the shards.

    python3 -m pytest -q -s tests/cluster/test_cluster_fleet.py                  # 30 jobs
    PANEL_CLUSTER_JOBS=200 python3 -m pytest -q -s tests/cluster/test_cluster_fleet.py
"""

from __future__ import annotations

import os
import time
from collections import Counter
from typing import Any

import pytest
import redis

from producer import connect, keys
from producer.client import PanelClient
from producer.connect import BrokerUrlError
from producer.fleet import Fleet, WorkerSpec
from producer.settings import Settings
from tests.topologies import ClusterProcess

JOBS = int(os.environ.get("PANEL_CLUSTER_JOBS", "30"))
WORKERS = [WorkerSpec("control", "control", concurrency=16),
           WorkerSpec("tiers", "llm.economy,llm.workhorse,llm.frontier,llm.batch", concurrency=64)]  # fmt: skip


def assert_paid_once(fleet: Fleet, results: list[Any]) -> None:
    """No provider request the receipts do not account for (a member called twice would be one),
    and every answer a receipt charges was delivered by the provider. A straggler cancelled after
    the provider sent its answer counts as answered there and `cancelled` here, hence not ==."""
    time.sleep(0.3)
    calls = [c for r in results if r.receipt for c in r.receipt.calls]
    charged = Counter(c.model for c in calls if c.status in ("answered", "late"))
    recorded = Counter(c.model for c in calls if c.status != "skipped")
    sim: dict[str, Any] = fleet.sim("/_sim/stats")["models"]  # type: ignore[assignment]
    requests = Counter({m: s["requests"] for m, s in sim.items() if s["requests"]})
    answered = Counter({m: s["answered"] for m, s in sim.items() if s["answered"]})
    assert not requests - recorded, (
        f"provider requests no receipt records: {requests - recorded}; answered {answered}, charged {charged}"
    )
    assert not charged - answered, f"receipts charge answers the provider never gave: {charged - answered}"


def test_a_cluster_url_as_broker_is_refused_naming_the_reason_and_the_alternatives() -> None:
    with pytest.raises(ValueError) as e:
        Settings(broker_url="redis+cluster://127.0.0.1:7000,127.0.0.1:7001")
    text = str(e.value)
    assert "PANEL_BROKER_URL" in text and "celery#2852" in text and "sentinel://" in text and "RabbitMQ" in text
    with pytest.raises(BrokerUrlError) as e2:  # and from the module producers and workers share
        connect.broker("redis+cluster://:secret@h:1", "m")
    assert "secret" not in str(e2.value)  # a password in the URL is masked


@pytest.mark.integration
def test_state_on_a_cluster_broker_on_plain_redis_decides_panel_jobs(redis_cluster: ClusterProcess) -> None:
    redis_cluster.client().flushall(target_nodes="all")
    fleet = Fleet(workers=list(WORKERS), env={"PANEL_STATE_URL": redis_cluster.url})
    fleet.start()
    try:
        client = PanelClient(settings=fleet.client_settings())
        broker = redis.Redis.from_url(fleet.redis_url)
        start = time.monotonic()
        ids = [client.submit({"id": f"cl-{i}", "task_class": "multiple_choice", "lane": "panel",
                              "prompt": f"Q{i}: 2+{i % 3}=? A) {2 + i % 3} B) 9 C) 1 D) 0"}) for i in range(JOBS)]  # fmt: skip
        results = [client.wait(j, timeout=180) for j in ids]
        elapsed = time.monotonic() - start
        assert [r.status for r in results] == ["decided"] * JOBS, Counter(r.status for r in results)
        assert all(r.receipt is not None and r.receipt.lane == "panel" for r in results)
        ledger = Counter(r["job_id"] for r in client.ledger())
        assert all(ledger[j] == 1 for j in ids), "a job reached the ledger twice or never"
        assert all(client.redis.llen(keys.done_channel(j)) == 1 for j in ids)
        assert_paid_once(fleet, results)
        # state went to the cluster, spread over its shards; the broker Redis holds no state key
        per_node = [redis.Redis(port=p).dbsize() for p in redis_cluster.ports]
        assert all(n > 0 for n in per_node), per_node
        assert not list(broker.scan_iter("pf:*", count=1000))
        refused = [f"{log.name}: {line[:200]}" for log in fleet.log_dir.glob("worker-*.log")
                   for line in log.read_text(errors="replace").splitlines() if "in cluster mode" in line]  # fmt: skip
        assert not refused, "a command the cluster client refuses (a pipelined PUBLISH, EVALSHA...):\n" + "\n".join(
            refused
        )
        print(f"\n{JOBS} panel jobs on a 3-node cluster (broker on plain Redis): all decided once in "
              f"{elapsed:.1f} s ({JOBS / elapsed:.1f} jobs/s); keys per shard {per_node}")  # fmt: skip
        client.close()
    finally:
        fleet.stop()
