"""Errors of the fleet-wide limits; each names the key at fault and when to try again."""

from __future__ import annotations

from producer.errors import PanelError


class RateLimitWait(PanelError):
    """Waiting for `key`'s limit (`wait_s` more seconds) would pass the caller's deadline."""

    def __init__(self, key: str, wait_s: float):
        self.key, self.wait_s = key, wait_s
        super().__init__(
            f"rate limit {key}: next grant in {wait_s:.2f}s, past the deadline; raise the deadline or the limit"
        )


class TokensExceedLimit(PanelError, ValueError):
    """One request asks for more tokens than `key` grants in a whole minute: it could never pass."""

    def __init__(self, key: str, tokens: int, tpm: int):
        self.key, self.tokens, self.tpm = key, tokens, tpm
        super().__init__(
            f"rate limit {key}: {tokens} tokens in one request exceed its tpm of {tpm}; shorten the prompt or raise tpm"
        )


class BreakerOpen(PanelError):
    """`key`'s circuit is open (or its half-open probes are all out); ask again in `retry_in_s`."""

    def __init__(self, key: str, retry_in_s: float):
        self.key, self.retry_in_s = key, retry_in_s
        super().__init__(f"circuit open for {key}: retry in {retry_in_s:.1f}s (use a fallback model meanwhile)")
