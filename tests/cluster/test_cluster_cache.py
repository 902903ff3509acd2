"""The answer cache's single flight (admit, settle, resolve, promote, rescue) and the gateway's
admission on a real 3-node Redis Cluster. The cluster refuses a script whose declared keys span
slots (CROSSSLOT); the recorder also checks each EVAL's keys map to one slot, so a script that
only happens to land on one node fails here too."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from redis.asyncio.cluster import ClusterNode as AsyncNode
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.cluster import key_slot

from gateway.errors import RateLimited, Unauthorized
from gateway.settings import GatewaySettings
from gateway.tenants import Admission, Keys
from producer import answer_cache as pac
from producer import keys
from producer.contract import Job, Receipt, Result
from tests.cluster.test_slots import SlotRecorder
from tests.topologies import ClusterProcess
from workers import answer_cache

VERSION = "v" * 16


def one_slot_each(rec: SlotRecorder) -> None:
    assert rec.calls, "no script ran"
    for _, ks in rec.calls:
        assert len({key_slot(k.encode()) for k in ks}) == 1, f"a script's keys span slots: {ks}"


def store(r: Any, job_id: str, job: Job) -> None:
    r.hset(keys.job(job_id), mapping={"spec": job.model_copy(update={"id": job_id}).model_dump_json(),
                                      "status": "queued", "submitted_at": time.time()})  # fmt: skip


def admit(r: Any, job: Job, job_id: str) -> pac.Ticket:
    store(r, job_id, job)
    return pac.admit(r, job, job_id, time.time(), 3600)


def decided(job_id: str, answer: str) -> Result:
    receipt = Receipt(job_id=job_id, task_class="x", decision="single", total_cost_usd=0.002)
    return Result(job_id=job_id, status="decided", answer=answer, receipt=receipt)


def served(r: Any, job_id: str) -> Result:
    return Result.model_validate_json(r.hget(keys.job(job_id), "result") or b"")


def test_single_flight_and_a_failed_leaders_hand_over_on_a_real_cluster(cluster_client: Any) -> None:
    r = cluster_client
    rec = SlotRecorder(r)
    r.hset(pac.POLICY_CACHE, "x", pac.ClassCache(version=VERSION, ttl_s=60, lead_ttl_s=60).model_dump_json())
    job = Job.parse({"task_class": "x", "prompt": "the same question"})
    assert admit(r, job, "L").role == "leader"
    assert [admit(r, job, f"F{i}").role for i in range(3)] == ["follower"] * 3
    assert [r.hget(keys.job(f"F{i}"), "coalesced_with") for i in range(3)] == [b"L"] * 3
    sent: list[str] = []
    answer_cache.settle(r, "L", Result(job_id="L", status="failed", error="boom"), 3600, 600, send=sent.append)
    assert sent == ["F0"]  # the first follower runs in the failed leader's place, once
    answer_cache.settle(r, "L", Result(job_id="L", status="failed", error="boom"), 3600, 600, send=sent.append)
    assert sent == ["F0"]  # a repeat promotes nobody else
    k = pac.cache_key(job, VERSION)
    assert r.get(pac.lead_key(k)) == b"F0" and r.hget(keys.job("F0"), "acache_role") == b"leader"
    assert [r.hget(keys.job(f"F{i}"), "coalesced_with") for i in (1, 2)] == [b"F0", b"F0"]
    answer_cache.settle(r, "F0", decided("F0", "42"), 3600, 600, send=sent.append)
    answer_cache.settle(r, "F0", decided("F0", "42"), 3600, 600, send=sent.append)  # serves nobody twice
    for f in ("F1", "F2"):
        res = served(r, f)
        assert res.answer == "42" and res.receipt and res.receipt.cached_from_job == "F0" and res.receipt.coalesced
        assert r.lrange(keys.done_channel(f), 0, -1) == [b"decided"]
    assert r.get(pac.lead_key(k)) is None and sent == ["F0"]
    assert admit(r, job, "late").role == "hit"
    assert served(r, "late").receipt.served_from_cache  # type: ignore[union-attr]
    # the ledger (its own slot) has each served job once: F1, F2 and the hit
    assert sorted(e[1][b"receipt"].count(b'"served_from_cache":true') for e in r.xrange(keys.LEDGER_STREAM)) == [1, 1, 1]
    one_slot_each(rec)


def test_a_follower_whose_leader_vanished_is_rescued_and_leads_on_a_real_cluster(cluster_client: Any) -> None:
    r = cluster_client
    rec = SlotRecorder(r)
    r.hset(pac.POLICY_CACHE, "x", pac.ClassCache(version=VERSION, ttl_s=60, lead_ttl_s=60).model_dump_json())
    job = Job.parse({"task_class": "x", "prompt": "asked while a ghost leads"})
    k = pac.cache_key(job, VERSION)
    r.set(pac.lead_key(k), "ghost", ex=60)
    assert admit(r, job, "F").role == "follower"
    assert pac.rescue(r, "F") is None  # the ghost still leads: wait on
    r.delete(pac.lead_key(k))  # its lead expires
    ticket = pac.rescue(r, "F")
    assert ticket is not None and ticket.role == "leader" and r.get(pac.lead_key(k)) == b"F"
    assert r.hget(keys.job("F"), "coalesced_with") is None
    one_slot_each(rec)


def test_a_leader_settling_between_a_followers_admit_and_its_role_still_serves_it(cluster_client: Any) -> None:
    """On a cluster the follow (cache slot) and the follower's role (its job's slot) are two steps:
    a leader that settles between them finds the follower `admitting` and serves it."""
    r = cluster_client
    r.hset(pac.POLICY_CACHE, "x", pac.ClassCache(version=VERSION, ttl_s=60, lead_ttl_s=60).model_dump_json())
    job = Job.parse({"task_class": "x", "prompt": "the race"})
    assert admit(r, job, "L").role == "leader"
    store(r, "B", job)
    inner = r.execute_command
    settled: list[bool] = []

    def execute(*args: Any, **kw: Any) -> Any:
        out = inner(*args, **kw)
        if str(args[0]).upper() == "EVAL" and b"RPUSH" in str(args[1]).encode() and not settled:
            settled.append(True)  # right after B joined L's followers, before B's role is written
            answer_cache.settle(r, "L", decided("L", "7"), 3600, 600, send=lambda j: None)
        return out

    r.execute_command = execute
    try:
        ticket = pac.admit(r, job, "B", time.time(), 3600)
    finally:
        r.execute_command = inner
    assert settled and ticket.role == "hit"
    res = served(r, "B")
    assert res.answer == "7" and res.receipt and res.receipt.cached_from_job == "L"
    assert r.lrange(keys.done_channel("B"), 0, -1) == [b"decided"]
    assert r.hget(keys.job("B"), "coalesced_with") is None  # nothing written after it was served


def test_gateway_admission_on_a_real_cluster(redis_cluster: ClusterProcess, cluster_client: Any) -> None:
    made = Keys(cluster_client).create("acme", budget_usd=5.0, rate_per_s=0.01, rate_burst=2)
    cluster_client.incrby(keys.budget_tenant_day("acme", time.strftime("%Y%m%d", time.gmtime())), 1_500_000_000)

    async def run() -> list[Any]:
        ar = AsyncRedisCluster(startup_nodes=[AsyncNode("127.0.0.1", p) for p in redis_cluster.ports])
        try:
            adm = Admission(ar, GatewaySettings(), budget_usd=None)
            out: list[Any] = [await adm.admit(f"Bearer {made.api_key}") for _ in range(2)]
            for bad in (f"Bearer {made.api_key}", "Bearer pfk_nope_nope"):
                try:
                    await adm.admit(bad)
                except (RateLimited, Unauthorized) as e:
                    out.append(e)
            Keys(cluster_client).revoke(made.id)
            try:
                await adm.admit(f"Bearer {made.api_key}")
            except Unauthorized as e:
                out.append(e)
            return out
        finally:
            await ar.aclose()

    first, second, limited, unknown, revoked = asyncio.run(run())
    assert (first.tenant, first.cap_usd, first.spent_usd) == ("acme", 5.0, pytest.approx(1.5))
    assert second.tenant == "acme"
    assert isinstance(limited, RateLimited) and "acme" in str(limited)  # burst 2: the third waits
    assert isinstance(unknown, Unauthorized) and "unknown API key" in str(unknown)
    assert isinstance(revoked, Unauthorized) and "revoked" in str(revoked)
