"""The answer cache, producer side: the key, the lookup at submit, and single flight.

A task class opts in with `cache: {ttl_s: ..}` in tasks.yaml. Workers publish each such class's
policy version (a hash of the class's policy entry and its models' registry entries) in
`pf:policy:cache`, so a producer computes keys without importing workers:

    key = cache_key(job, version)   # tenant, class, policy version, normalised input, schema, flags, lane

At submit (`admit`), in order: a valid entry under the key is served at once (receipt
`served_from_cache`, the original job id, cost 0); an entry of the wrong shape is deleted and
recomputed; else the first job takes the leader key (SET NX, the leader's job id) and runs, and
every identical job meanwhile is recorded as its follower and enqueues nothing; the entry check,
the lead and the follow are one script (`_ADMIT`), atomic with the leader's settle. The worker that
decides the leader writes the entry and resolves the followers (workers/answer_cache.py); a
leader that fails hands the lead to its first follower. A follower whose leader vanished (its
lead key expired) is re-admitted by its own `wait` (`rescue`).

Redis Cluster: a cache key's entry, lead and followers lists share the slot `{c:<key>}`; a job's
hash is in its own slot, so no script touches both (tests/cluster/test_slots.py). The job's side is
written around the script: `acache_role: admitting` before it, the role it got (and its leader)
after it, by a one-key script that writes nothing once the job is finalised. A leader settling in
between finds its follower still `admitting` and serves it (`_CLAIM` accepts that state); a
follower whose role lands after its leader handed the lead on is taken back by its `rescue`.
"""

from __future__ import annotations

import hashlib
import logging
import time
import unicodedata
from dataclasses import dataclass
from typing import Any, Literal

import orjson
import redis
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from producer import connect, keys
from producer.contract import Job, Receipt, Result

log = logging.getLogger("panel.answer_cache")
POLICY_CACHE = keys.POLICY_CACHE
Admission = Literal["hit", "leader", "follower", "bypass", "off"]


def entry_key(key: str) -> str:
    """String: the decided answer (CacheEntry JSON), expiring after the class's ttl_s."""
    return keys.cache_entry(key)


def lead_key(key: str) -> str:
    """String: the job id of the job computing this key (single flight)."""
    return keys.cache_lead(key)


def followers_key(key: str, leader: str) -> str:
    """List: the job ids waiting on `leader`'s decision."""
    return keys.cache_followers(key, leader)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class ClassCache(_Strict):
    """What workers publish per cache-enabled task class."""

    version: str = Field(min_length=16)
    ttl_s: float = Field(gt=0)
    lead_ttl_s: float = Field(gt=0)


class CacheEntry(_Strict):
    """A decided answer as cached. Any other shape is poison: ignored, deleted, recomputed."""

    job_id: str = Field(min_length=1)
    answer: str
    parsed: Any = None
    disagreement: str | None = None
    cost_usd: float = Field(ge=0)
    decided_at: float


@dataclass(frozen=True)
class Ticket:
    """Where a submitted job stands with the cache: `role` and, when it has one, its key."""

    role: Admission
    key: str | None = None
    leader: str | None = None


def text(v: bytes | str) -> str:
    return v.decode() if isinstance(v, bytes) else v


def published(r: redis.Redis, task_class: str) -> ClassCache | None:
    return parse_published(task_class, r.hget(POLICY_CACHE, task_class))


def parse_published(task_class: str, raw: bytes | str | None) -> ClassCache | None:
    """A class's cache settings as read from POLICY_CACHE (None: the class does not cache)."""
    if raw is None:
        return None
    try:
        return ClassCache.model_validate_json(raw)
    except ValidationError:
        log.warning("%s[%s] is not a ClassCache; caching off for it", POLICY_CACHE, task_class)
        return None


def normalise(text: str) -> str:
    """Unicode NFC, LF line ends, no trailing blanks on a line, no blank lines around the text.
    Indentation and inner spacing stay: they can change an answer (code, tables)."""
    text = unicodedata.normalize("NFC", text).replace("\r\n", "\n").replace("\r", "\n")
    return "\n".join(line.rstrip() for line in text.split("\n")).strip("\n")


