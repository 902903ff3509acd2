"""Every provider attempt of a panel's members, written before the call leaves: what a receipt
needs to account for calls that produced no member record.

A member's call record (`keys.calls`) says what the member finally got; a member may have made
other provider requests on the way: retries after a 503 or a timeout, and calls lost with a
worker killed mid-flight (redelivered, the member calls again). The provider may bill each of
them. So each attempt is written here as `in_flight` before its request is sent, and closed
with its outcome; the receipt shows every attempt the member record does not already stand for:

- `failed`: a retried or given-up attempt, with its error;
- `cancelled`: cut off in flight by the panel's decision (input tokens charged, estimated);
- `lost`: still `in_flight` when the receipt was rendered (its worker died, or the answer came
  back and was lost before it was recorded): "lost in flight, may be billed", charged at the
  estimate of its input (or at its real usage when the answer had come back).

    aid = begin(r, "job-1.1", "m0", "gpt-4o", tokens_in=120, batch=False)
    end(r, "job-1.1", aid, "failed", error="HTTP 503")  # an answer is not closed here: its record is
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import orjson
import redis

from producer import keys
from producer.wire import text

LOST = "lost in flight with its worker (or the answer lost before it was recorded): the provider may bill it"


def key(panel_id: str) -> str:
    """Hash: "member#<ns>" -> JSON attempt; shares the panel's key prefix (and its lifetime)."""
    return f"{keys.calls(panel_id)}:attempts"


TTL_S = 7 * 24 * 3600


def opening(member: str, model: str, tokens_in: int, batch: bool) -> tuple[str, dict[str, Any]]:
    """A new attempt's id (it sorts in the order the attempts were made) and its `in_flight` record."""
    aid = f"{member}#{time.time_ns():020d}"
    return aid, {"member": member, "model": model, "status": "in_flight", "tokens_in": tokens_in, "batch": batch,
                 "started": time.time()}  # fmt: skip


def queue_begin(pipe: Any, panel_id: str, aid: str, rec: dict[str, Any], ttl_s: int = TTL_S) -> None:
    """Queue an `opening` record on a pipeline (the call's admission sends it: workers/panel/calls.py)."""
    k = key(panel_id)
    pipe.hset(k, aid, orjson.dumps(rec))
    pipe.expire(k, ttl_s)


def begin(r: redis.Redis, panel_id: str, member: str, model: str, tokens_in: int, batch: bool,
          ttl_s: int = TTL_S) -> str:  # fmt: skip
    """Record an attempt as in flight, before its request is sent (one round trip); returns its id."""
    aid, rec = opening(member, model, tokens_in, batch)
    pipe = r.pipeline(transaction=False)
    queue_begin(pipe, panel_id, aid, rec, ttl_s)
    pipe.execute()
    return aid


def drop(r: redis.Redis, panel_id: str, aid: str) -> None:
    """Remove an attempt whose request was never sent (its admission was refused or must wait)."""
    r.hdel(key(panel_id), aid)


def end(r: redis.Redis, panel_id: str, aid: str, status: str, base: dict[str, Any] | None = None,
        **fields: Any) -> None:  # fmt: skip
    """Close an attempt: `answered` (tokens), `failed` (error), `cancelled` (sent or not). With
    `base`, the record this process began (only it writes its attempts), it is not read back."""
    if base is None:
        raw = r.hget(key(panel_id), aid)
        base = orjson.loads(raw) if raw else {"member": aid.split("#")[0]}
    queue_end(r, panel_id, aid, status, base, **fields)


def queue_end(pipe: Any, panel_id: str, aid: str, status: str, base: dict[str, Any], **fields: Any) -> None:
    """`end` for a record this process began, queued on a pipeline (or sent on a client): the
    call's give-back sends it with its own steps (workers/panel/calls.py), one round trip."""
    rec = dict(base)
    rec.update(fields, status=status, ended=time.time())
    pipe.hset(key(panel_id), aid, orjson.dumps(rec))


@dataclass(frozen=True)
class Attempt:
    aid: str
    member: str
    model: str
    status: str  # in_flight | answered | failed | cancelled
    tokens_in: int
    tokens_out: int
    batch: bool
    error: str | None
    latency_ms: float


def of_panel(r: redis.Redis, panel_id: str) -> dict[str, list[Attempt]]:
    """Attempts per member, in the order they were made."""
    return parse(r.hgetall(key(panel_id)))  # type: ignore[arg-type]


def parse(fields: dict[bytes, bytes]) -> dict[str, list[Attempt]]:
    """Attempts per member, in the order they were made, from the hash read whole (a panel's
    snapshot reads it with the panel's calls: workers/panel/state.py)."""
    out: dict[str, list[Attempt]] = {}
    for field, raw in sorted(fields.items()):
        d = orjson.loads(raw)
        ended = d.get("ended")
        out.setdefault(d["member"], []).append(Attempt(
            aid=text(field), member=d["member"], model=d.get("model", ""), status=d.get("status", "in_flight"),
            tokens_in=int(d.get("tokens_in", 0)), tokens_out=int(d.get("tokens_out", 0)), batch=bool(d.get("batch")),
            error=d.get("error"), latency_ms=(ended - d["started"]) * 1000 if ended and "started" in d else 0.0,
        ))  # fmt: skip
    return out


# A recorded answer stands for its attempt whether or not the attempt was closed: an answered
# attempt is not written again (the member's record is that write).
_STANDS_FOR = {"answered": ("answered", "in_flight"), "late": ("answered", "in_flight"), "failed": ("failed",),
               "cancelled": ("cancelled",)}  # fmt: skip


def unrepresented(attempts: list[Attempt], record_status: str | None) -> list[Attempt]:
    """The attempts a member's call record does not stand for. The record stands for the last
    attempt when their outcomes match (an answer recorded, a failure, a cancellation); an attempt
    still in flight under a record written without it (a redelivered member that found the panel
    decided) was lost, and so is every attempt before the last."""
    if not attempts:
        return []
    last = attempts[-1]
    if record_status is not None and last.status in _STANDS_FOR.get(record_status, ()):
        return attempts[:-1]
    return list(attempts)


def receipt_status(a: Attempt) -> tuple[str, str | None]:
    """(status, error) for an attempt shown in a receipt on its own."""
    if a.status in ("in_flight", "answered"):
        return "lost", LOST
    if a.status == "cancelled":
        return "cancelled", a.error
    return "failed", a.error
