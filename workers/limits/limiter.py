"""Fleet-wide requests/min and tokens/min, shared through Redis by every worker process.

    r = limiter.acquire([Limit("openai:gpt-4o", rpm=600, tpm=400_000)], tokens=1200, deadline=t)
    limiter.reconcile(r, actual_tokens=completion.tokens_in + completion.tokens_out)

Guarantees: one round trip per attempt, atomic over all the limits given (a model key and a
provider key are taken together or not at all), decided on Redis's clock (TIME) so workers'
clocks never matter. A caller that waits holds nothing. A 429's Retry-After, given to `pause`,
stops every grant on that key fleet-wide.

Why GCRA: it is a token bucket in continuous time kept as one number per dimension (the
theoretical arrival time, TAT), so a denial says exactly how long to wait, there is no refill
step to race, and an idle key expires the moment its TAT passes. Fixed one-minute windows
(LiteLLM's) let twice the limit through within a second across a window edge; here any w
seconds see at most limit * (burst_s + w)/60, and a sustained rate never passes the limit.

Edges: the bucket holds `burst_s` seconds' worth (default a minute, like the token buckets
Anthropic and llmock document), so after a quiet spell that much may go out at once. A provider
that counts a sliding 60 s window refuses such a burst followed by the full rate (the window
would see the limit plus the burst): give it a `burst_s` of a second or two and a limit a few
percent under the provider's, for network jitter between our grant and its count. A request
larger than the burst is granted alone, once the schedule is clear. Decisions are exact to a nanosecond of schedule. Tokens reserved up front are an estimate: a charge above
it has already been spent upstream and makes later callers wait instead.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib.resources import files
from typing import Any

import redis

from producer import keys
from producer.wire import text
from workers.limits.errors import RateLimitWait, TokensExceedLimit
from workers.limits.steps import ScriptStep

US = 1_000_000
MAX_JITTER_S = 0.05  # spreads waiters that were told the same wait so they do not all collide


@dataclass(frozen=True)
class Limit:
    """`rpm` requests and `tpm` tokens per minute on `key` (e.g. "openai:gpt-4o"), fleet-wide,
    of which at most `burst_s` seconds' worth may go out at once."""

    key: str
    rpm: int
    tpm: int
    burst_s: float = 60.0

    def __post_init__(self) -> None:
        if self.rpm <= 0 or self.tpm <= 0:
            raise ValueError(f"limit {self.key}: rpm and tpm must be positive (got {self.rpm}, {self.tpm})")
        if not 0 < self.burst_s <= 60:
            raise ValueError(f"limit {self.key}: burst_s must be in (0, 60] seconds (got {self.burst_s})")

    @property
    def burst_us(self) -> int:
        return round(self.burst_s * US)


@dataclass(frozen=True)
class Reservation:
    """The outcome of one attempt. When granted, hand it to `reconcile` with the real usage."""

    granted: bool
    wait_s: float
    tokens: int
    limits: tuple[Limit, ...]
    # Redis time of the grant (us) and each key's token schedule end relative to it: they bound
    # what a refund may give back
    granted_at_us: int = field(default=0, repr=False)
    token_tats: tuple[float, ...] = field(default=(), repr=False)
    # each key's incarnation and the credit it had refunded at the grant (reserve.lua): a refund
    # since moved this reservation's slice earlier, and a key that expired since refunds nothing
    key_credits: tuple[tuple[str, float], ...] = field(default=(), repr=False)
    blocker: str = ""  # the key with the longest wait, when not granted
    # each key's request schedule end relative to the grant: a grant never used gives its request
    # back while it is still the last one (`release_step`)
    request_tats: tuple[float, ...] = field(default=(), repr=False)


