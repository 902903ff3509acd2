"""The answer cache and provider prompt caching on a real fleet (redis-server, the simulator,
Celery workers): repeats pay once, identical jobs in flight are decided once, receipts price
cached tokens at the cached rate per wire, a policy change never serves an old answer, and a
poisoned entry is recomputed. One fleet for the module."""

from __future__ import annotations

import hashlib
import math
import random
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from producer import answer_cache as pac
from producer import keys
from producer.client import PanelClient
from producer.contract import Job, Result
from producer.embedded import stop_process
from producer.fleet import Fleet
from producer.ledger_view import summarise

SYSTEM = "You are a careful classifier. Read the item, pick the label that fits it best, and say only the label. " * 3


def uid() -> str:
    return uuid.uuid4().hex[:8]


def submit_all(client: PanelClient, jobs: list[dict[str, Any]], threads: int = 16) -> list[str]:
    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(client.submit, jobs))


def wait_all(client: PanelClient, ids: list[str], timeout: float = 180) -> list[Result]:
    return list(client.wait_many(ids, timeout))


def test_repeats_pay_once_and_identical_jobs_in_flight_are_decided_once(fleet: Fleet, client: PanelClient) -> None:
    tag = uid()
    distinct = [f"[{tag}] item {i}: which fits best? A) apple B) bolt C) cloud D) dune" for i in range(12)]
    twice = [{"task_class": "cached_panel", "prompt": p} for p in distinct * 2]
    random.Random(7).shuffle(twice)
    same = f"[{tag}] the one everyone asks: A) apple B) bolt C) cloud D) dune"
    # the shuffled file twice, and 50 identical jobs at once, all in flight together
    jobs = twice + [{"task_class": "cached_panel", "prompt": same} for _ in range(50)]
    results = wait_all(client, submit_all(client, jobs))
    assert all(r.status == "decided" and r.receipt is not None for r in results), [r.error for r in results]
    receipts = [r.receipt for r in results if r.receipt is not None]
    computed = {r.job_id: r for r in receipts if not r.served_from_cache}
    by_prompt = Counter(jobs[i]["prompt"] for i, r in enumerate(receipts) if not r.served_from_cache)
    assert len(computed) == 13 and set(by_prompt.values()) == {1}, by_prompt  # one panel per distinct input
    for i, r in enumerate(receipts):
        if r.served_from_cache:
            src = computed[str(r.cached_from_job)]
            assert jobs[[x.job_id for x in receipts].index(src.job_id)]["prompt"] == jobs[i]["prompt"]
            assert results[i].answer == src.final_answer and r.total_cost_usd == 0
            # what the source had paid when it decided (a late member's cost lands on it after)
            assert 0 < r.saved_usd <= src.total_cost_usd
            assert r.decision == "cache" and not r.calls
    served = [r for r in receipts if r.served_from_cache]
    assert len(served) == 61 and any(r.coalesced for r in served)
    # decided once: one ledger receipt per job, and the simulator saw only the computed panels' calls
    ledger = [e["job_id"] for e in client.ledger()]
    ids = {r.job_id for r in receipts}
    assert Counter(j for j in ledger if j in ids) == Counter({j: 1 for j in ids})
    # the simulator's own log: each distinct input reached the members of one panel, no more
    seen = Counter(r["messages_sha"] for r in fleet.sim("/_sim/requests")["requests"])  # type: ignore[index]
    for p in [*distinct, same]:
        assert 1 <= seen[hashlib.sha256(orjson.dumps([["user", p]])).hexdigest()] <= 3, p
    with_cache = sum(r.total_cost_usd for r in receipts)
    without = sum(
        computed[str(r.cached_from_job)].total_cost_usd if r.served_from_cache else r.total_cost_usd for r in receipts
    )
    # `panel ledger`'s figures for these jobs
    [row] = summarise([e for e in client.ledger() if e["job_id"] in ids])
    assert row["cache_hit_rate"] == pytest.approx(61 / 74) and row["coalesced"] == sum(r.coalesced for r in served)
    assert row["answer_cache_saved_usd"] == pytest.approx(sum(r.saved_usd for r in served))
    # 13 panels paid instead of 74: each distinct input at least twice over, the shared one 50 times
    assert with_cache == pytest.approx(sum(r.total_cost_usd for r in computed.values()))
    assert without > 2 * with_cache


