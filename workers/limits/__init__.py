"""Fleet-wide limits shared through Redis: rate limits (GCRA) and circuit breakers.

    limiter, breaker = RateLimiter(r), CircuitBreaker(r)
    permit = breaker.allow(key); reservation = limiter.acquire([Limit(key, rpm, tpm)], tokens)
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
