"""A member's admission sent with its start: one round trip where there were two (issue 13).

A member's first round trip reads its turn (`PanelStore.turn`: its record, decided, its lease);
its call then asks the breaker, the budget and the limiter (workers/panel/calls.py `_admit`), with
the attempt's in_flight record, in a second. Those need only the model, the prompt's size, the
input tokens as sent and whose budget: not the prompt. Whoever sends the member holds the job
and puts that in the task's kwargs as an `Ask` (no prompt, no key: Flower may show it). The
member then queues the admission after the turn's reads, in the same MULTI, speculatively:

    pre = speculate(io, r, panel_id, "m0", ask, token)  # None: a cluster, other clients, over a limit
    start = store.turn(panel_id, "m0", lease=token, admit=pre.queue)
    admitted = pre.took(start.admitted)                 # calling: (permit, hold, reservation, opened)
    pre.read(start.admitted); pre.give_back()           # not calling: everything granted goes back

The attempt's record is written only when the member will call (open_attempt.lua: the panel
undecided, no record, this copy's lease). A turn that says the member does not call (decided,
another copy calling, a record to re-use, the panel gone) gives back what was granted in one more
round trip, the rare path: a budget hold is refunded, the limiter's tokens and its request
returned (the request while no later grant came after it: `RateLimiter.release_step`), a half-open
probe slot released (an ordinary permit holds nothing). A refusal or a limiter wait gives back too,
and the call then asks again the usual way, which raises or waits as it always did. The member
checks the ask against the job it loaded before it calls (`matches`); one that differs is given back.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from hashlib import sha1
from importlib.resources import files
from typing import Any, Protocol

import orjson
import redis

from producer import connect, keys
from producer.contract import Job
from workers.budget import Hold, Spend
from workers.limits import BreakerOpen, Limit, Permit, Reservation, TokensExceedLimit
from workers.limits.steps import ScriptStep, run_steps
from workers.panel import attempts
from workers.panel.calls import EXPECTED_OUTPUT_TOKENS, Admitted, CallIO, Opened, tokens_for_size
from workers.panel.outage import through_redis_outage
from workers.panel.run import Member, PanelRun, json_mode
from workers.providers import billing
from workers.providers.base import ChatRequest
from workers.registry import Registry

OPEN_ATTEMPT = files("workers.panel").joinpath("open_attempt.lua").read_text()
OPEN_SHA = sha1(OPEN_ATTEMPT.encode()).hexdigest()


@dataclass(frozen=True)
class Ask:
    """What a member's admission needs, sent in its task's kwargs: its model, the prompt's size
    (characters and turns: `estimate_tokens`), the input tokens as sent (the attempt record's
    charge if the call is lost: providers/billing.py) and the budget it draws on."""

    model: str
    chars: int
    turns: int
    sent: int
    tenant: str
    cap_usd: float | None
    batch: bool

    def args(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def from_args(raw: object) -> Ask | None:
        """The ask a task was sent with; None for none, or one this code cannot read (an older
        or newer sender): the member then admits its call the usual way."""
        if not isinstance(raw, dict):
            return None
        try:
            return Ask(**raw)
        except TypeError:
            return None


def ask_for(registry: Registry, model: str, messages: list[dict[str, str]], json_mode: bool, logprobs: bool,
            spend: Spend) -> Ask:  # fmt: skip
    """The ask of a call of `model` with `messages`, as its member will make it (calls.py `_one_model`)."""
    spec = registry.model(model)
    request = ChatRequest(model=spec.wire_model, messages=messages, max_tokens=spec.max_output_tokens,
                          json_mode=json_mode, logprobs=logprobs, timeout_s=1.0)  # fmt: skip
    sent = billing.input_tokens(registry.provider_of(model).api, request)
    return Ask(model, sum(len(m["content"]) for m in messages), len(messages), sent, spend.tenant, spend.cap_usd,
               spend.batch)  # fmt: skip


def asks_for(chord: HasJobs, spec: PanelRun, members: Sequence[Member], job: Job) -> dict[str, Ask]:
    """Each member's ask, by the one who sends them holding the job (workers/jobs.py `open_panel`)."""
    messages, jm, spend = job.chat(), json_mode(spec, job), chord.jobs.spend(job, spec.batch)
    return {m.member: ask_for(chord.registry, m.model, messages, jm, spec.logprobs, spend) for m in members}


class HasJobs(Protocol):
    """What `asks_for` reads: prices and limits, and whose budget a job's calls draw on."""

    @property
    def registry(self) -> Registry: ...

    @property
    def jobs(self) -> Any: ...  # workers/panel/ports.py `Jobs` (`spend`)


