"""Fleet-wide circuit breakers: closed / open / half-open per provider:model, state in Redis.

    permit = breaker.allow("openai:gpt-4o")      # raises BreakerOpen: fail over to a fallback
    breaker.record(permit, ok=True)              # a call made: record its outcome, success or not
    breaker.release(permit)                      # no call made (budget, limiter, cancelled): give it back

Guarantees: every worker sees the same state (no per-process cooldowns). The breaker opens when
at least `min_calls` calls in the last `window_s` seconds ended and the failed share reaches
`failure_rate`; `open_s` later it is half-open and at most `probes` probe calls run at once
fleet-wide; a probe's success closes it, a probe's failure opens it again. Time is Redis's.

Edges: the window slides in steps of window_s/10, so it covers between 90% and 100% of
window_s. An outcome counts only in the breaker generation it was permitted in: calls that
started before the breaker opened do not reopen or close it. A probe that never reports (its
worker died) frees its slot after `probe_lease_s`; a probe slower than that may overlap a new one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from importlib.resources import files
from typing import Any

import redis

from producer import keys
from workers.limits.errors import BreakerOpen
from workers.limits.steps import ScriptStep

US = 1_000_000


@dataclass(frozen=True)
class BreakerConfig:
    window_s: float = 30.0
    min_calls: int = 5
    failure_rate: float = 0.5
    open_s: float = 15.0
    probes: int = 1
    probe_lease_s: float = 60.0  # above the longest call, so a slow probe is not overlapped

    def __post_init__(self) -> None:
        if not (self.window_s > 0 and self.min_calls >= 1 and 0 < self.failure_rate <= 1):
            raise ValueError(f"breaker: need window_s > 0, min_calls >= 1, 0 < failure_rate <= 1 ({self})")
        if not (self.open_s >= 0 and self.probes >= 1 and self.probe_lease_s > 0):
            raise ValueError(f"breaker: need open_s >= 0, probes >= 1, probe_lease_s > 0 ({self})")


@dataclass(frozen=True)
class Permit:
    """Leave to call `key`; `probe` when the breaker is half-open. Record it, or release it if
    no call was made, exactly once."""

    key: str
    probe: bool
    generation: int = 0
    lease: str = ""  # the probe slot this permit holds, "" for an ordinary call


class CircuitBreaker:
    """A breaker per key shared through Redis; see the module docstring for what it guarantees."""

    def __init__(
        self,
        redis: redis.Redis,
        config: BreakerConfig = BreakerConfig(),
        *,
        clock: Callable[[], float] | None = None,
    ) -> None:
        """`clock` is for tests only: it stands in for Redis TIME (epoch seconds). Leave it None."""
        self.redis = redis
        self.config = config
        self._clock = clock
        self._script = redis.register_script(files("workers.limits").joinpath("breaker.lua").read_text())

    def _run(self, op: str, key: str, extra: tuple[Any, ...] = ()) -> Any:
        return self._step(op, key, extra).run()

    def _step(self, op: str, key: str, extra: tuple[Any, ...] = ()) -> ScriptStep:
        c = self.config
        now = "" if self._clock is None else str(round(self._clock() * US))
        args = [op, now, round(c.window_s * US), c.min_calls, repr(c.failure_rate), round(c.open_s * US), c.probes,
                round(c.probe_lease_s * US), *extra]  # fmt: skip
        return ScriptStep(self._script, [keys.breaker(key), keys.breaker_probes(key)], args)

    def allow(self, key: str) -> Permit:
        """A permit to call `key`, or BreakerOpen (with retry_in_s) while it is open or its probes are out."""
        return self.permit_from(key, self.allow_step(key).run())

    def allow_step(self, key: str) -> ScriptStep:
        """`allow` as a step to send with others in one round trip; read it with `permit_from`."""
        return self._step("allow", key)

    def permit_from(self, key: str, result: list[Any]) -> Permit:
        """The Permit an `allow_step` returned. Raises BreakerOpen."""
        granted, gen_or_wait, *lease = result
        if not granted:
            raise BreakerOpen(key, int(gen_or_wait) / US)
        lease_id = lease[0].decode() if isinstance(lease[0], bytes) else str(lease[0])
        return Permit(key, probe=bool(lease_id), generation=int(gen_or_wait), lease=lease_id)

    def record(self, permit: Permit, ok: bool) -> None:
        """The outcome of a permitted call. Count as failures only what says the provider is
        unwell (5xx, timeouts, 429s the limiter could not prevent), never a caller's 4xx."""
        self.record_step(permit, ok).run()

    def record_step(self, permit: Permit, ok: bool) -> ScriptStep:
        """`record` as a step to send with others in one round trip (workers/limits/steps.py)."""
        return self._step("record", permit.key, (permit.generation, permit.lease, 1 if ok else 0))

    def release(self, permit: Permit) -> None:
        """Give back a permit whose call was never made or never finished (the budget or the
        limiter refused it, the panel was decided): it says nothing about the provider's health,
        so no outcome is counted, and a half-open probe slot is freed now rather than when its
        lease expires (`probe_lease_s`, a minute by default, with the breaker stuck meanwhile).
        An ordinary permit holds nothing, so releasing one costs no round trip."""
        if permit.lease:
            self._run("release", permit.key, (permit.generation, permit.lease))

    def release_step(self, permit: Permit) -> ScriptStep | None:
        """`release` as a step to send with others in one round trip; None for an ordinary permit."""
        return self._step("release", permit.key, (permit.generation, permit.lease)) if permit.lease else None

    def state(self, key: str) -> str:
        """The state now: "closed", "open" or "half_open"."""
        return str(self.snapshot(key)["state"])

    def snapshot(self, key: str) -> dict[str, Any]:
        """State, calls and failures in the window, opened_at (epoch s, None when closed),
        retry_in_s and probes_in_flight; for `panel status --providers` and the gauges."""
        st, calls, fails, opened, retry, in_flight = self._run("peek", key)
        return {
            "state": st.decode() if isinstance(st, bytes) else str(st),
            "calls": int(calls),
            "failures": int(fails),
            "opened_at": float(opened) / US if opened else None,
            "retry_in_s": int(retry) / US,
            "probes_in_flight": int(in_flight),
        }
