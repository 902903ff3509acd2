"""The batch lane: member calls collected per model, sent as one provider batch (~50% off),
polled, and fed back into the same vote path as a real-time member.

    enqueue(rt, spec, member)          # panel.batch_member: no provider call, just a queued line
    flush(rt)                          # periodic: one upload per model when size or age is reached
    poll(rt, d)                        # periodic: land finished batches' lines, retry failed ones

All state lives in Redis (pending lists, open batches), so a worker restart loses nothing: a
batch submitted before a crash is polled by whichever worker runs the next poll.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass

import orjson

from workers.batch.backends import backend_for
from workers.panel.calls import CallOutcome
from workers.panel.chord import Dispatcher, call_record, json_mode, land
from workers.panel.state import Member, PanelSpec
from workers.providers.base import ChatRequest, Completion, ProviderError
from workers.runtime import Runtime

log = logging.getLogger("panel.batch")

PENDING = "pf:batch:pending:"  # list per model: custom ids waiting for a batch
AGES = "pf:batch:ages"  # zset: model -> when its oldest pending line arrived
OPEN = "pf:batch:open"  # hash: batch id -> JSON of OpenBatch
ATTEMPTS = "pf:batch:attempts"  # hash: custom id -> batch attempts made
MAX_ATTEMPTS = 3


@dataclass(frozen=True)
class FlushPolicy:
    max_items: int = int(os.environ.get("PANEL_BATCH_MAX_ITEMS", "50000"))
    max_age_s: float = float(os.environ.get("PANEL_BATCH_MAX_AGE_S", "30"))
    realtime_margin_s: float = float(os.environ.get("PANEL_BATCH_REALTIME_MARGIN_S", "120"))


def custom_id(panel_id: str, member: str) -> str:
    return f"{panel_id.replace('.', '-')}__{member}"


def split_id(cid: str) -> tuple[str, str]:
    panel, member = cid.rsplit("__", 1)
    job, _, n = panel.rpartition("-")
    return f"{job}.{n}", member


def enqueue(rt: Runtime, spec: PanelSpec, m: Member) -> bool:
    """Queue one member's call for the next batch of its model; once per member."""
    cid = custom_id(spec.panel_id, m.member)
    if not rt.redis.hsetnx(ATTEMPTS, cid, 0):
        return False
    _push(rt, m.model, [cid])
    return True


def enqueue_member(rt: Runtime, panel_id: str, member_id: str) -> str:
    spec = rt.store.spec(panel_id)
    if spec is None:
        return "gone"
    if rt.store.decided(panel_id):
        rt.store.put_call(panel_id, member_id, call_record(spec, spec.member(member_id), rt, "cancelled"), only_if_absent=True)
        return "cancelled"
    return "queued" if enqueue(rt, spec, spec.member(member_id)) else "already queued"


def _push(rt: Runtime, model: str, cids: list[str]) -> None:
    pipe = rt.redis.pipeline()
    pipe.rpush(PENDING + model, *cids)
    pipe.zadd(AGES, {model: time.time()}, nx=True)
    pipe.execute()


def flush(rt: Runtime, policy: FlushPolicy = FlushPolicy(), force: bool = False) -> list[str]:
    """Send every model's pending lines that are due. Returns the new batch ids."""
    created: list[str] = []
    now = time.time()
    for raw_model, since in rt.redis.zrange(AGES, 0, -1, withscores=True):
        model = raw_model.decode()
        size = int(rt.redis.llen(PENDING + model))
        if size == 0:
            rt.redis.zrem(AGES, model)
            continue
        if not (force or size >= policy.max_items or now - since >= policy.max_age_s):
            continue
        lock = f"pf:batch:lock:{model}"
        if not rt.redis.set(lock, 1, nx=True, ex=300):
            continue  # another worker is flushing this model
        try:
            created += _flush_model(rt, model, policy)
        finally:
            rt.redis.delete(lock)
    return created


