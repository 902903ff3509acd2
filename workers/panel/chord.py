"""The quorum chord: one member's turn, from its call to its vote, returning what to do next.

Celery's chord waits for every header task; this one decides as soon as a quorum agrees. A turn
records the call before it votes, so a redelivered member (worker crash) re-uses a paid answer,
and returns the vote's follow-ups as actions (workers/panel/decision.py) for the task layer to
carry out (workers/panel/act.py), each at most once per panel.

    turn = run_member(chord, panel_id, "m0")           # Turn(status="answered", actions=(Conclude(), Cancel()))
    carry_out(chord.store, dispatcher, turn)
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, replace
from typing import Any

import redis

from producer import keys
from producer.contract import Job
from workers import metrics
from workers.errors import Cancelled
from workers.limits.steps import Owed
from workers.panel import watchdog
from workers.panel.admission import Ask, Speculation, matches
from workers.panel.agreement import Exact, make_rule
from workers.panel.calls import EXPECTED_OUTPUT_TOKENS, Admitted, CallOutcome, estimate_tokens
from workers.panel.decision import Action, Conclude, Nothing, after_vote
from workers.panel.outage import through_redis_outage
from workers.panel.ports import Chord
from workers.panel.record import Call, Status
from workers.panel.run import Member, PanelRun, VoteOutcome, json_mode
from workers.panel.state import PanelStore, Start
from workers.providers.caching import price, record_fields
from workers.registry import Registry

log = logging.getLogger("panel.chord")
REUSABLE = ("answered", "failed", "late")  # a recorded call a redelivered member votes again


@dataclass(frozen=True)
class Turn:
    """A member's turn (or the arbiter's): its call's status, and the actions its vote asks for."""

    status: str
    spec: PanelRun | None
    actions: tuple[Action, ...] = Nothing


def call_record(registry: Registry, spec: PanelRun, m: Member, status: Status, **extra: Any) -> Call:
    """A member's call record (workers/panel/record.py), priced by the panel's lane unless
    `batch` is given; `model` defaults to the member's (a failover names the model used)."""
    model = extra.pop("model", m.model)
    mspec = registry.model(model)
    return Call(member=m.member, model=model, provider=mspec.provider, tier=mspec.tier, status=status,
                batch=extra.pop("batch", spec.batch), **extra)  # fmt: skip