@dataclass
class Speculation:
    """One member's admission, queued with its turn; see the module docstring."""

    io: CallIO
    panel_id: str
    member: str
    ask: Ask
    token: str
    key: str
    limits: list[Limit]
    tokens: int
    want: Hold | None
    opened: Opened
    steps: list[ScriptStep | None] = field(default_factory=list)
    permit: Permit | None = None
    hold: Hold | None = None
    reservation: Reservation | None = None
    written: bool = False
    returned: bool = False

    def queue(self, pipe: Any) -> None:
        """The admission's scripts, then the conditional attempt record, after the turn's commands."""
        for s in self.steps:
            if s is not None:
                pipe.evalsha(s.script.sha, len(s.keys), *s.keys, *s.args)
        pid = self.panel_id
        pipe.evalsha(OPEN_SHA, 4, attempts.key(pid), keys.panel(pid), keys.calls(pid),
                     keys.member_lease(pid, self.member), self.opened[0], orjson.dumps(self.opened[1]),
                     self.io.settings.result_ttl_s, self.member, self.token)  # fmt: skip

    def took(self, results: list[Any]) -> Admitted | None:
        """Read the replies of what `queue` queued: the admission to call with when every part
        granted (its record written, or written now if the script did not run it), else None
        with every part granted given back (the call asks again the usual way)."""
        self.read(results)
        if self.permit is None or self.reservation is None or (self.want is not None and self.hold is None):
            self.give_back()
            return None
        if not self.written:  # a record to re-use was there but not reusable, or the script was lost
            try:
                through_redis_outage(self._write_opened)
            except BaseException:
                self.give_back()
                raise
            self.written = True
        # handed to the call, which settles it whatever happens (calls.py `_attempt`); its caller
        # gives it back only if it never reaches the call
        return self.permit, self.hold, self.reservation, self.opened

    def read(self, results: list[Any]) -> None:
        """What each part granted, from the replies of what `queue` queued (the three steps, then
        the record); a part that did not run (a script Redis lost) granted nothing."""
        if len(results) < 4:
            return
        breaker, budget, limiter, opened = results[:4]
        if isinstance(opened, redis.exceptions.NoScriptError):  # Redis lost it (a restart): loaded for the
            self.io.redis.script_load(OPEN_ATTEMPT)  # next member (the limits' scripts load on the usual path)
        try:
            self.permit = None if isinstance(breaker, Exception) else self.io.breaker.permit_from(self.key, breaker)
        except BreakerOpen:
            self.permit = None
        if self.want is not None and not isinstance(budget, Exception) and budget[0]:
            self.hold = self.want
        try:
            res = None if isinstance(limiter, Exception) else self.io.limiter.reservation_from(self.limits, self.tokens, limiter)
        except TokensExceedLimit:
            res = None
        self.reservation = res if res is not None and res.granted else None
        self.written = opened == 1

    def give_back(self) -> None:
        """Everything granted goes back, with the attempt record if written: one round trip (none
        when nothing was granted). Once."""
        if self.returned:
            return
        self.returned = True
        back = [self.io.limiter.release_step(self.reservation) if self.reservation is not None else None,
                self.io.budget.settle_step(self.hold, 0.0) if self.hold is not None else None,
                self.io.breaker.release_step(self.permit) if self.permit is not None else None]  # fmt: skip
        drop = partial(_queue_drop, self.panel_id, self.opened[0]) if self.written else None
        if any(back) or drop is not None:
            through_redis_outage(lambda: run_steps(self.io.budget.r, back, also=drop))

    def _write_opened(self) -> None:
        pipe = self.io.redis.pipeline(transaction=False)
        attempts.queue_begin(pipe, self.panel_id, *self.opened, ttl_s=self.io.settings.result_ttl_s)
        pipe.execute()


def _queue_drop(panel_id: str, aid: str, pipe: Any) -> None:
    pipe.hdel(attempts.key(panel_id), aid)


def speculate(io: CallIO, store_r: Any, panel_id: str, member: str, ask: Ask, token: str) -> Speculation | None:
    """The admission to queue with the member's turn; None where it cannot ride there: the
    member's turn, the limits and the attempts on different clients or on a cluster (other
    slots), a model this process does not know, or a call larger than its model's limit (the
    call raises that itself)."""
    if not (store_r is io.redis is io.budget.r) or connect.is_cluster(io.redis):
        return None
    try:
        spec = io.registry.model(ask.model)
    except Exception:  # unknown here: the usual path says so with its own error
        return None
    key = f"{spec.provider}:{ask.model}"
    limits = [Limit(key, spec.rpm, spec.tpm, spec.burst_s)]
    tokens = tokens_for_size(ask.chars, ask.turns, min(EXPECTED_OUTPUT_TOKENS, spec.max_output_tokens))
    if tokens > spec.tpm:
        return None
    worst = io.registry.cost(ask.model, tokens_for_size(ask.chars, ask.turns, EXPECTED_OUTPUT_TOKENS),
                             spec.max_output_tokens, ask.batch)  # fmt: skip
    job_id = panel_id.rsplit(".", 1)[0]
    want = io.budget.reserve_hold(job_id, ask.tenant, ask.cap_usd, worst)
    opened = attempts.opening(member, ask.model, ask.sent, ask.batch)
    steps: list[ScriptStep | None] = [io.breaker.allow_step(key), io.budget.reserve_step(want),
                                      io.limiter.acquire_step(limits, tokens)]  # fmt: skip
    return Speculation(io, panel_id, member, ask, token, key, limits, tokens, want, opened, steps)


class Admissions:
    """The chord's port to `speculate` on a process's `CallIO` (workers/panel/ports.py `Chord`)."""

    def __init__(self, io: CallIO) -> None:
        self.io = io

    def speculate(self, store_r: Any, panel_id: str, member: str, ask: Ask, token: str) -> Speculation | None:
        return speculate(self.io, store_r, panel_id, member, ask, token)


def matches(ask: Ask, registry: Registry, model: str, messages: list[dict[str, str]], json_mode: bool,
            logprobs: bool, spend: Spend) -> bool:  # fmt: skip
    """The ask is what the member's call would have asked for itself (else it is given back)."""
    return ask_for(registry, model, messages, json_mode, logprobs, spend) == ask  # sizes, tokens sent, budget