def cache_key(job: Job, version: str) -> str:
    """Everything that can change the answer: the tenant (answers never cross tenants), the class
    and its policy version, the input as the models see it, the response schema, the flags and a
    forced lane (both choose the lane)."""
    material = {
        "tenant": job.tenant,
        "task_class": job.task_class,
        "version": version,
        "input": [[m["role"], normalise(m["content"])] for m in job.chat()],
        "schema": job.response_schema,
        "flags": job.flags,
        "lane": job.lane,
    }
    return hashlib.sha256(orjson.dumps(material, option=orjson.OPT_SORT_KEYS)).hexdigest()


def read_entry(r: redis.Redis, key: str) -> CacheEntry | None:
    """The cached answer; an entry of the wrong shape is deleted (if unchanged) and not served."""
    raw = r.get(entry_key(key))
    if raw is None:
        return None
    try:
        return CacheEntry.model_validate_json(raw)
    except ValidationError as e:
        log.warning("answer cache entry %s is malformed (%d errors); ignored and recomputed", key[:12], e.error_count())
        r.eval(_DELETE_IF_SAME, 1, entry_key(key), raw)
        return None


def served_result(job_id: str, job: Job, entry: CacheEntry, coalesced: bool, submitted_at: float) -> Result:
    receipt = Receipt(
        job_id=job_id, task_class=job.task_class, tenant=job.tenant, decision="cache", final_answer=entry.answer,
        disagreement=entry.disagreement, served_from_cache=True, cached_from_job=entry.job_id, coalesced=coalesced,
        saved_usd=entry.cost_usd, total_cost_usd=0.0, latency_ms=round((time.time() - submitted_at) * 1000, 1),
    )  # fmt: skip
    return Result(job_id=job_id, status="decided", answer=entry.answer, parsed=entry.parsed,
                  disagreement=entry.disagreement, receipt=receipt)  # fmt: skip


def write_served(r: redis.Redis, job_id: str, job: Job, entry: CacheEntry, coalesced: bool, submitted_at: float,
                 ttl_s: int, ledger_maxlen: int = 200_000) -> Result:  # fmt: skip
    """Write a served result, signal done and append the receipt to the ledger in one MULTI.
    The caller has claimed the job (`finalised` set), so this happens once."""
    result = served_result(job_id, job, entry, coalesced, submitted_at)
    assert result.receipt is not None
    jkey = keys.job(job_id)
    entry_fields = {"task_class": job.task_class, "receipt": result.receipt.model_dump_json()}
    cluster = connect.is_cluster(r)
    if cluster:  # the ledger is another slot: appended first, as finalise does (at least once)
        r.xadd(keys.LEDGER_STREAM, entry_fields, maxlen=ledger_maxlen, approximate=True)  # type: ignore[arg-type]
    pipe = r.pipeline(transaction=True)
    pipe.hset(jkey, mapping={"status": "decided", "result": result.model_dump_json(), "finalised": time.time()})
    pipe.rpush(keys.done_channel(job_id), "decided")
    if not cluster:
        pipe.xadd(keys.LEDGER_STREAM, entry_fields, maxlen=ledger_maxlen, approximate=True)  # type: ignore[arg-type]
    for k in (jkey, keys.done_channel(job_id)):
        pipe.expire(k, ttl_s)
    pipe.execute()
    return result


def admit(r: redis.Redis, job: Job, job_id: str, submitted_at: float, ttl_s: int) -> Ticket:
    """Decide a stored, not yet enqueued job against the cache. `hit`: served and done. `leader`
    or `bypass`: enqueue it (the worker writes the entry when it decides). `follower`: enqueue
    nothing; the leader's decision resolves it. `off`: the class does not cache."""
    return admit_with(r, published(r, job.task_class), job, job_id, submitted_at, ttl_s)