def run_member(chord: Chord, panel_id: str, member_id: str, batch: bool | None = None, ask: Ask | None = None) -> Turn:
    """One member's whole turn. `batch` prices the call (default: the panel's lane); a batch
    panel's member made in real time (workers/panel/route.py) passes False. `ask`: what its
    admission needs (the task's kwargs): the admission then goes with the start's round trip
    (workers/panel/admission.py), and is given back if the member does not call."""
    store = chord.store
    # a member that starts while Redis is away waits for it: raising would publish a retry, which
    # fails in the same outage, and the member would be lost (seen in the Redis-stop drill)
    # with the watchdog's started mark in the same round trip: its bound is pushed on by one lease
    # (while the call runs the watchdog sees the lease and leaves it; a copy whose record was lost,
    # its last writes not yet replicated when a Sentinel failover promoted the replica, is re-sent
    # a lease after its lease ends, not a whole call budget later: the drill's lost job, 240 s).
    # A gone panel's entry, if any, is only pushed on: the watchdog forgets it when it comes due.
    # And the job's spec when this process lacks it (the job and its panels share a slot).
    token = store.leases.token()
    job_id = panel_id.rsplit(".", 1)[0]  # panel ids are f"{job_id}.{n}" (workers/jobs.py new_panel)
    pre: list[Speculation | None] = [None]

    def turn() -> Start:  # the admission rides with the first try only: a retry after a lost reply
        # must not be granted twice (an outage's retry starts without it, as the usual path would)
        first = pre[0] is None and ask is not None and chord.admission is not None and not fault_armed(
            store, "before_call", panel_id, member_id)  # fmt: skip
        if first and ask is not None and chord.admission is not None:
            pre[0] = chord.admission.speculate(store.r, panel_id, member_id, ask, token)
        return store.turn(panel_id, member_id, lease=token,
                          also=lambda r: watchdog.started(r, panel_id, member_id, store.leases.lease_s),
                          job_spec_of=None if chord.jobs.has(job_id) else job_id,
                          admit=pre[0].queue if first and pre[0] is not None else None)  # fmt: skip

    start = through_redis_outage(turn)
    calling = (start.spec is not None and start.held and not start.decided
               and not (start.prior is not None and start.prior.status in REUSABLE))  # fmt: skip
    admitted: Admitted | None = None
    if pre[0] is not None:
        if calling and len(start.admitted) == 4:
            admitted = pre[0].took(start.admitted)
        else:  # not calling (or its admission never ran: a retried start): what it granted goes back
            pre[0].read(start.admitted)
            # sent with a try whose reply was lost: it may have run, its attempt's record with it
            pre[0].written = pre[0].written or len(start.admitted) < 4
            pre[0].give_back()
    spec, prior = start.spec, start.prior
    if spec is None:
        return Turn("gone", None)
    batch = spec.batch if batch is None else batch
    m = spec.member(member_id)
    reusable = prior is not None and prior.status in REUSABLE
    if not reusable and not start.decided and not start.held:
        # another copy of this member is calling now (redelivered by kombu after a broker
        # reconnect, or past the visibility timeout, or re-sent by the watchdog): wait for its
        # record instead of paying for the answer again (workers/panel/lease.py)
        prior, decided, held = wait_for_holder(store, panel_id, member_id, token)
        start = replace(start, prior=prior, decided=decided, held=held)
        reusable = prior is not None and prior.status in REUSABLE
    if prior and reusable:
        # Redelivered after the call was paid for (worker lost after the answer): re-use it.
        fault_point(store, "after_answer", panel_id, member_id)
        return Turn("reused", spec, cast_vote(store, spec, prior).actions)
    if start.decided:
        if start.held:  # no other copy is calling: say this member was cut off (unless it said so)
            store.put_call(panel_id, call_record(chord.registry, spec, m, "cancelled", batch=batch),
                           only_if_absent=True)  # fmt: skip
        return Turn("cancelled", spec)
    if not start.held:
        return Turn(prior.status if prior else "cancelled", spec)  # the copy that held the lease recorded it
    with store.leases.holding(panel_id, member_id):
        return _call(chord, spec, m, batch, start.job_spec, admitted, pre[0])


def _call(chord: Chord, spec: PanelRun, m: Member, batch: bool, job_spec: bytes | None = None,
          admitted: Admitted | None = None, pre: Speculation | None = None) -> Turn:  # fmt: skip
    """The member's call, holding its lease, then its record and its vote. `admitted`: its first
    attempt's admission, granted with its start (`pre` gives it back if the call does not use it)."""
    store, panel_id, member_id = chord.store, spec.panel_id, m.member
    try:
        job = chord.jobs.load(spec.job_id, job_spec)
        if admitted is not None and pre is not None and not matches(
                pre.ask, chord.registry, m.model, job.chat(), json_mode(spec, job), spec.logprobs,
                chord.jobs.spend(job, batch)):  # fmt: skip
            log.warning("member %s of %s: its task's admission ask differs from its job: asked again", member_id, panel_id)
            admitted = None
            pre.give_back()
        fault_point(store, "before_call", panel_id, member_id)
    except BaseException:
        if pre is not None and admitted is not None:  # not handed to the call: it goes back
            pre.give_back()
        raise
    started = time.time()
    # an answer's settlement (tokens, breaker, budget hold), or a cut-off call's give-back, is
    # owed until it goes with the member's record (`land`, or the cancelled record below); if
    # anything stops that, it goes alone here: once either way
    owed = Owed()
    try:
        return _called(chord, spec, m, batch, job, started, owed, admitted)
    finally:
        if not owed.sent:
            through_redis_outage(owed.send)


