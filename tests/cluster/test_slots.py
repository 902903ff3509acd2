"""Every Lua script, MULTI and multi-key call keeps to one Redis Cluster slot; every key name lives in
producer/keys.py. These fail when someone adds a cross-slot key or a key name outside keys.py.

- every `.lua` file: how many KEYS it reads (parsed), and that a scenario through the code that calls
  it passes that many keys, all in one slot (redis-py's `key_slot`), on fakeredis and on a real
  3-node Redis Cluster (which refuses cross-slot EVALSHA by itself);
- every call site that passes `keys=` to a script (parsed with `ast`) is one the scenario runs;
- no `"pf:..."` literal outside producer/keys.py, and every key function there carries a hash tag.
"""

from __future__ import annotations

import ast
import asyncio
import hashlib
import inspect
import re
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import fakeredis
import pytest
from redis.cluster import key_slot

from producer import keys
from workers import concluding, jobs
from workers.batch import backends, lane
from workers.budget import Budget
from workers.limits import BreakerConfig, CircuitBreaker, Limit, RateLimiter
from workers.panel.run import Member, PanelRun
from workers.panel.state import PanelStore

ROOT = Path(__file__).resolve().parents[2]
CODE_DIRS = ("workers", "producer", "gateway")
# Scripts that name keys in more than one slot and are therefore sent on a single Redis only, and why.
SINGLE_REDIS_SCRIPTS = {
    "ledger_entry.lua": "the ledger stream and the job hash; finalise_job's cluster branch writes them apart",
    "open_attempt.lua": "its own keys share the panel's slot, but it is sent only in a member's start MULTI with the "
    "limits' scripts (other slots), on a single Redis: workers/panel/admission.py `speculate` returns None on a cluster",
}
SCRIPTS = sorted(p for p in ROOT.glob("workers/**/*.lua")  # gateway/admission.lua: NOT_CLUSTER_SAFE_SCRIPT_SITES
                 if p.name not in SINGLE_REDIS_SCRIPTS)  # fmt: skip
# (file, function) of every call that passes `keys=` to a registered script; `scenario` runs each.
SCRIPT_CALL_SITES = {
    ("workers/panel/state.py", "vote"), ("workers/panel/state.py", "decide"),
    ("workers/limits/limiter.py", "_run"),
    ("workers/batch/lane.py", "_flush_model"), ("workers/batch/lane.py", "_reclaim_stale"),
    ("workers/batch/lane.py", "_poll_one"),
    ("workers/jobs.py", "conclude_panel"), ("workers/limits/steps.py", "run"),
    ("workers/concluding.py", "take_and_read"),
}  # fmt: skip


# Inline scripts sent with EVAL/EVALSHA, by call site, and what keeps them (or not) in one slot.
EVAL_CALL_SITES = {
    ("workers/limits/steps.py", "run_steps"): "sends ScriptStep keys as built by the wrappers the scenario runs",
    ("producer/answer_cache.py", "read_entry"): "one key",
    ("workers/answer_cache.py", "resolve"): "one key",
    ("workers/batch/holds.py", "settle_line"): "one key",
    ("workers/answer_cache.py", "settle"): "one slot: {c:<cache key>}",
    ("producer/answer_cache.py", "admit_with"): "one slot {c:<cache key>} (its followers list named in Lua shares the tag); "
    "the job's role: one key; tests/cluster/test_cluster_cache.py",
    ("producer/answer_cache.py", "rescue"): "one key (the job hash); tests/cluster/test_cluster_cache.py",
    ("workers/answer_cache.py", "promote"): "one key (a follower's job hash) or one slot {c:<cache key>}; "
    "tests/cluster/test_cluster_cache.py",
    ("workers/concluding.py", "take_and_read"): "take_lease.lua with conclude_panel's keys (the panel's slot), "
    "in the job's MULTI; a single Redis only (on a cluster the lease is taken on its own, as the scenario runs)",
    ("workers/panel/state.py", "put_call_and_vote"): "vote.lua with vote's keys (the panel's slot); a single Redis only",
    ("workers/concluding.py", "queue"): "release_lease.lua with conclude_panel's keys (the panel's slot), at the "
    "end of the job's finalise MULTI; a single Redis only (on a cluster it is sent on its own)",
    ("workers/panel/state.py", "put_cut_off"): "take_lease.lua with conclude_panel's keys (the panel's slot), after "
    "the cut-off record; a single Redis only (on a cluster the record is written alone and the conclusion takes it)",
    ("workers/limits/steps.py", "queue"): "an answer's settlement (Owed: ScriptStep keys as built by the wrappers the "
    "scenario runs), queued in put_call_and_vote's pipeline on a single Redis only (on a cluster it runs as run_steps)",
    ("workers/ledger.py", "queue_entry_with_id"): "NOT cluster-safe: ledger_entry.lua (SINGLE_REDIS_SCRIPTS)",
    ("workers/panel/admission.py", "queue"): "the limits' ScriptSteps and open_attempt.lua in a member's start MULTI: "
    "a single Redis only (SINGLE_REDIS_SCRIPTS; `speculate` returns None on a cluster)",
    ("producer/client.py", "_store"): "STORE_JOB with the job hash and the watchdog's JOB_WATCH (two slots) in one "
    "pipeline: a single Redis only; on a cluster `_store` calls it with the job hash alone",
}


