"""The batch lane: member and arbiter calls collected per model, sent as one provider batch
(about half the real-time price), polled, and fed back into the same vote path as a real-time
member. Panels keep their semantics: staged (a quorum's worth first, more on disagreement), then
the arbiter only when the members disagree, each stage a later batch.

    enqueue_member(rt, panel_id, "m0")   # panel.batch_member: no provider call, a queued line
    flush(rt)                            # periodic: one upload per model when size or age is due
    poll(rt, d)                          # periodic: land finished batches' lines, retry failed ones

All state lives in Redis (pending lists, open batches, each line's owner and attempts), so a
worker killed at any point loses nothing: whichever worker runs the next poll picks the open
batches up. Lines come back in any order and are matched by custom id only. A line that errored,
expired or was cancelled goes into a later batch (at most MAX_ATTEMPTS batches), or is made in
real time when the job's deadline is too near for another batch.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from dataclasses import dataclass, field
from importlib.resources import files
from typing import Any

import orjson
from redis.exceptions import LockNotOwnedError

from producer import keys
from producer.wire import text
from workers.batch import holds
from workers.batch.arbiter import arbiter_messages_for, land_arbiter, needs_arbiter
from workers.batch.backends import backend_for
from workers.batch.lines import Line
from workers.batch.poll_lock import PollLock
from workers.batch.realtime import run_arbiter_now
from workers.panel.act import carry_out
from workers.panel.arbiter import before_judge, member_answers
from workers.panel.calls import CallOutcome
from workers.panel.chord import call_record, cast_vote, land
from workers.panel.ports import Dispatcher
from workers.panel.record import Call
from workers.panel.route import realtime_margin_s, route
from workers.panel.run import PanelRun, json_mode
from workers.providers.base import ChatRequest, Completion, ProviderError, ProviderUnavailable
from workers.runtime import Runtime

log = logging.getLogger("panel.batch")

AGES, OPEN, CLAIMS = keys.BATCH_AGES, keys.BATCH_OPEN, keys.BATCH_CLAIMS  # one slot: producer/keys.py
MAX_ATTEMPTS = 3  # batches a line may fail in before its member counts as failed


def _env(name: str, default: float) -> float:
    return float(os.environ.get(name, default))


@dataclass(frozen=True)
class FlushPolicy:
    """When to send, and when a batch is no longer worth waiting for. From PANEL_BATCH_* env."""

    max_items: int = field(default_factory=lambda: int(_env("PANEL_BATCH_MAX_ITEMS", 50_000)))
    max_age_s: float = field(default_factory=lambda: _env("PANEL_BATCH_MAX_AGE_S", 30))
    # a line this close to its job's deadline is made in real time instead of another batch
    realtime_margin_s: float = field(default_factory=realtime_margin_s)
    # a poll lock outlives a killed worker by at most this long
    lock_s: float = field(default_factory=lambda: _env("PANEL_BATCH_LOCK_S", 60))
    # a flush's claim on lines older than this lost its worker (uploads time out after 300 s)
    claim_stale_s: float = field(default_factory=lambda: _env("PANEL_BATCH_CLAIM_STALE_S", 600))

    def __post_init__(self) -> None:
        if not 1 <= self.max_items <= 50_000:
            raise ValueError(f"PANEL_BATCH_MAX_ITEMS={self.max_items}: give 1..50000 (OpenAI's per-file limit)")
        if self.max_age_s < 0 or self.realtime_margin_s < 0 or self.lock_s <= 0 or self.claim_stale_s <= 0:
            raise ValueError(
                "PANEL_BATCH_MAX_AGE_S and PANEL_BATCH_REALTIME_MARGIN_S must be >= 0; "
                "PANEL_BATCH_LOCK_S and PANEL_BATCH_CLAIM_STALE_S > 0"
            )


def too_late(spec: PanelRun, policy: FlushPolicy) -> bool:
    """True when another batch could not be trusted to finish before the job's deadline."""
    return route(spec, policy.realtime_margin_s) == "batch_realtime"