def _called(chord: Chord, spec: PanelRun, m: Member, batch: bool, job: Job, started: float, owed: Owed,
            admitted: Admitted | None = None) -> Turn:  # fmt: skip
    store, panel_id, member_id = chord.store, spec.panel_id, m.member
    try:
        res = chord.caller(panel_id, m.model, job.chat(), spec.deadline, json_mode=json_mode(spec, job),
                           spend=chord.jobs.spend(job, batch), logprobs=spec.logprobs, member=member_id,
                           in_panel=frozenset(x.model for x in spec.members if x.member != member_id),
                           owed=owed, admitted=admitted)  # fmt: skip
    except Cancelled as c:
        # In flight: the provider may bill the prompt, so charge its input tokens as sent
        sent = c.tokens_in if c.tokens_in is not None else estimate_tokens(job.chat()) - EXPECTED_OUTPUT_TOKENS
        tokens_in = sent if c.sent else 0
        # Cut off by the decision, so the conclusion has begun, may be reading the panel now, or
        # has finished: the record goes with the conclusion lease, so the receipt is rendered with
        # this charge whichever it is (a conclusion in progress gets a re-render request through
        # its lease: jobs.conclude_panel; a finished or unbegun one is this member's to run).
        # Asking only once the job was finalised missed a record that landed between the
        # conclusion's read and its finalise (test_lanes, ~1 run in 10 on a loaded machine).
        written, lease, read = store.put_cut_off(panel_id, spec.job_id, call_record(
            chord.registry, spec, m, "cancelled", tokens_in=tokens_in, batch=batch,
            cost_usd=chord.registry.cost(m.model, tokens_in, 0, batch),
            latency_ms=(time.time() - started) * 1000), owed=owed)  # fmt: skip
        if lease == "taken" or lease == "concluded":
            return Turn("cancelled", spec, (Conclude(lease=lease, read=read),))
        if lease is None and written:
            return Turn("cancelled", spec, (Conclude(),))
        return Turn("cancelled", spec)  # "held": its holder re-renders
    return land(chord, spec, m, job, res, elapsed_ms=(time.time() - started) * 1000, batch=batch, owed=owed)


def wait_for_holder(store: PanelStore, panel_id: str, member_id: str, token: str,
                    poll_s: float = 0.1) -> tuple[Call | None, bool, bool]:  # fmt: skip
    """Wait while another copy of the member holds its lease: until its call record lands (the
    answer it paid for, re-used here), the panel is decided, or the lease ends without a record
    (its holder died: this copy takes the lease and calls). Returns (record, decided, held)."""
    log.info("member %s of %s is being called by another copy: waiting for its record", member_id, panel_id)
    while True:
        time.sleep(poll_s)
        poll_s = min(poll_s * 1.5, 0.5)
        start = through_redis_outage(lambda: store.turn(panel_id, member_id, lease=token))
        if start.prior is not None or start.decided or start.held:
            return start.prior, start.decided, start.held


def abandon_member(chord: Chord, panel_id: str, member_id: str, reason: str) -> Turn:
    """A member task that was dead-lettered: count it as a failed call (or its recorded answer),
    so the panel goes on with the members it has instead of waiting for the deadline."""
    spec = chord.store.spec(panel_id)
    if spec is None:
        return Turn("gone", None)
    m = spec.member(member_id)
    failed = call_record(chord.registry, spec, m, "failed", error=reason)
    chord.store.put_call(panel_id, failed, only_if_absent=True)
    return cast_vote(chord.store, spec, chord.store.call(panel_id, member_id) or failed)


def land(chord: Chord, spec: PanelRun, m: Member, job: Job, res: CallOutcome, elapsed_ms: float,
         batch: bool | None = None, owed: Owed | None = None) -> Turn:  # fmt: skip
    """Record a member's call (answered or failed), then vote. Shared by the real-time and batch
    lanes. The record is written before the vote, so a redelivery re-uses a paid answer.
    `batch` prices the call (default: the panel's lane); a batch panel's line finished in real
    time near its deadline passes False and pays, and says, the real-time price. `owed`: the
    call's settlement, sent in front of the record in the same round trip (else before it)."""
    panel_id = spec.panel_id
    batch = spec.batch if batch is None else batch
    reg = chord.registry
    if res.completion is None:
        rec = call_record(reg, spec, m, "failed", model=res.model, error=res.error, batch=batch,
                          failed_over_from=res.failed_over_from, latency_ms=elapsed_ms)  # fmt: skip
    else:
        c = res.completion
        rule = make_rule(spec.agreement_spec(), job.response_schema)
        existing = ([e for e in through_redis_outage(lambda: chord.store.votes(panel_id)).values() if e]
                    if rule.reads_existing else [])  # a paid answer is not dropped by a Redis blip  # fmt: skip
        key = rule.key(c.text, existing)
        if key is None:  # the rule found nothing to extract: identical raw answers still agree
            raw = Exact().key(c.text, existing)
            key = f"raw:{raw}" if raw else None
        rec = call_record(reg, spec, m, "answered", model=res.model, failed_over_from=res.failed_over_from,
                          tokens_in=c.tokens_in, tokens_out=c.tokens_out, latency_ms=c.latency_ms, batch=batch,
                          cost_usd=price(reg, res.model, c, batch),
                          realtime_cost_usd=price(reg, res.model, c) if batch else None,
                          answer_key=key, text=c.text, logprob=c.logprob, **record_fields(reg, res.model, c, batch))  # fmt: skip
    observe_call(rec)
    # recorded before the vote: a worker lost between the two (or a member slow to vote past the
    # visibility timeout) is redelivered and re-uses the paid answer. Both go in one pipeline, the
    # record first (PanelStore.put_call_and_vote); the test hooks stop a worker between them, so
    # they go in two round trips there. A paid answer must not be dropped by a Redis restart
    # either (the redelivered member would buy it again): in an outage the record waits for
    # Redis on its own, as before, then the vote is cast. The call's settlement goes in front of
    # the record (one round trip for the three), or alone before it.
    if not TEST_HOOKS:
        try:
            return voted(chord.store, spec, rec, chord.store.put_call_and_vote(panel_id, rec, stage_step(spec), owed))
        except (redis.ConnectionError, redis.TimeoutError):
            pass
    if owed is not None:
        through_redis_outage(owed.send)
    through_redis_outage(lambda: chord.store.put_call(panel_id, rec))
    fault_point(chord.store, "after_answer", panel_id, m.member)
    return cast_vote(chord.store, spec, rec)