# Scripts registered and called with `keys=` that name keys the scenario cannot check, and why.
NOT_CLUSTER_SAFE_SCRIPT_SITES = {
    ("gateway/tenants.py", "admit"): "on one Redis admission.lua derives the tenant's keys from the API key's "
    "record; on a cluster they are passed, one slot: tests/cluster/test_cluster_cache.py",
    (
        "gateway/callbacks.py",
        "deliver_loop",
    ): "safe, not run in the scenario: claim_due.lua, one key (GW_CALLBACKS_DUE)",
    ("producer/client.py", "_store"): "safe, not run in the scenario: STORE_JOB, on a cluster with one key (the job "
    "hash; its watchdog entry is written at enqueue); tests/cluster/test_cluster_fleet.py submits through it",
}


def keys_read(lua: str) -> int:
    code = "\n".join(line.split("--", 1)[0] for line in lua.splitlines())  # comments name KEYS too
    found = [int(n) for n in re.findall(r"KEYS\[(\d+)\]", code)]
    return max(found) if found else (10**9 if "KEYS[i]" in code or "#KEYS" in code else 0)


class SlotRecorder:
    """Wraps a client's execute_command: records each EVALSHA/EVAL's script and key slots."""

    def __init__(self, client: Any) -> None:
        self.calls: list[tuple[str, list[str]]] = []
        inner: Callable[..., Any] = client.execute_command

        def execute(*args: Any, **kw: Any) -> Any:
            name = str(args[0]).upper()
            if name in ("EVALSHA", "EVAL"):
                n = int(args[2])
                script_keys = [k.decode() if isinstance(k, bytes) else str(k) for k in args[3 : 3 + n]]
                sha = args[1] if name == "EVALSHA" else hashlib.sha1(str(args[1]).encode()).hexdigest()
                self.calls.append((str(sha), script_keys))
            return inner(*args, **kw)

        client.execute_command = execute


def _spec(pid: str) -> PanelRun:
    return PanelRun(panel_id=pid, job_id=pid.rpartition(".")[0], stage="panel", attempt=1,
                     members=[Member(f"m{i}", "gpt-4o-mini", "economy") for i in range(3)], quorum=2,
                     dispatch="parallel", agreement={"rule": "exact"}, arbiter="gpt-4o", rubric=[],
                     deadline=time.time() + 60)  # type: ignore[arg-type]  # fmt: skip


class _FinishedBatch:
    """A provider's batch that finished with no lines."""

    async def status(self, batch_id: str) -> Any:
        return SimpleNamespace(finished=True, raw_status="completed", message=None)

    async def results(self, status: Any) -> list[Any]:
        return []


