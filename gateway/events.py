"""A job's life as Server-Sent Events, derived from what the workers already keep in Redis (the
gateway adds no bookkeeping to the hot path): the job hash (queued, running, result), its panel
list (`pf:job:{id}:panels`: a lane per panel and why), each panel's call records (a member
answered, failed or came late) and decision, and finally the result with its receipt.

    event: queued | lane | member | panel_decided | decided | failed (| error: the job expired)
    id: a stable name of the event (e.g. `1.m0`), so a reconnect with Last-Event-ID skips it

Each poll reads the whole state and sends what is new; the stream ends after decided/failed.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import orjson
import redis.asyncio as aredis

from producer import keys

KEEPALIVE_S = 15.0


def frame(event: str, data: Any, event_id: str) -> bytes:
    return f"id: {event_id}\nevent: {event}\ndata: ".encode() + orjson.dumps(data) + b"\n\n"


async def snapshot(r: aredis.Redis, job_id: str) -> list[tuple[str, str, dict[str, Any]]]:
    """Every event the job has reached so far, in order: (id, event, data)."""
    jkey = keys.job(job_id)
    pipe = r.pipeline(transaction=False)
    pipe.hmget(jkey, ["status", "submitted_at", "result"])
    pipe.lrange(jkey + ":panels", 0, -1)
    (status, submitted_at, result), panels = await pipe.execute()
    if status is None:  # expired (PANEL_RESULT_TTL) or deleted while streamed
        return [("gone", "error", {"error": {"message": f"job {job_id} no longer exists (results expire after "
                                              "PANEL_RESULT_TTL)", "type": "not_found_error", "param": "job_id",
                                              "code": "job_not_found"}})]  # fmt: skip
    out: list[tuple[str, str, dict[str, Any]]] = [
        ("queued", "queued", {"job_id": job_id, "submitted_at": float(submitted_at or 0)})]
    panel_rows = [orjson.loads(p) for p in panels]
    if panel_rows:
        pipe = r.pipeline(transaction=False)
        for p in panel_rows:
            pipe.hmget(keys.panel(p["panel_id"]), ["decided", "answer"])
            pipe.hgetall(keys.calls(p["panel_id"]))
        got = await pipe.execute()
        for n, p in enumerate(panel_rows, start=1):
            (decided, answer), calls = got[2 * (n - 1)], got[2 * (n - 1) + 1]
            out.append((f"{n}", "lane", {"panel": n, "panel_id": p["panel_id"], "reason": p.get("reason", "")}))
            for member, raw in sorted(calls.items()):
                rec = orjson.loads(raw)
                out.append((f"{n}.{member.decode()}", "member", {
                    "panel": n, "member": member.decode(), "model": rec.get("model"), "status": rec.get("status"),
                    "latency_ms": rec.get("latency_ms"), "tokens_in": rec.get("tokens_in"),
                    "tokens_out": rec.get("tokens_out"), "cost_usd": rec.get("cost_usd"),
                    "batch": rec.get("batch", False), "error": rec.get("error")}))  # fmt: skip
            if decided:
                out.append((f"{n}.decided", "panel_decided", {"panel": n, "outcome": decided.decode(),
                                                              "answer_key": answer.decode() if answer else None}))
    if status in (b"decided", b"failed") and result:
        out.append(("done", status.decode(), orjson.loads(result)))
    return out


async def stream(r: aredis.Redis, job_id: str, poll_s: float, last_event_id: str | None = None) -> AsyncIterator[bytes]:
    sent: set[str] = set()
    if last_event_id:  # a reconnect: what came up to that id was seen
        for eid, _, _ in await snapshot(r, job_id):
            sent.add(eid)
            if eid == last_event_id:
                break
        else:
            sent.clear()
    idle = 0.0
    while True:
        events = await snapshot(r, job_id)
        new = [e for e in events if e[0] not in sent]
        for eid, name, data in new:
            sent.add(eid)
            yield frame(name, data, eid)
            if eid in ("done", "gone"):
                return
        idle = 0.0 if new else idle + poll_s
        if idle >= KEEPALIVE_S:
            idle = 0.0
            yield b": keep-alive\n\n"
        await asyncio.sleep(poll_s)