# --- enqueue ---------------------------------------------------------------------------------


def enqueue_member(rt: Runtime, panel_id: str, member_id: str, d: Dispatcher | None = None) -> str:
    """Queue a member's call for its model's next batch; once per member (a redelivered task
    finds its line registered and queues nothing). The line first takes a budget hold: refused,
    the member fails with the budget's reason and (given `d`) casts its failed vote."""
    spec = rt.store.spec(panel_id)
    if spec is None:
        return "gone"
    if rt.store.decided(panel_id):
        rt.store.put_call(panel_id, call_record(rt.registry, spec, spec.member(member_id), "cancelled"), only_if_absent=True)
        return "cancelled"
    cid = Line.open(rt, panel_id, member_id)
    if cid is None:
        return "already queued"
    refused = holds.reserve_line(rt, cid, spec, member_id)
    if refused is not None:
        failed = call_record(rt.registry, spec, spec.member(member_id), "failed", error=refused)
        rt.store.put_call(panel_id, failed, only_if_absent=True)
        if d is not None:
            carry_out(rt.store, d, cast_vote(rt.store, spec, rt.store.call(panel_id, member_id) or failed))
        return "refused"
    _push(rt, spec.member(member_id).model, [cid])
    return "queued"


def enqueue_arbiter(rt: Runtime, d: Dispatcher, panel_id: str) -> str:
    """Queue the arbiter's call for the arbiter model's next batch, or make it now when the
    deadline is too near for one."""
    spec = rt.store.spec(panel_id)
    if spec is None or not needs_arbiter(rt.store, panel_id):
        return "not needed"
    before = spec.agreement_spec().equivalence is not None or not spec.arbiter
    if before and rt.store.call(panel_id, "arbiter") is None:  # the equivalence check (real time: one
        # small call decides now, where a batch line would wait for another batch), or a judge-less stage's split
        job = rt.chord.jobs.load(spec.job_id)
        joined = before_judge(rt.chord, spec, job, member_answers(rt.store, panel_id), batch=False)
        if joined is not None:
            carry_out(rt.store, d, joined)
            return joined.status
    if route(spec) == "batch_realtime":
        turn = run_arbiter_now(rt.chord, panel_id)
        carry_out(rt.store, d, turn)
        return turn.status
    cid = Line.open(rt, panel_id, "arbiter")
    if cid is None:
        return "already queued"
    _push(rt, spec.arbiter, [cid])
    return "queued"


def _push(rt: Runtime, model: str, cids: list[str]) -> None:
    pipe = rt.redis.pipeline(transaction=True)  # one slot: {batch}
    pipe.rpush(keys.batch_pending(model), *cids)
    pipe.zadd(AGES, {model: time.time()}, nx=True)
    pipe.execute()


# --- flush -----------------------------------------------------------------------------------


def flush(rt: Runtime, policy: FlushPolicy | None = None, force: bool = False) -> list[str]:
    """Send every model's pending lines that are due (size or age). Returns the new batch ids.
    Lines are claimed atomically before the upload, so flushers running at once never send a
    line twice; a flusher killed mid-upload leaves a claim that a later flush puts back."""
    policy = policy or FlushPolicy()
    _reclaim_stale(rt, policy)
    created: list[str] = []
    now = time.time()
    ages: list[tuple[bytes, float]] = rt.redis.zrange(AGES, 0, -1, withscores=True)  # type: ignore[assignment]
    for raw_model, since in ages:
        model = text(raw_model)
        size = int(rt.redis.llen(keys.batch_pending(model)))
        if size == 0:
            rt.redis.zrem(AGES, model)
            # a line queued between the LLEN and the ZREM found its model's age still there (ZADD NX):
            # without it back, nothing would flush that line until the model's next one came
            if rt.redis.llen(keys.batch_pending(model)):
                rt.redis.zadd(AGES, {model: since}, nx=True)
            continue
        if force or size >= policy.max_items or now - since >= policy.max_age_s:
            created += _flush_model(rt, model, policy)
    return created