def _flush_model(rt: Runtime, model: str, policy: FlushPolicy) -> list[str]:
    cids = [c.decode() for c in rt.redis.lrange(PENDING + model, 0, policy.max_items - 1)]
    spec_model = rt.registry.model(model)
    items: list[tuple[str, ChatRequest]] = []
    from workers.jobs import load_job

    for cid in cids:
        panel_id, member = split_id(cid)
        spec = rt.store.spec(panel_id)
        if spec is None:
            continue
        if rt.store.decided(panel_id):  # decided while queued: the line costs nothing
            rt.store.put_call(panel_id, member, call_record(spec, spec.member(member), rt, "cancelled"), only_if_absent=True)
            continue
        job = load_job(rt, spec.job_id)
        items.append((cid, ChatRequest(model=spec_model.wire_model, messages=job.chat(),
                                       max_tokens=spec_model.max_output_tokens, json_mode=json_mode(spec, job))))  # fmt: skip
    batch_ids: list[str] = []
    if items:
        backend = backend_for(rt, spec_model.provider)
        # The window between the upload and LTRIM is the one place a crash could send a line
        # twice; the vote dedupes it, so a duplicate costs a line, never a second decision.
        batch_ids = [st.id for st in rt.run(backend.submit(items))]
        opened = {"model": model, "provider": spec_model.provider, "created_at": time.time(), "n": len(items)}
        pipe = rt.redis.pipeline()
        for bid in batch_ids:
            pipe.hset(OPEN, bid, orjson.dumps(opened))
        pipe.execute()
        log.info("batch %s: %d lines of %s", ",".join(batch_ids), len(items), model)
    pipe = rt.redis.pipeline()
    pipe.ltrim(PENDING + model, len(cids), -1)
    pipe.zadd(AGES, {model: time.time()}, xx=True)
    pipe.execute()
    return batch_ids


def poll(rt: Runtime, d: Dispatcher, policy: FlushPolicy = FlushPolicy()) -> int:
    """Follow every open batch; land the lines of finished ones. Returns lines landed."""
    landed = 0
    for raw_id, raw in rt.redis.hgetall(OPEN).items():
        bid, info = raw_id.decode(), orjson.loads(raw)
        lock = f"pf:batch:poll:{bid}"
        if not rt.redis.set(lock, 1, nx=True, ex=120):
            continue
        try:
            backend = backend_for(rt, info["provider"])
            status = rt.run(backend.status(bid))
            if not status.finished:
                continue
            lines = rt.run(backend.results(status))
            landed += _land_lines(rt, d, info["model"], lines, policy)
            rt.redis.hdel(OPEN, bid)
            log.info("batch %s %s: %d lines landed", bid, status.state, len(lines))
        finally:
            rt.redis.delete(lock)
    return landed


def _land_lines(rt: Runtime, d: Dispatcher, model: str, lines: list[tuple[str, Completion | ProviderError]], policy: FlushPolicy) -> int:
    from workers.jobs import load_job

    retry: list[str] = []
    for cid, outcome in lines:
        panel_id, member = split_id(cid)
        spec = rt.store.spec(panel_id)
        if spec is None:
            continue
        m = spec.member(member)
        prior = rt.store.call(panel_id, member)
        if prior and prior["status"] in ("answered", "late"):
            continue  # landed before (a poll re-run after a crash)
        job = load_job(rt, spec.job_id)
        if isinstance(outcome, ProviderError):
            attempts = int(rt.redis.hincrby(ATTEMPTS, cid, 1))
            if rt.store.decided(panel_id):
                continue
            if spec.deadline - time.time() < policy.realtime_margin_s:
                d.realtime_member(spec, m)  # too late for another batch: finish it in real time
            elif attempts < MAX_ATTEMPTS:
                retry.append(cid)
            else:
                land(rt, d, spec, m, job, CallOutcome(model, None, f"batch line failed {attempts}x: {outcome}"), 0.0)
            continue
        land(rt, d, spec, m, job, CallOutcome(model, outcome), outcome.latency_ms)
    if retry:
        _push(rt, model, retry)
    return len(lines)