class RateLimiter:
    """GCRA over Redis; see the module docstring for what it guarantees."""

    def __init__(self, redis: redis.Redis, *, clock: Callable[[], float] | None = None) -> None:
        """`clock` is for tests only: it stands in for Redis TIME (epoch seconds). Leave it None."""
        self.redis = redis
        self._clock = clock
        self._script = redis.register_script(files("workers.limits").joinpath("reserve.lua").read_text())

    def _run(self, op: str, keys: list[str], args: list[Any]) -> Any:
        return self._script(keys=keys, args=self._argv(op, args))

    def _argv(self, op: str, args: list[Any]) -> list[Any]:
        now = "" if self._clock is None else str(round(self._clock() * US))
        return [op, now, *args]

    def try_acquire(self, limits: Sequence[Limit], tokens: int) -> Reservation:
        """One round trip: take a request and `tokens` from every limit, or nothing and a wait."""
        limits = tuple(limits)
        if tokens < 0:
            raise ValueError(f"tokens must be >= 0 (got {tokens})")
        if len({lim.key for lim in limits}) != len(limits):
            raise ValueError("each key may appear once per acquire (a repeat would be charged from a stale read)")
        if len({keys.provider_tag(lim.key) for lim in limits}) > 1:
            raise ValueError("limits reserved together must belong to one provider (one Redis Cluster slot): "
                             f"{[lim.key for lim in limits]}")  # fmt: skip
        for lim in limits:
            if tokens > lim.tpm:  # checked here too so the caller fails before any round trip
                raise TokensExceedLimit(lim.key, tokens, lim.tpm)
        if not limits:
            return Reservation(True, 0.0, tokens, limits)
        return self.reservation_from(limits, tokens, self.acquire_step(limits, tokens).run())

    def acquire_step(self, limits: Sequence[Limit], tokens: int) -> ScriptStep:
        """One `try_acquire` as a step to send with others in one round trip; read its result
        with `reservation_from`. Checks nothing `try_acquire` checks: give it one or more
        distinct limits and tokens within each tpm."""
        args: list[Any] = [tokens]
        for lim in limits:
            args += [lim.rpm, lim.tpm, lim.burst_us]
        return ScriptStep(self._script, [keys.rate_limit(lim.key) for lim in limits], self._argv("acquire", args))

    def reservation_from(self, limits: Sequence[Limit], tokens: int, result: list[Any]) -> Reservation:
        """The Reservation an `acquire_step` returned. Raises TokensExceedLimit."""
        limits = tuple(limits)
        status, at_or_index, wait_us, *rest = result
        if status == 1:
            n = len(limits)
            tats, marks, requests = rest[:n], rest[n : 3 * n], rest[3 * n : 4 * n]
            credits = tuple((text(marks[2 * i]), float(marks[2 * i + 1])) for i in range(n))
            return Reservation(True, 0.0, tokens, limits, int(at_or_index), tuple(float(t) for t in tats), credits,
                               request_tats=tuple(float(x) for x in requests))  # fmt: skip
        blocker = limits[int(at_or_index) - 1]
        if status == -1:
            raise TokensExceedLimit(blocker.key, tokens, blocker.tpm)
        return Reservation(False, int(wait_us) / US, tokens, limits, blocker=blocker.key)

    def acquire(
        self,
        limits: Sequence[Limit],
        tokens: int,
        *,
        deadline: float | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> Reservation:
        """Wait (holding nothing) until granted. Raises RateLimitWait as soon as the wait the
        limiter announces would pass `deadline` (epoch seconds on this host; only durations
        cross the wire, so clock skew between hosts does not matter)."""
        while True:
            res = self.try_acquire(limits, tokens)
            if res.granted:
                return res
            if deadline is not None and time.time() + res.wait_s > deadline:
                raise RateLimitWait(res.blocker, res.wait_s)
            sleep(res.wait_s + random.uniform(0, min(MAX_JITTER_S, res.wait_s / 10)))

    def reconcile(self, reservation: Reservation, actual_tokens: int) -> None:
        """Charge or refund the difference between the real usage and the reservation. A refund
        gives back only capacity that has not already come back with time, so it can never let
        more than the limit through."""
        step = self.reconcile_step(reservation, actual_tokens)
        if step is not None:
            step.run()

    def reconcile_step(self, reservation: Reservation, actual_tokens: int) -> ScriptStep | None:
        """`reconcile` as a step to send with others in one round trip (workers/limits/steps.py);
        None when there is nothing to reconcile."""
        delta = actual_tokens - reservation.tokens
        if not reservation.granted or delta == 0 or not reservation.limits:
            return None
        args: list[Any] = [delta, reservation.granted_at_us]
        for lim, tat, (k, c) in zip(reservation.limits, reservation.token_tats, reservation.key_credits, strict=True):
            args += [lim.tpm, repr(tat), k, repr(c)]
        return ScriptStep(self._script, [keys.rate_limit(lim.key) for lim in reservation.limits],
                          self._argv("reconcile", args))  # fmt: skip

    def pause(self, key: str, seconds: float) -> None:
        """No grant on `key` anywhere in the fleet for `seconds` from now (Redis time); a pause
        never shortens a longer one already in place."""
        if seconds > 0:
            self._run("pause", [keys.rate_limit(key)], [round(seconds * US)])

    def release_step(self, reservation: Reservation) -> ScriptStep | None:
        """A grant whose call was never made, given back as a step (workers/limits/steps.py): its
        tokens as `reconcile_step(reservation, 0)` would, and its request too while no later grant
        has moved the key's request schedule (else it stays taken: capacity idles, never exceeds).
        None when there is nothing to give back."""
        if not reservation.granted or not reservation.limits:
            return None
        if len(reservation.request_tats) != len(reservation.limits):  # granted by an older script
            return self.reconcile_step(reservation, 0)
        args: list[Any] = [reservation.tokens, reservation.granted_at_us]
        for lim, r, t, (k, c) in zip(reservation.limits, reservation.request_tats, reservation.token_tats,
                                     reservation.key_credits, strict=True):  # fmt: skip
            args += [lim.rpm, lim.tpm, repr(r), repr(t), k, repr(c)]
        return ScriptStep(self._script, [keys.rate_limit(lim.key) for lim in reservation.limits],
                          self._argv("release", args))  # fmt: skip

    def headroom(self, limit: Limit) -> dict[str, float]:
        """Requests and tokens grantable now, and `paused_until` (epoch seconds, 0 if not paused).
        A snapshot for gauges: it reserves nothing and may be stale by the time it is read."""
        requests, tokens, paused = self._run("peek", [keys.rate_limit(limit.key)], [limit.rpm, limit.tpm, limit.burst_us])
        return {"requests": float(requests), "tokens": float(tokens), "paused_until": float(paused) / US}