def _flush_model(rt: Runtime, model: str, policy: FlushPolicy) -> list[str]:
    claim = uuid.uuid4().hex
    raw = [c.decode() for c in _script(rt, "claim")(keys=[keys.batch_pending(model), CLAIMS],
                                                  args=[policy.max_items, claim, model, time.time()])]  # fmt: skip
    rt.redis.zadd(AGES, {model: time.time()}, xx=True)  # the lines left wait from now
    items: list[tuple[str, ChatRequest]] = []
    for cid in dict.fromkeys(raw):  # a line queued twice (a retry racing a redelivery) is sent once
        try:
            request = _request(rt, cid, model)
        except Exception:  # one line that cannot be built (its job gone) must not hold up the rest
            log.exception("batch line %s of %s dropped: its request could not be built", cid, model)
            continue
        if request is not None:
            items.append((cid, request))
    if not items:
        rt.redis.hdel(CLAIMS, claim)
        return []
    provider = rt.registry.model(model).provider
    try:
        statuses = rt.run(backend_for(rt, provider).submit(items))
    except Exception:
        _script(rt, "reclaim")(keys=[CLAIMS, keys.batch_pending(model)], args=[claim])  # the next flush tries again
        rt.redis.zadd(AGES, {model: time.time()}, nx=True)
        raise
    batch_ids = [st.id for st in statuses]
    _record_open(rt, model, provider, batch_ids, [cid for cid, _ in items], claim)
    log.info("batch %s: %d lines of %s", ",".join(batch_ids), len(items), model)
    return batch_ids


def _reclaim_stale(rt: Runtime, policy: FlushPolicy) -> None:
    """Claims older than `claim_stale_s` lost their flusher (killed mid-upload): re-queue them.
    Were the upload made after all, its lines go out twice; landing is idempotent per line, so
    that costs a line, never a second decision."""
    for claim, raw in rt.redis.hgetall(CLAIMS).items():
        info = orjson.loads(raw)
        if time.time() - float(info["at"]) > policy.claim_stale_s:
            model = str(info["model"])
            if _script(rt, "reclaim")(keys=[CLAIMS, keys.batch_pending(model)], args=[claim]):
                rt.redis.zadd(AGES, {model: float(info["at"])}, nx=True)
                log.warning("batch claim %s of %s was stale; its lines are queued again", text(claim), model)


_SCRIPTS: dict[tuple[int, str], Any] = {}


def _script(rt: Runtime, name: str) -> Any:
    """claim.lua / reclaim.lua / close.lua, registered once per Redis client."""
    key = (id(rt.redis), name)
    if key not in _SCRIPTS:
        _SCRIPTS[key] = rt.redis.register_script(files("workers.batch").joinpath(f"{name}.lua").read_text())
    return _SCRIPTS[key]


def _request(rt: Runtime, cid: str, model: str) -> ChatRequest | None:
    """The line's request, or None when it is no longer needed (panel decided or gone)."""
    line = Line.get(rt, cid)
    spec = rt.store.spec(line.panel_id) if line else None
    if line is None or spec is None:
        return None
    mspec = rt.registry.model(model)
    job = rt.jobs.load(spec.job_id)
    if line.is_arbiter:
        if not needs_arbiter(rt.store, spec.panel_id):
            return None
        return ChatRequest(model=mspec.wire_model, messages=arbiter_messages_for(rt.store, spec, job),
                           max_tokens=mspec.max_output_tokens, json_mode=True)  # fmt: skip
    if rt.store.decided(spec.panel_id):  # decided while queued: the line costs nothing
        rt.store.put_call(spec.panel_id, call_record(rt.registry, spec, spec.member(line.member), "cancelled"),
                          only_if_absent=True)  # fmt: skip
        return None
    return ChatRequest(model=mspec.wire_model, messages=job.chat(), max_tokens=mspec.max_output_tokens,
                       json_mode=json_mode(spec, job), logprobs=spec.logprobs)  # fmt: skip