def cast_vote(store: PanelStore, spec: PanelRun, rec: Call) -> Turn:
    """Vote a recorded call (fresh, or re-used by a redelivered task); the vote's follow-ups come
    back as actions. The first vote of a call that arrives after the decision marks it `late`."""
    return voted(store, spec, rec, store.vote(spec.panel_id, rec.member, rec.answer_key, stage_step(spec)))


def voted(store: PanelStore, spec: PanelRun, rec: Call, outcome: VoteOutcome) -> Turn:
    """The turn a recorded call's vote gives (`cast_vote`, or the vote sent with the record)."""
    late = outcome.status == "decided" and not outcome.duplicate and rec.status == "answered"
    if late:
        rec = replace(rec, status="late")  # paid for, but the panel was decided without it
        store.put_call(spec.panel_id, rec)
    return Turn(rec.status, spec, after_vote(spec, outcome, late))


def observe_call(rec: Call) -> None:
    metrics.CALLS.labels(rec.model, rec.provider, rec.status, rec.role).inc()
    metrics.TOKENS.labels(rec.model, "in").inc(rec.tokens_in)
    metrics.TOKENS.labels(rec.model, "out").inc(rec.tokens_out)
    metrics.COST.labels(rec.model, str(rec.batch)).inc(rec.cost_usd)


def stage_step(spec: PanelRun) -> int:
    """How many more members a vote may send: one at a time when staged, else all at once."""
    return 1 if spec.dispatch == "staged" else len(spec.members)


# --- Test-only fault points. Inert unless the worker runs with PANEL_TEST_HOOKS=1, which only the
# reliability suite sets: it arms `keys.test_park(point, panel, member)`, the first member task to
# reach that point parks there (once: a redelivered task passes; with `every` set, every copy
# parks), and the test kill -9s its worker at exactly that step, or lets it go on with a `release`
# field (a member late to its own vote).
TEST_HOOKS = os.environ.get("PANEL_TEST_HOOKS") == "1"
PARK_LIMIT_S = 600.0


def fault_armed(store: PanelStore, point: str, panel_id: str, member_id: str) -> bool:
    """A park is armed at `point` for this member: its start asks nothing of the limits before it
    parks (a worker killed there has made no admission, as before admissions rode with the start)."""
    return TEST_HOOKS and bool(store.r.exists(keys.test_park(point, panel_id, member_id)))


def fault_point(store: PanelStore, point: str, panel_id: str, member_id: str) -> None:
    if not TEST_HOOKS:
        return
    r = store.r
    key = keys.test_park(point, panel_id, member_id)
    if not r.exists(key):
        return
    if not r.hsetnx(key, "parked_by", os.getpid()) and not r.hexists(key, "every"):
        return
    log.warning("test hook: member %s of %s parked at %s", member_id, panel_id, point)
    end = time.monotonic() + PARK_LIMIT_S
    while not r.hexists(key, "release") and time.monotonic() < end:
        time.sleep(0.05)
