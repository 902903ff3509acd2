"""Enforced rpm/tpm per model over a sliding 60 s window of admitted requests, the way providers
count: no fixed-minute edge where a client may send twice the limit.

    window.admit(now, tokens=180, rpm=600, tpm=400_000)  # -> Admission(ok=True, ...)

A rejected request takes no capacity. Its `retry_after_s` is when enough of the window ages out.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

WINDOW_S = 60.0


@dataclass(frozen=True)
class Admission:
    ok: bool
    retry_after_s: float
    limit_requests: int | None
    remaining_requests: int | None
    reset_requests_s: float
    limit_tokens: int | None
    remaining_tokens: int | None
    reset_tokens_s: float


class SlidingWindow:
    def __init__(self) -> None:
        self._events: deque[tuple[float, int]] = deque()  # (admitted at, tokens)
        self._tokens = 0

    def _expire(self, now: float) -> None:
        while self._events and self._events[0][0] <= now - WINDOW_S:
            self._tokens -= self._events.popleft()[1]

    def _tokens_free_at(self, now: float, need: int, tpm: int) -> float:
        """Seconds until `need` more tokens fit under `tpm`."""
        excess = self._tokens + need - tpm
        for at, tokens in self._events:
            excess -= tokens
            if excess <= 0:
                return at + WINDOW_S - now
        return WINDOW_S  # larger than the whole limit: the best a client can do is a full window

    def admit(self, now: float, tokens: int, rpm: int | None, tpm: int | None) -> Admission:
        self._expire(now)
        wait_req = 0.0 if rpm is None or len(self._events) < rpm else self._events[len(self._events) - rpm][0] + WINDOW_S - now
        wait_tok = 0.0 if tpm is None or self._tokens + tokens <= tpm else self._tokens_free_at(now, tokens, tpm)
        ok = wait_req <= 0 and wait_tok <= 0
        if ok:
            self._events.append((now, tokens))
            self._tokens += tokens
        oldest = self._events[0][0] + WINDOW_S - now if self._events else 0.0
        return Admission(
            ok=ok,
            retry_after_s=max(wait_req, wait_tok),
            limit_requests=rpm,
            remaining_requests=None if rpm is None else max(0, rpm - len(self._events)),
            reset_requests_s=max(wait_req, oldest if rpm is not None and len(self._events) >= rpm else 0.0),
            limit_tokens=tpm,
            remaining_tokens=None if tpm is None else max(0, tpm - self._tokens),
            reset_tokens_s=max(wait_tok, 0.0),
        )


class Limits:
    """One window per model; `reset()` forgets every admitted request."""

    def __init__(self) -> None:
        self._windows: dict[str, SlidingWindow] = {}

    def admit(self, model: str, now: float, tokens: int, rpm: int | None, tpm: int | None) -> Admission:
        return self._windows.setdefault(model, SlidingWindow()).admit(now, tokens, rpm, tpm)

    def reset(self) -> None:
        self._windows.clear()


def retry_after_header(seconds: float) -> str:
    """Retry-After is whole seconds (RFC 9110); round up so a client that obeys it gets through."""
    return str(max(1, math.ceil(seconds)))