def admit_with(r: redis.Redis, meta: ClassCache | None, job: Job, job_id: str, submitted_at: float,
               ttl_s: int) -> Ticket:  # fmt: skip
    """`admit`, with the class's cache settings read already (the submit's round trip)."""
    if meta is None:
        return Ticket("off")
    key = cache_key(job, meta.version)
    jkey = keys.job(job_id)
    if job.cache == "bypass":  # computes afresh; its answer still refreshes the entry
        r.hset(jkey, mapping={"acache_key": key, "acache_role": "bypass", "acache_ttl_s": meta.ttl_s})
        return Ticket("bypass", key)
    lead_ex = max(1, int(meta.lead_ttl_s))
    r.hset(jkey, mapping={"acache_key": key, "acache_role": "admitting", "acache_ttl_s": meta.ttl_s})
    for _ in range(8):  # a turn repeats only when the entry it saw was poison or expired before the read
        # one script: the entry check, the lead and the follow are atomic with the leader's settle
        # (which writes the entry and frees the lead in one script), so no job sees "no entry"
        # before a settle and takes the freed lead after it: one leader per input, ever.
        role, leader = r.eval(_ADMIT, 2, entry_key(key), lead_key(key), job_id, lead_ex, lead_ex + ttl_s,
                              followers_key(key, ""))  # fmt: skip
        if role in (b"leader", b"follower"):
            by = text(leader) if role == b"follower" else ""
            if not r.eval(_ROLE, 1, jkey, role, by):  # its leader settled meanwhile and served it
                if role == b"leader":  # (a rescued job still on an old leader's list): free the lead
                    r.eval(_DELETE_IF_SAME, 1, lead_key(key), job_id)
                return Ticket("hit", key, by or None)
            return Ticket("follower", key, by) if by else Ticket("leader", key, job_id)
        entry = read_entry(r, key)
        if entry is not None:
            if r.hsetnx(jkey, "finalised", time.time()):
                write_served(r, job_id, job, entry, False, submitted_at, ttl_s)
            return Ticket("hit", key, entry.job_id)
    # Entries poisoned or expiring under us turn after turn: compute it ourselves rather than loop on
    r.hset(jkey, "acache_role", "bypass")
    return Ticket("bypass", key)


def rescue(r: redis.Redis, job_id: str) -> Ticket | None:
    """A follower whose leader is gone (its lead key expired or passed to a job that does not
    know this follower) is taken back and admitted again. None: nothing to do."""
    jkey = keys.job(job_id)
    leader, key = r.hmget(jkey, ["coalesced_with", "acache_key"])
    if leader is None or key is None:
        return None
    if r.get(lead_key(text(key))) == leader:  # still leads: wait on (a lead never comes back to a job
        return None  # that lost it: a leader is no follower, so it is never rescued and re-admitted)
    if not r.eval(_RESCUE, 1, jkey, leader):
        return None
    raw = r.hmget(jkey, ["spec", "submitted_at"])
    if raw[0] is None:
        return None
    data = orjson.loads(raw[0])
    data.pop("deadline", None)  # checked at submit; it may have passed while the job waited
    job = Job.model_validate(data)
    log.info("job %s: its leader %s is gone; admitted again", job_id, text(leader))
    return admit(r, job, job_id, float(raw[1] or time.time()), int(r.ttl(jkey) or 3600))


_DELETE_IF_SAME = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
# KEYS entry, lead (slot {c:<cache key>}); ARGV job id, lead ttl s, followers ttl s, followers key
# prefix (the same slot: `prefix .. leader` is a key of this cache key). An entry: the caller reads
# it. Else the job leads (the lead is free) or joins the followers of the job that leads. Atomic
# with _SETTLE (workers/answer_cache.py).
_ADMIT = """
if redis.call('EXISTS', KEYS[1]) == 1 then return {'entry', ''} end
if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'EX', ARGV[2]) then return {'leader', ARGV[1]} end
local leader = redis.call('GET', KEYS[2])
redis.call('RPUSH', ARGV[4] .. leader, ARGV[1])
redis.call('EXPIRE', ARGV[4] .. leader, ARGV[3])
return {'follower', leader}
"""
# KEYS job hash; ARGV role, leader ('' for a leader). The job's side of its admission, unless a
# leader's settle served it meanwhile (finalised): then nothing is written and 0 returned.
_ROLE = """
if redis.call('HEXISTS', KEYS[1], 'finalised') == 1 then return 0 end
redis.call('HSET', KEYS[1], 'acache_role', ARGV[1])
if ARGV[2] ~= '' then redis.call('HSET', KEYS[1], 'coalesced_with', ARGV[2]) end
return 1
"""
# KEYS job hash; ARGV leader. Take a follower back (its caller saw that its leader no longer leads).
_RESCUE = """
if redis.call('HGET', KEYS[1], 'coalesced_with') ~= ARGV[1] then return 0 end
if redis.call('HEXISTS', KEYS[1], 'finalised') == 1 then return 0 end
redis.call('HDEL', KEYS[1], 'coalesced_with')
return 1
"""
