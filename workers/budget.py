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

import redis

from workers.errors import BudgetExceeded

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
        scopes = self.scopes(job_id, tenant, job_cap_usd)
        keys = tuple(k for k, _ in scopes)
        caps = tuple(-1 if c is None else int(c * NANO) for _, c in scopes)
        nano = max(0, int(estimate_usd * NANO))
        ok, which = self._script(keys=list(keys), args=[nano, *caps, TTL_S])
        if not ok:
            key, cap = scopes[int(which) - 1]
            spent = int(self.r.get(key) or 0) / NANO
            raise BudgetExceeded(key.split(":")[2], float(cap or 0), spent + estimate_usd)
        return Hold(keys, caps, nano)

    def settle(self, hold: Hold, actual_usd: float) -> None:
        delta = int(actual_usd * NANO) - hold.nano
        if delta:
            # a charge above the hold may pass the cap by the estimate's error; it is still counted
            self._script(keys=list(hold.keys), args=[delta, *([-1] * len(hold.keys)), TTL_S])

    def spent(self, key: str) -> float:
        return int(self.r.get(key) or 0) / NANO
