"""The answer cache, worker side: each class's policy version, published for producers, and
what a decided (or failed) job does for the cache and the jobs waiting on it.

The producer side (key, lookup, single flight at submit) is producer/answer_cache.py.

    publish(pipe, table)                                  # at worker start, beside the task classes
    settle(r, job_id, result, result_ttl_s, lead_ttl_s)   # once, when a job is finalised or failed
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from typing import Any, cast

import orjson
import redis

from producer import answer_cache as pac
from producer import keys
from producer.contract import Job, Result
from workers.panel.arbiter import ARBITER_SYSTEM
from workers.policy import PolicyTable, TaskPolicy

log = logging.getLogger("panel.answer_cache")
LEAD_SLACK_S = 120.0  # a leader holds the lead this long past its deadline at most


def models_of(policy: TaskPolicy, table: PolicyTable) -> list[str]:
    """Every model that can answer for the class: single, members, arbiter, and their fallbacks."""
    named = [policy.single.model, *policy.panel.members, policy.panel.arbiter]
    seen: list[str] = []
    while named:
        m = named.pop(0)
        if m not in seen:
            seen.append(m)
            named += table.registry.model(m).fallbacks
    return seen


def version(table: PolicyTable, task_class: str) -> str:
    """A hash of everything that decides the class's answers: its whole policy entry (members,
    rule, thresholds, quorum, rubric, triggers; not the cache setting itself), the registry entries
    of the models it can reach, and the arbiter's instructions. Any change makes new keys."""
    policy = table.get(task_class)
    material: dict[str, Any] = {
        "policy": policy.model_dump(mode="json", exclude={"cache", "description"}),
        "models": {m: table.registry.model(m).model_dump(mode="json") for m in models_of(policy, table)},
        "arbiter_system": ARBITER_SYSTEM,
    }
    return hashlib.sha256(orjson.dumps(material, option=orjson.OPT_SORT_KEYS)).hexdigest()


def published(table: PolicyTable) -> dict[str, bytes]:
    out = {}
    for name, p in table.task_classes.items():
        if p.cache is not None and p.cache.enabled:
            lead_ttl = (p.deadline_s or table.file.defaults.deadline_s) + LEAD_SLACK_S
            meta = pac.ClassCache(version=version(table, name), ttl_s=p.cache.ttl_s, lead_ttl_s=lead_ttl)
            out[name] = meta.model_dump_json().encode()
    return out


def publish(pipe: redis.client.Pipeline, table: PolicyTable) -> None:
    """Replace the published versions (inside the caller's MULTI)."""
    pipe.delete(pac.POLICY_CACHE)
    if entries := published(table):
        pipe.hset(pac.POLICY_CACHE, mapping=entries)  # type: ignore[arg-type]


def lead_ttl(table: PolicyTable) -> float:
    """How long a follower promoted to leader holds the lead (the default deadline and slack)."""
    return table.file.defaults.deadline_s + LEAD_SLACK_S


def settle(r: redis.Redis, job_id: str, result: Result, result_ttl_s: int, lead_ttl_s: float,
           send: Callable[[str], None], store: bool = True) -> None:  # fmt: skip
    """A job is finalised. A cache leader or bypass job writes its decided answer (unless `store`
    is False: an answer no check accepted, kept because the stages after it ran out of time, is
    given to the jobs waiting on it, not served to later ones); a leader resolves its followers,
    or, having failed, hands the lead to the first of them. Safe to repeat (a re-render after a
    crash between the result and this): the followers list is drained or moved once, each
    follower is claimed once."""
    role, key, ttl = r.hmget(keys.job(job_id), ["acache_role", "acache_key", "acache_ttl_s"])
    if role not in (b"leader", b"bypass") or key is None:
        return
    k = pac.text(key)
    decided = result.status == "decided" and result.answer is not None and result.receipt is not None
    entry = b""
    if decided:
        assert result.receipt is not None and result.answer is not None
        entry = pac.CacheEntry(job_id=job_id, answer=result.answer, parsed=result.parsed,
                               disagreement=result.disagreement, cost_usd=result.receipt.total_cost_usd,
                               decided_at=time.time()).model_dump_json().encode()  # fmt: skip
    if role == b"bypass":
        if entry and store:
            r.set(pac.entry_key(k), entry, px=int(float(ttl or 60) * 1000))
        return
    if not decided:
        promote(r, k, job_id, lead_ttl_s, send)
        return
    followers = r.eval(_SETTLE, 3, pac.entry_key(k), pac.lead_key(k), pac.followers_key(k, job_id),
                              entry, int(float(ttl or 60) * 1000) if store else 0, job_id)  # fmt: skip
    if followers:
        resolve(r, job_id, pac.CacheEntry.model_validate_json(entry), [pac.text(f) for f in followers], result_ttl_s)


