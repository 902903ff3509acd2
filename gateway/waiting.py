"""Reading jobs back without blocking the event loop: a tenant's view of a job, and waiting for
its decision on the done signal the workers push (`pf:done:{id}`), as `PanelClient.wait` does."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson
import redis.asyncio as aredis

from gateway.errors import NotFound
from producer import keys
from producer.contract import Result

DONE = (b"decided", b"failed")


class Jobs:
    def __init__(self, r: aredis.Redis):
        self.r = r

    async def owned(self, job_id: str, tenant: str) -> dict[bytes, bytes]:
        """The job's hash fields status, submitted_at, result, error, tenant; 404 when it does not
        exist or is another tenant's (the two answer alike, so ids leak nothing)."""
        fields = ["status", "submitted_at", "result", "error", "tenant"]
        vals = await self.r.hmget(keys.job(job_id), fields) if len(job_id) <= 256 else [None] * len(fields)
        row = {f.encode(): v for f, v in zip(fields, vals, strict=True) if v is not None}
        if b"status" not in row or row.get(b"tenant", b"default").decode() != tenant:
            raise NotFound(f"no job {job_id!r} for this API key (check the id; results expire after PANEL_RESULT_TTL)",
                           param="job_id", code="job_not_found")  # fmt: skip
        return row

    async def wait(self, job_id: str, tenant: str, timeout: float) -> dict[bytes, bytes]:
        """The job's row once decided or failed, or as it is after `timeout` seconds."""
        end = time.monotonic() + timeout
        while True:
            row = await self.owned(job_id, tenant)
            if row[b"status"] in DONE and b"result" in row:
                return row
            left = end - time.monotonic()
            if left <= 0:
                return row
            # Wake on the done signal without consuming it (BLMOVE onto itself: the list keeps its
            # TTL; BLPOP + RPUSH re-created it without one, a key per job kept forever)
            got = await self.r.blmove(keys.done_channel(job_id), keys.done_channel(job_id), min(1.0, max(left, 0.01)))
            if got is not None:
                await asyncio.sleep(0)


def view(job_id: str, row: dict[bytes, bytes]) -> dict[str, Any]:
    """GET /v1/jobs/{id}: status, and the result with its receipt once done."""
    result = orjson.loads(row[b"result"]) if b"result" in row else None
    return {"id": job_id, "object": "panel.job", "status": row[b"status"].decode(),
            "created_at": float(row.get(b"submitted_at", 0)), "result": result}  # fmt: skip


def result_of(row: dict[bytes, bytes]) -> Result | None:
    return Result.model_validate_json(row[b"result"]) if b"result" in row else None