def _record_open(rt: Runtime, model: str, provider: str, batch_ids: list[str], cids: list[str], group: str) -> None:
    """One group per flush: its lines, and how many of its batches are still open. A line that
    no batch of the group answers for (a batch that failed whole) is retried when the last closes.
    Closes the flush's claim in the same transaction: the lines are now the open batches' to land."""
    opened = {"model": model, "provider": provider, "created_at": time.time(), "n": len(cids), "group": group}
    ttl = rt.settings.result_ttl_s
    pipe = rt.redis.pipeline(transaction=True)  # one slot: {batch}
    pipe.sadd(keys.batch_group(group), *cids)
    pipe.set(keys.batch_group_left(group), len(batch_ids), ex=ttl)
    pipe.expire(keys.batch_group(group), ttl)
    for bid in batch_ids:
        pipe.hset(OPEN, bid, orjson.dumps(opened))
    pipe.hdel(CLAIMS, group)
    pipe.execute()


# --- poll ------------------------------------------------------------------------------------


def poll(rt: Runtime, d: Dispatcher, policy: FlushPolicy | None = None) -> int:
    """Follow every open batch; land the lines of finished ones. Returns lines landed."""
    policy = policy or FlushPolicy()
    landed = 0
    for raw_id, raw in rt.redis.hgetall(OPEN).items():
        bid, info = text(raw_id), orjson.loads(raw)
        lock = PollLock.take(rt.redis, bid, policy.lock_s)
        if lock is None:
            continue
        try:
            if rt.redis.hexists(OPEN, bid):  # else closed since the HGETALL, by a poller that held the lock
                landed += _poll_one(rt, d, bid, info, policy, lock)
        except ProviderError as e:  # the provider is down or slow: the batch is still open, try next tick
            log.warning("batch %s: poll failed (%s); will retry", bid, e)
        except LockNotOwnedError:  # lost mid-batch (logged below): the poller holding it lands the rest
            pass
        finally:
            if not lock.release():
                log.warning("batch %s: the poll outlived its lock (PANEL_BATCH_LOCK_S=%g); the poller "
                            "holding it now follows the batch", bid, policy.lock_s)  # fmt: skip
    return landed


def _poll_one(rt: Runtime, d: Dispatcher, bid: str, info: dict[str, object], policy: FlushPolicy,
              lock: PollLock) -> int:  # fmt: skip
    backend = backend_for(rt, str(info["provider"]))
    with lock.kept():  # a provider slow to answer, or a large results file, outlasts the lock: still ours
        status = rt.run(backend.status(bid))
        if not status.finished:
            return 0
        results = rt.run(backend.results(status))
    group = keys.batch_group(str(info.get("group", "")))
    for cid, outcome in results:
        lock.keep()  # a batch of many lines outlasts the lock: re-armed as it goes
        try:
            _land_line(rt, d, bid, cid, outcome, policy)
        except Exception:  # one bad line (its job gone, say) must not hold up the batch's others
            log.exception("batch %s: line %s could not be landed; its panel is left to the deadline sweep", bid, cid)
    if results:
        rt.redis.srem(group, *[cid for cid, _ in results])
    # close.lua: None when the batch was closed already (a re-run after a crash, or another poller that
    # landed it too): each batch counts its group down once, so a group closes with its last batch only
    left = _script(rt, "close")(keys=[OPEN, group + ":left"], args=[bid])
    if left is not None and int(left) <= 0:
        unanswered = [text(c) for c in rt.redis.smembers(group)]
        for cid in unanswered:
            reason = f"batch {bid} {status.raw_status} without a result for this line"
            _land_line(rt, d, bid, cid, ProviderUnavailable(str(info["provider"]), status.message or reason), policy)
        rt.redis.delete(group, group + ":left")
    log.info("batch %s %s: %d result lines", bid, status.raw_status, len(results))
    return len(results)