def test_a_replay_dev_file_twice_shuffled_runs_one_panel_per_question(fleet: Fleet, client: PanelClient,
                                                                     replay_dir: Path) -> None:  # fmt: skip
    from evaluation.replay import load

    rows = load(replay_dir / "gsm8k_zeroeval_dev.jsonl.gz")[:15]
    tag = uid()  # a question of an earlier run in this fleet must not be served here
    inputs = [
        [{**m, "content": f"[{tag}] {m['content']}"} if m["role"] == "user" else m for m in r.messages] for r in rows
    ]
    jobs = [{"task_class": "cached_panel", "messages": m} for m in inputs * 2]
    random.Random(3).shuffle(jobs)
    results = wait_all(client, submit_all(client, jobs))
    assert all(r.status == "decided" and r.receipt is not None for r in results), [r.error for r in results]
    computed = Counter(
        str(jobs[i]["messages"]) for i, r in enumerate(results) if r.receipt and not r.receipt.served_from_cache
    )
    assert len(computed) == len({str(m) for m in inputs}) and set(computed.values()) == {1}
    assert sum(1 for r in results if r.receipt and r.receipt.served_from_cache) == len(jobs) - len(computed)


def test_bypass_computes_afresh_and_refreshes_the_entry(fleet: Fleet, client: PanelClient) -> None:
    job = {"task_class": "extraction", "prompt": f"[{uid()}] Invoice 42: total 17.50 EUR. Extract the total."}
    first = client.wait(client.submit(job), 60)
    again = client.wait(client.submit({**job, "cache": "bypass"}), 60)
    assert first.receipt and again.receipt and not again.receipt.served_from_cache and again.receipt.calls
    meta = pac.published(client.redis, "extraction")
    assert meta is not None and entry_by(client, pac.cache_key(Job.parse(job), meta.version), again.job_id)
    third = client.wait(client.submit(job), 60)
    assert third.receipt and third.receipt.served_from_cache and third.receipt.cached_from_job == again.job_id


@pytest.mark.parametrize("poison", [b'{"job_id": 7, "answer": null}', b"not json at all", b'["a list"]'])
def test_a_poisoned_entry_is_ignored_and_recomputed(fleet: Fleet, client: PanelClient, poison: bytes) -> None:
    job = {"task_class": "extraction", "prompt": f"[{uid()}] Invoice 7: total 3.20 USD. Extract the total."}
    first = client.wait(client.submit(job), 60)
    meta = pac.published(client.redis, "extraction")
    assert meta is not None and first.receipt is not None
    key = pac.cache_key(Job.parse(job), meta.version)
    assert entry_by(client, key, first.job_id)
    client.redis.set(pac.entry_key(key), poison, ex=600)
    second = client.wait(client.submit(job), 60)
    assert second.status == "decided" and second.receipt is not None
    assert not second.receipt.served_from_cache and second.receipt.calls  # recomputed, not served
    assert entry_by(client, key, second.job_id)  # and the entry is whole again


