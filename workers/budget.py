"""Budget caps per job and per tenant, enforced atomically before each model call.

    hold = budget.reserve(job, policy_cap, estimate_usd)   # raises BudgetExceeded
    budget.settle(hold, actual_usd)                        # refund or charge the difference

Reservations use the worst case (estimated input + the model's max output) so concurrent
calls cannot overshoot a cap; settling returns the unused part.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from importlib.resources import files
from typing import Any

import redis

from workers.errors import BudgetExceeded
from workers.limits.steps import ScriptStep

NANO = 1_000_000_000
TTL_S = 8 * 24 * 3600


@dataclass(frozen=True)
class Spend:
    """Whose budget a call draws on, and at which price list."""

    job_id: str
    tenant: str
    cap_usd: float | None
    batch: bool = False


@dataclass(frozen=True)
class Hold:
    keys: tuple[str, ...]
    caps: tuple[int, ...]
    nano: int


class Budget:
    def __init__(self, r: redis.Redis, tenant_cap_usd: float | None = None):
        self.r = r
        self.tenant_cap_usd = tenant_cap_usd
        self._script = r.register_script(files("workers").joinpath("budget.lua").read_text())

    def scopes(self, job_id: str, tenant: str, job_cap_usd: float | None) -> list[tuple[str, float | None]]:
        day = time.strftime("%Y%m%d", time.gmtime())
        return [(f"pf:budget:job:{job_id}", job_cap_usd), (f"pf:budget:tenant:{tenant}:{day}", self.tenant_cap_usd)]

    def reserve(self, job_id: str, tenant: str, job_cap_usd: float | None, estimate_usd: float) -> Hold:
        hold = self.reserve_hold(job_id, tenant, job_cap_usd, estimate_usd)
        return self.hold_from(hold, self.reserve_step(hold).run())

    def reserve_hold(self, job_id: str, tenant: str, job_cap_usd: float | None, estimate_usd: float) -> Hold:
        """The hold a reservation would take (nothing sent): give it to `reserve_step`."""
        scopes = self.scopes(job_id, tenant, job_cap_usd)
        caps = tuple(-1 if c is None else int(c * NANO) for _, c in scopes)
        return Hold(tuple(k for k, _ in scopes), caps, max(0, int(estimate_usd * NANO)))

    def reserve_step(self, hold: Hold) -> ScriptStep:
        """`reserve` as a step to send with others in one round trip; read it with `hold_from`."""
        return ScriptStep(self._script, list(hold.keys), [hold.nano, *hold.caps, TTL_S])

    def hold_from(self, hold: Hold, result: list[Any]) -> Hold:
        """The hold, taken; or BudgetExceeded naming the scope (nothing was taken)."""
        ok, which = result
        if not ok:
            i = int(which) - 1
            spent = int(self.r.get(hold.keys[i]) or 0) / NANO
            raise BudgetExceeded(hold.keys[i].split(":")[2], hold.caps[i] / NANO, spent + hold.nano / NANO)
        return hold

    def settle(self, hold: Hold, actual_usd: float) -> None:
        step = self.settle_step(hold, actual_usd)
        if step is not None:
            step.run()

    def settle_step(self, hold: Hold, actual_usd: float) -> ScriptStep | None:
        """`settle` as a step to send with others in one round trip; None when nothing changes."""
        delta = int(actual_usd * NANO) - hold.nano
        if not delta:
            return None
        # a charge above the hold may pass the cap by the estimate's error; it is still counted
        return ScriptStep(self._script, list(hold.keys), [delta, *([-1] * len(hold.keys)), TTL_S])

    def spent(self, key: str) -> float:
        return int(self.r.get(key) or 0) / NANO
