"""Fleet-wide limits shared through Redis: rate limits (GCRA) and circuit breakers.

    permit = breaker.allow(key)                                      # BreakerOpen: fail over
    reservation = limiter.acquire([Limit(key, rpm, tpm)], tokens)    # RateLimitWait: past deadline
    ... call ...; limiter.reconcile(reservation, used)
    breaker.record(permit, ok)    # or breaker.release(permit) when no call was made

Every decision is one Lua step on Redis's clock, so all worker processes share one view.
"""

from workers.limits.breaker import BreakerConfig, CircuitBreaker, Permit
from workers.limits.errors import BreakerOpen, RateLimitWait, TokensExceedLimit
from workers.limits.limiter import Limit, RateLimiter, Reservation

__all__ = [
    "BreakerConfig",
    "BreakerOpen",
    "CircuitBreaker",
    "Limit",
    "Permit",
    "RateLimitWait",
    "RateLimiter",
    "Reservation",
    "TokensExceedLimit",
]
