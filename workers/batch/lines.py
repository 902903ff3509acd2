"""A batch line: one call of one panel (a member or its arbiter), named by an opaque custom id.

    cid = Line.open(rt, panel_id, "m1")     # once per (panel, member); None if it exists already
    line = Line.get(rt, cid)                # who it is for, and how many batches it has been in

Providers echo the custom id back on every result line, in any order; Anthropic takes only
1-64 of `[A-Za-z0-9_-]`, and job ids may hold `.` and `:` and run to 128 characters, so the id
is a digest of (panel, member) and the line's owner lives in Redis beside it, not in the id.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from producer.wire import text
from workers.runtime import Runtime

LINE = "pf:batch:line:"  # hash per line: panel, member, attempts (batches it was sent in)


def custom_id(panel_id: str, member: str) -> str:
    """Stable, provider-safe and short: the same (panel, member) always gives the same id."""
    digest = hashlib.blake2b(f"{panel_id}\x1f{member}".encode(), digest_size=12).hexdigest()
    return f"pf-{digest}"


@dataclass(frozen=True)
class Line:
    cid: str
    panel_id: str
    member: str  # "m0", "m1", ... or "arbiter"
    attempts: int  # batches this line has failed in so far

    @property
    def is_arbiter(self) -> bool:
        return self.member == "arbiter"

    @classmethod
    def open(cls, rt: Runtime, panel_id: str, member: str) -> str | None:
        """Register the line; None when it was registered before (a redelivered task)."""
        cid = custom_id(panel_id, member)
        key = LINE + cid
        if not rt.redis.hsetnx(key, "panel", panel_id):
            return None
        pipe = rt.redis.pipeline()
        pipe.hset(key, mapping={"member": member, "attempts": 0})
        pipe.expire(key, rt.settings.result_ttl_s)
        pipe.execute()
        return cid

    @classmethod
    def get(cls, rt: Runtime, cid: str) -> Line | None:
        raw = rt.redis.hgetall(LINE + cid)
        if b"panel" not in raw or b"member" not in raw:
            return None  # not ours, or expired with its panel
        return cls(cid, text(raw[b"panel"]), text(raw[b"member"]), int(raw.get(b"attempts", 0)))

    def failed_once_more(self, rt: Runtime) -> int:
        """Count one more failed batch attempt; returns the new count."""
        return int(rt.redis.hincrby(LINE + self.cid, "attempts", 1))

    def first_landing(self, rt: Runtime, batch_id: str) -> bool:
        """True the first time this line's result from `batch_id` is landed: a poll re-run
        after a crash sees False and only repeats the idempotent follow-ups."""
        return bool(rt.redis.hsetnx(LINE + self.cid, f"landed:{batch_id}", 1))