def _land_line(rt: Runtime, d: Dispatcher, bid: str, cid: str, outcome: Completion | ProviderError,
               policy: FlushPolicy) -> None:  # fmt: skip
    line = Line.get(rt, cid)
    spec = rt.store.spec(line.panel_id) if line else None
    if line is None or spec is None:
        return  # not ours, or its panel expired
    prior = rt.store.call(spec.panel_id, line.member)
    if not line.first_landing(rt, bid) or (not line.is_arbiter and prior and prior.status in ("answered", "late")):
        _repeat_follow_ups(rt, d, spec, line, prior)  # landed before: a poll re-run, or a line sent twice
        return
    if isinstance(outcome, ProviderError):
        _line_failed(rt, d, spec, line, outcome, policy)
        return
    if not line.is_arbiter:
        model = spec.member(line.member).model
        holds.settle_line(rt, cid, rt.registry.cost(model, outcome.tokens_in, outcome.tokens_out, True))
    job = rt.jobs.load(spec.job_id)
    if line.is_arbiter:
        turn = land_arbiter(rt.chord, spec, job, CallOutcome(spec.arbiter, outcome), batch=True)
        if turn.status == "retry":
            _send_again(rt, d, spec, line, policy)
        carry_out(rt.store, d, turn)
        return
    m = spec.member(line.member)
    carry_out(rt.store, d, land(rt.chord, spec, m, job, CallOutcome(m.model, outcome), outcome.latency_ms))


def _repeat_follow_ups(
    rt: Runtime, d: Dispatcher, spec: PanelRun, line: Line, prior: Call | None
) -> None:
    """Re-vote (idempotent) so a decision whose follow-up was lost with its worker is acted on."""
    if line.is_arbiter:
        if rt.store.decided(spec.panel_id) == "arbiter":
            d.conclude(spec.panel_id)
    elif prior and prior.status in ("answered", "failed", "late"):
        carry_out(rt.store, d, cast_vote(rt.store, spec, prior))


def _line_failed(rt: Runtime, d: Dispatcher, spec: PanelRun, line: Line, error: ProviderError,
                 policy: FlushPolicy) -> None:  # fmt: skip
    """An errored, expired or cancelled line: a later batch, real time, or a failed call. A line
    the provider refused as bad input (not retryable) fails at once: no retry can fix it."""
    attempts = line.failed_once_more(rt) if error.retryable else MAX_ATTEMPTS
    if line.is_arbiter and not needs_arbiter(rt.store, spec.panel_id):
        return
    if not line.is_arbiter and rt.store.decided(spec.panel_id):
        holds.settle_line(rt, line.cid, 0.0)
        rt.store.put_call(spec.panel_id, call_record(rt.registry, spec, spec.member(line.member), "cancelled"),
                          only_if_absent=True)  # fmt: skip
        return
    if attempts < MAX_ATTEMPTS or (too_late(spec, policy) and error.retryable):
        _send_again(rt, d, spec, line, policy)
        return
    holds.settle_line(rt, line.cid, 0.0)  # failed for good: nothing billed
    why = f"batch line failed in {attempts} batches; last: {error}"
    log.info("panel %s %s: %s", spec.panel_id, line.member, why)
    job = rt.jobs.load(spec.job_id)
    if line.is_arbiter:
        carry_out(rt.store, d, land_arbiter(rt.chord, spec, job, CallOutcome(spec.arbiter, None, why), batch=True))
    else:
        m = spec.member(line.member)
        carry_out(rt.store, d, land(rt.chord, spec, m, job, CallOutcome(m.model, None, why), 0.0))


def _send_again(rt: Runtime, d: Dispatcher, spec: PanelRun, line: Line, policy: FlushPolicy) -> None:
    """The line once more: in the model's next batch, or in real time near the deadline."""
    if too_late(spec, policy):
        holds.settle_line(rt, line.cid, 0.0)  # real time reserves its own hold
        if line.is_arbiter:  # a batch panel's arbiter near its deadline runs in real time
            d.arbiter(spec, "batch_realtime")
        else:
            d.member(spec, spec.member(line.member), "batch_realtime")
        return
    _push(rt, spec.arbiter if line.is_arbiter else spec.member(line.member).model, [line.cid])