def resolve(r: redis.Redis, leader: str, entry: pac.CacheEntry, followers: list[str], result_ttl_s: int) -> int:
    """Write each follower's result from the leader's entry; a follower its own wait took back
    (rescued) or already resolved is left alone. Returns how many were resolved here."""
    n = 0
    for fid in followers:
        if not r.eval(_CLAIM, 1, keys.job(fid), leader, time.time()):
            continue
        raw = r.hmget(keys.job(fid), ["spec", "submitted_at"])
        if raw[0] is None:
            continue
        job = Job.model_validate(_spec(pac.text(raw[0])))
        pac.write_served(r, fid, job, entry, True, float(raw[1] or time.time()), result_ttl_s)
        n += 1
    if n:
        log.info("job %s: %d coalesced job(s) served its answer", leader, n)
    return n


def promote(r: redis.Redis, key: str, leader: str, lead_ttl_s: float, send: Callable[[str], None]) -> str | None:
    """The leader failed: its first follower becomes the leader and runs (the rest now wait on
    it), so a failure never strands them and never fails them without a try of their own."""
    # Each step keeps to one slot (Redis Cluster): the cache key's lists and lead, or one job hash.
    while True:  # the first follower still waiting on this leader takes the lead
        nxt = cast("bytes | None", r.lpop(pac.followers_key(key, leader)))
        if nxt is None:
            r.eval(_FREE_LEAD, 1, pac.lead_key(key), leader)
            return None
        fid = pac.text(nxt)  # popped: a crash here leaves it to its own wait (`rescue`)
        if r.eval(_TAKE_LEAD, 1, keys.job(fid), leader):
            break
    rest = r.eval(_HAND_OVER, 3, pac.lead_key(key), pac.followers_key(key, leader), pac.followers_key(key, fid),
                  leader, fid, int(lead_ttl_s))  # fmt: skip
    for f in rest:  # the rest now wait on the new leader (one that missed this is rescued by its wait)
        r.eval(_FOLLOW, 1, keys.job(pac.text(f)), leader, fid)
    send(fid)  # the Dispatcher's `run` (workers/tasks.py): this module sends nothing itself
    log.info("job %s failed; coalesced job %s runs in its place", leader, fid)
    return fid


def _spec(raw: str) -> dict[str, Any]:
    data: dict[str, Any] = orjson.loads(raw)
    data.pop("deadline", None)  # may have passed while it waited; it was checked at submit
    return data


# KEYS entry, lead, leader's followers; ARGV entry JSON, ttl ms (0: not stored), leader.
_SETTLE = """
if tonumber(ARGV[2]) > 0 then redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) end
if redis.call('GET', KEYS[2]) == ARGV[3] then redis.call('DEL', KEYS[2]) end
local f = redis.call('LRANGE', KEYS[3], 0, -1)
redis.call('DEL', KEYS[3])
return f
"""
# KEYS follower's job hash; ARGV leader, now. Claim a follower still waiting on this leader, or one
# on its list whose admission has not yet written whom it follows (producer/answer_cache.py).
_CLAIM = """
local with = redis.call('HGET', KEYS[1], 'coalesced_with')
if with ~= ARGV[1] and not (not with and redis.call('HGET', KEYS[1], 'acache_role') == 'admitting') then
  return 0
end
if redis.call('HSETNX', KEYS[1], 'finalised', ARGV[2]) == 0 then return 0 end
return 1
"""
# KEYS lead; ARGV leader. A leader that failed with nobody waiting frees the key.
_FREE_LEAD = """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 1
"""
# KEYS a follower's job hash; ARGV the failed leader. It leads if it still waits on that leader.
_TAKE_LEAD = """
if redis.call('HGET', KEYS[1], 'coalesced_with') ~= ARGV[1] then return 0 end
if redis.call('HEXISTS', KEYS[1], 'finalised') == 1 then return 0 end
redis.call('HDEL', KEYS[1], 'coalesced_with')
redis.call('HSET', KEYS[1], 'acache_role', 'leader')
return 1
"""
# KEYS lead, failed leader's followers, new leader's followers (one slot); ARGV failed leader, new
# leader, lead ttl. The new leader takes the lead (if still the failed one's, or free) and the
# failed one's followers list, which it returns.
_HAND_OVER = """
local lead = redis.call('GET', KEYS[1])
if lead == ARGV[1] or not lead then redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3]) end
local rest = redis.call('LRANGE', KEYS[2], 0, -1)
if #rest > 0 then redis.call('RENAME', KEYS[2], KEYS[3]) end
return rest
"""
# KEYS a follower's job hash; ARGV old leader, new leader.
_FOLLOW = """
if redis.call('HGET', KEYS[1], 'coalesced_with') == ARGV[1] then redis.call('HSET', KEYS[1], 'coalesced_with', ARGV[2]) end
return 1
"""