def scenario(r: Any) -> None:
    """Runs every script through the code that calls it in production."""
    store = PanelStore(r)
    store.create(_spec("job-1.1"), 60)
    store.vote("job-1.1", "m0", "a", 0)
    store.vote("job-1.1", "m1", "b", 0)
    store.decide("job-1.1", "sweep")
    rt = SimpleNamespace(redis=r)
    jobs._LEASES.clear()  # keyed by id(client): never a script bound to an earlier test's client
    take, release = jobs._lease_scripts(rt)  # type: ignore[arg-type]  # the keys conclude_panel passes
    take(keys=[keys.concluding("job-1.1"), keys.panel("job-1.1")], args=[1, 30])
    release(keys=[keys.concluding("job-1.1"), keys.panel("job-1.1")], args=[time.time()])
    r.rpush(keys.job_panels("job-1"), '{"panel_id": "job-1.1", "reason": "x"}')
    (taken, concluded), _, _ = concluding.take_and_read(SimpleNamespace(redis=r, store=store), _spec("job-1.1"), take)  # type: ignore[arg-type]
    assert taken and concluded  # the lease again, the panel concluded above
    rl = RateLimiter(r)
    model, account = Limit("openai:gpt-4o-mini", 100, 100_000), Limit("openai", 1000, 1_000_000)
    res = rl.try_acquire([model, account], 100)
    rl.reconcile(res, 50)
    rl.pause(model.key, 0.001)
    rl.headroom(model)
    cb = CircuitBreaker(r, BreakerConfig(min_calls=1, failure_rate=0.5, open_s=0.0))
    permit = cb.allow("openai:gpt-4o-mini")
    cb.record(permit, ok=False)  # opens it; open_s 0: the next allow is a half-open probe
    cb.release(cb.allow("openai:gpt-4o-mini"))
    cb.snapshot("openai:gpt-4o-mini")
    budget = Budget(r, tenant_cap_usd=10.0)
    budget.settle(budget.reserve("job-1", "acme", 1.0, 0.01), 0.005)
    lane._SCRIPTS.clear()
    policy = lane.FlushPolicy()
    assert lane._flush_model(rt, "gpt-4o-mini", policy) == []  # type: ignore[arg-type]  # claim.lua, nothing pending
    r.hset(keys.BATCH_CLAIMS, "c1", '{"model": "gpt-4o-mini", "at": 0, "cids": ["pf-x"]}')
    lane._reclaim_stale(rt, policy)  # type: ignore[arg-type]  # reclaim.lua
    assert r.lrange(keys.batch_pending("gpt-4o-mini"), 0, -1) == [b"pf-x"]
    r.hset(keys.BATCH_OPEN, "b1", '{"provider": "scenario", "group": "g1"}')
    r.set(keys.batch_group_left("g1"), 1)
    backends._clients["scenario"] = _FinishedBatch()  # type: ignore[assignment]
    try:  # the poll lock (redis-py's Lock: one key) and close.lua
        assert lane.poll(SimpleNamespace(redis=r, run=asyncio.run), None, policy) == 0  # type: ignore[arg-type]
    finally:
        del backends._clients["scenario"]
    assert not r.hexists(keys.BATCH_OPEN, "b1")


def _check(r: Any) -> None:
    rec = SlotRecorder(r)
    scenario(r)
    by_sha: dict[str, list[list[str]]] = {}
    for sha, ks in rec.calls:
        by_sha.setdefault(sha, []).append(ks)
    for path in SCRIPTS:
        text = path.read_text()
        sha = hashlib.sha1(text.encode()).hexdigest()
        runs = by_sha.get(sha)
        assert runs, f"{path.relative_to(ROOT)} never ran in the scenario: add its caller to `scenario`"
        need = keys_read(text)
        for ks in runs:
            assert need == 10**9 or len(ks) >= need, f"{path.name} reads KEYS[{need}] but was passed {ks}"
            slots = {key_slot(k.encode()) for k in ks}
            assert len(slots) == 1, f"{path.name} called with keys in {len(slots)} slots: {ks}"


def test_every_script_runs_in_one_slot_on_fakeredis() -> None:
    _check(fakeredis.FakeRedis())


def test_every_script_runs_in_one_slot_on_a_real_cluster(cluster_client: Any) -> None:
    _check(cluster_client)


def test_the_checker_catches_a_cross_slot_script_call() -> None:
    r = fakeredis.FakeRedis()
    rec = SlotRecorder(r)
    r.register_script("return 1")(keys=[keys.job("a"), keys.job("b")])
    assert rec.calls and all(len({key_slot(k.encode()) for k in ks}) == 2 for _, ks in rec.calls)