def entry_by(client: PanelClient, key: str, job_id: str, timeout: float = 30) -> bool:
    """Until the entry under `key` is `job_id`'s (it is written just after the job's result)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        raw = client.redis.get(pac.entry_key(key))
        if raw is not None and orjson.loads(raw).get("job_id") == job_id:
            return True
        time.sleep(0.05)
    return False


def test_a_follower_whose_leader_vanished_runs_itself(fleet: Fleet, client: PanelClient) -> None:
    job = {"task_class": "extraction", "prompt": f"[{uid()}] Invoice 9: total 1.00 GBP. Extract the total."}
    meta = pac.published(client.redis, "extraction")
    assert meta is not None
    key = pac.cache_key(Job.parse(job), meta.version)
    client.redis.set(pac.lead_key(key), "ghost-leader", ex=2)  # a leader that died and never decides
    jid = client.submit(job)
    assert client.redis.hget(keys.job(jid), "coalesced_with") == b"ghost-leader"
    res = client.wait(jid, 90)  # its own wait takes it back once the ghost's lead expires
    assert res.status == "decided" and res.receipt is not None and not res.receipt.served_from_cache


def test_a_leader_that_fails_hands_its_followers_to_one_of_them(fleet: Fleet, client: PanelClient) -> None:
    """The leader's deadline passes while every model is slow (the sweep fails it); the deadline is
    no part of the key, so its followers (no deadline) waited on it: the first runs in its place
    and the rest are served its answer. None is stranded, none fails with the leader."""
    fleet.sim("/_sim/config", {"models": {"*": {"latency_ms": 2500}}})
    job = {"task_class": "extraction", "prompt": f"[{uid()}] Invoice 5: total 8.00 CHF. Extract the total."}
    deadline = datetime.now(UTC) + timedelta(seconds=1.5)
    leader = client.submit({**job, "deadline": deadline.isoformat()})
    followers = [client.submit(job) for _ in range(5)]
    assert all(client.redis.hget(keys.job(f), "coalesced_with") == leader.encode() for f in followers)
    lr = client.wait(leader, 60)
    assert lr.status == "failed", lr.model_dump_json()
    results = [client.wait(f, 90) for f in followers]
    assert all(r.status == "decided" and r.receipt is not None for r in results), [r.error for r in results]
    ran = [r for r in results if r.receipt and not r.receipt.served_from_cache]
    assert [r.job_id for r in ran] == [followers[0]]  # the first follower ran, once
    assert all(r.receipt and r.receipt.cached_from_job == followers[0] for r in results[1:])


def test_prompt_cached_tokens_are_priced_at_the_cached_rate_per_wire(fleet: Fleet, client: PanelClient) -> None:
    """Two jobs with one system prompt per wire; the second reads the cached prefix. Prices are
    policies/models.yaml's, written out here: the receipt must match the hand computation."""
    prefix = math.ceil(len(SYSTEM) / 4)  # the simulator's 4 characters a token
    hand = {  # (input, cache_read, cache_write, output) USD per 1M
        "claude_single": (0.80, 0.08, 1.00, 4.00),
        "openai_single": (0.15, 0.075, None, 0.60),
    }
    for task_class, (p_in, p_read, p_write, p_out) in hand.items():
        calls = []
        for n in range(2):
            job = {"task_class": task_class, "messages": [{"role": "system", "content": SYSTEM},
                                                          {"role": "user", "content": f"[{uid()}] item {n}: a red apple"}]}  # fmt: skip
            res = client.wait(client.submit(job), 60)
            assert res.status == "decided" and res.receipt is not None
            [call] = res.receipt.calls
            calls.append(call)
        first, second = calls
        if p_write is not None:  # Anthropic: the first call writes the prefix, billed at the write price
            assert first.tokens_cache_write == prefix and first.tokens_cached == 0
            want = ((first.tokens_in - prefix) * p_in + prefix * p_write + first.tokens_out * p_out) / 1e6
            assert first.cost_usd == pytest.approx(want, rel=1e-9)
        else:  # OpenAI reports no writes: the first call is all uncached
            assert first.tokens_cached == first.tokens_cache_write == 0
            assert first.cost_usd == pytest.approx((first.tokens_in * p_in + first.tokens_out * p_out) / 1e6, rel=1e-9)
        assert second.tokens_cached == prefix and second.tokens_cache_write == 0
        want = ((second.tokens_in - prefix) * p_in + prefix * p_read + second.tokens_out * p_out) / 1e6
        assert second.cost_usd == pytest.approx(want, rel=1e-9)
        assert second.cache_saved_usd == pytest.approx(prefix * (p_in - p_read) / 1e6, rel=1e-9)


def test_a_changed_policy_never_serves_an_answer_cached_under_the_old_one(fleet: Fleet, client: PanelClient,
                                                                         policy_dir: Path) -> None:  # fmt: skip
    job = {"task_class": "cached_panel", "prompt": f"[{uid()}] which fits? A) apple B) bolt C) cloud D) dune"}
    first = client.wait(client.submit(job), 60)
    assert first.receipt is not None and not first.receipt.served_from_cache
    hit = client.wait(client.submit(job), 60)
    assert hit.receipt is not None and hit.receipt.served_from_cache  # same policy: served
    before = client.redis.hget(pac.POLICY_CACHE, "cached_panel")
    tasks = yaml.safe_load((policy_dir / "tasks.yaml").read_text())
    tasks["task_classes"]["cached_panel"]["panel"]["members"][2] = "llama3.2-3b"  # a member changes
    (policy_dir / "tasks.yaml").write_text(yaml.safe_dump(tasks, sort_keys=False))
    restart_control(fleet)
    end = time.monotonic() + 120
    while client.redis.hget(pac.POLICY_CACHE, "cached_panel") == before:
        assert time.monotonic() < end, "the restarted worker did not publish the new policy version"
        time.sleep(0.2)
    after = client.wait(client.submit(job), 90)
    assert after.status == "decided" and after.receipt is not None
    assert not after.receipt.served_from_cache and after.receipt.calls  # a new panel, not the old answer


def restart_control(fleet: Fleet) -> None:
    stop_process(fleet.procs.pop("control"), timeout=20)
    spec = next(w for w in fleet.workers if w.name == "control")
    fleet.start_worker(spec)