def _script_call_sites() -> set[tuple[str, str]]:
    sites: set[tuple[str, str]] = set()
    for d in CODE_DIRS:
        for path in sorted((ROOT / d).rglob("*.py")):
            tree = ast.parse(path.read_text())
            for fn in ast.walk(tree):
                if isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
                    for node in ast.walk(fn):
                        if isinstance(node, ast.Call) and any(k.arg == "keys" for k in node.keywords):
                            sites.add((str(path.relative_to(ROOT)), fn.name))
    return sites


def _eval_call_sites() -> set[tuple[str, str]]:
    sites: set[tuple[str, str]] = set()
    for d in CODE_DIRS:
        for path in sorted((ROOT / d).rglob("*.py")):
            for fn in ast.walk(ast.parse(path.read_text())):
                if isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
                    for node in ast.walk(fn):
                        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                                and node.func.attr in ("eval", "evalsha", "eval_ro", "evalsha_ro")):  # fmt: skip
                            sites.add((str(path.relative_to(ROOT)), fn.name))
    return sites


def test_every_inline_script_call_site_is_accounted_for() -> None:
    sites = _eval_call_sites()
    assert sites == set(EVAL_CALL_SITES), (
        f"EVAL call sites changed: new {sites - set(EVAL_CALL_SITES)}, gone {set(EVAL_CALL_SITES) - sites}: "
        "say in EVAL_CALL_SITES what keeps each in one slot"
    )


def test_every_script_call_site_is_in_the_scenario() -> None:
    sites = _script_call_sites() - set(NOT_CLUSTER_SAFE_SCRIPT_SITES)
    assert sites <= SCRIPT_CALL_SITES, f"new script call sites {sites - SCRIPT_CALL_SITES}: run them in `scenario`"
    assert SCRIPT_CALL_SITES <= sites, f"stale entries {SCRIPT_CALL_SITES - sites}"


def test_no_key_name_outside_producer_keys() -> None:
    offenders = []
    for d in CODE_DIRS:
        for path in sorted((ROOT / d).rglob("*.py")):
            if path == ROOT / "producer" / "keys.py":
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.startswith("pf:"):
                    offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}: {node.value!r}")
                if isinstance(node, ast.Attribute) and node.attr == "PREFIX":  # f"{keys.PREFIX}..." builds a name
                    offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}: keys.PREFIX")
    assert not offenders, "key names belong in producer/keys.py:\n" + "\n".join(offenders)


def test_every_key_carries_a_hash_tag() -> None:
    for name, fn in inspect.getmembers(keys, inspect.isfunction):
        if name.endswith("_tag") or name in ("job_of_panel", "tenant_tag_open"):
            continue
        args = ["x.1"] * len(inspect.signature(fn).parameters)
        assert re.match(r"^pf:\{[^}]+\}", fn(*args)), f"keys.{name} has no hash tag: {fn(*args)}"
    for name, value in vars(keys).items():
        if name.isupper() and isinstance(value, str) and name not in ("PREFIX", "DECIDED_CHANNEL"):
            assert re.match(r"^pf:\{[^}]+\}", value), f"keys.{name} has no hash tag: {value}"


def test_keys_a_script_derives_match_keys_py() -> None:
    tt = keys.tenant_tag_open() + "acme" + "}:"
    assert (tt + "gw:tenant", tt + "gw:rate", tt + "budget:day:20260101") == (
        keys.gw_tenant("acme"),
        keys.gw_rate("acme"),
        keys.budget_tenant_day("acme", "20260101"),
    )


@pytest.mark.parametrize("job_id", ["j1", "a.b", "7f3e-uuid"])
def test_a_job_and_its_panels_share_a_slot(job_id: str) -> None:
    pid = f"{job_id}.2"
    slots = {key_slot(k.encode()) for k in (keys.job(job_id), keys.done_channel(job_id), keys.job_panels(job_id),
                                             keys.panel(pid), keys.votes(pid), keys.tally(pid), keys.calls(pid))}  # fmt: skip
    assert len(slots) == 1
