"""Callbacks: a job submitted with `callback_url` is POSTed there once it is decided, signed
with its tenant's secret, retried with backoff, delivered once across all gateway replicas.

Two loops per replica, both restart-safe:
- the ledger tail reads `pf:ledger` (every finalised job's receipt, written by the workers)
  through one consumer group shared by all replicas, so each entry goes to one replica; a
  replica that died holding entries has them claimed by another (XAUTOCLAIM) after a minute.
  Entries whose job has a callback become due in `pf:gw:callbacks:due`; then they are acked.
- the delivery loop claims due callbacks for a lease (claim_due.lua), POSTs, and on a 2xx marks
  them delivered; on a failure it schedules the next attempt at backoff x 2^(attempt-1).

The signature, Stripe-style, lets a receiver check origin and freshness:
    Panel-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<raw body>")>
`Panel-Callback-Id` (the job id) lets a receiver drop a repeat: a replica that died between a
receiver's 2xx and marking the callback delivered leads to one more delivery after its lease.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import os
import socket
import time
from importlib.resources import files
from typing import Any

import httpx
import orjson
import redis.asyncio as aredis

from gateway.settings import GatewaySettings
from gateway.submission import callback_key
from gateway.tenants import tenant_record
from producer import keys

log = logging.getLogger("panel.gateway.callbacks")
GROUP = "gw-callbacks"
DUE = f"{keys.PREFIX}gw:callbacks:due"
RECLAIM_IDLE_MS = 60_000


def sign(secret: str, body: bytes, at: int) -> str:
    mac = hmac.new(secret.encode(), f"{at}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={at},v1={mac}"


def verify(secret: str, body: bytes, header: str, tolerance_s: float = 300.0) -> bool:
    """What a receiver runs (the tests do): the MAC matches and the timestamp is fresh."""
    parts = dict(p.split("=", 1) for p in header.split(",") if "=" in p)
    try:
        at = int(parts["t"])
    except (KeyError, ValueError):
        return False
    expected = sign(secret, body, at).split("v1=", 1)[1]
    return hmac.compare_digest(expected, parts.get("v1", "")) and abs(time.time() - at) <= tolerance_s


class Callbacks:
    def __init__(self, r: aredis.Redis, settings: GatewaySettings):
        self.r = r
        self.settings = settings
        self.consumer = f"{socket.gethostname()}-{os.getpid()}"
        self._claim = r.register_script(files("gateway").joinpath("claim_due.lua").read_text())
        self.http = httpx.AsyncClient(timeout=settings.callback_timeout_s, follow_redirects=False)

    async def ensure_group(self) -> None:
        try:
            await self.r.xgroup_create(keys.LEDGER_STREAM, GROUP, id="$", mkstream=True)
        except aredis.ResponseError as e:
            if "BUSYGROUP" not in str(e):
                raise

    async def run(self) -> None:
        await self.ensure_group()
        await asyncio.gather(self.tail_ledger(), self.deliver_loop())

    # --- the ledger tail
    async def tail_ledger(self) -> None:
        last_reclaim = 0.0
        while True:
            try:
                if time.monotonic() - last_reclaim > RECLAIM_IDLE_MS / 4000:
                    last_reclaim = time.monotonic()
                    got_back: list[Any] = await self.r.xautoclaim(keys.LEDGER_STREAM, GROUP, self.consumer,
                                                                  min_idle_time=RECLAIM_IDLE_MS, count=500)  # fmt: skip
                    await self._schedule(got_back[1])
                got: list[Any] = await self.r.xreadgroup(GROUP, self.consumer, {keys.LEDGER_STREAM: ">"}, count=500,
                                                         block=1000)  # fmt: skip
                for _, entries in got or []:
                    await self._schedule(entries)
            except asyncio.CancelledError:
                raise
            except aredis.ResponseError as e:
                if "NOGROUP" in str(e):  # the stream was deleted (a flushed Redis): make it again
                    await self.ensure_group()
                else:
                    log.warning("callback ledger tail: %s", e)
                    await asyncio.sleep(1)
            except Exception as e:  # Redis away: keep trying; the group keeps our place
                log.warning("callback ledger tail: %s: %s", type(e).__name__, e)
                await asyncio.sleep(1)

    async def _schedule(self, entries: list[tuple[bytes, dict[bytes, bytes]]]) -> None:
        entries = [e for e in entries if e and e[1]]
        if not entries:
            return
        job_ids = [orjson.loads(fields[b"receipt"])["job_id"] for _, fields in entries]
        pipe = self.r.pipeline(transaction=False)
        for jid in job_ids:
            pipe.hget(callback_key(jid), "state")
        states = await pipe.execute()
        now_ms = int(time.time() * 1000)
        pipe = self.r.pipeline(transaction=False)
        for jid, state in zip(job_ids, states, strict=True):
            if state == b"pending":
                pipe.zadd(DUE, {jid: now_ms}, nx=True)
        pipe.xack(keys.LEDGER_STREAM, GROUP, *[eid for eid, _ in entries])
        await pipe.execute()

    # --- delivery
    async def deliver_loop(self) -> None:
        lease_ms = int(self.settings.callback_lease_s * 1000)
        while True:
            try:
                due = await self._claim(keys=[DUE], args=[32, lease_ms])
                if due:
                    await asyncio.gather(*(self.deliver(j.decode()) for j in due))
                else:
                    await asyncio.sleep(0.2)
            except asyncio.CancelledError:
                raise
            except Exception as e:
                log.warning("callback delivery: %s: %s", type(e).__name__, e)
                await asyncio.sleep(1)

    async def deliver(self, job_id: str) -> None:
        ckey = callback_key(job_id)
        cb = await self.r.hgetall(ckey)
        if cb.get(b"state") != b"pending":
            await self.r.zrem(DUE, job_id)
            return
        tenant = cb[b"tenant"].decode()
        result, secret = await asyncio.gather(self.r.hget(keys.job(job_id), "result"),
                                              self.r.hget(tenant_record(tenant), "callback_secret"))  # fmt: skip
        attempt = int(cb.get(b"attempts", 0)) + 1
        body = orjson.dumps({"object": "panel.job.callback", "job_id": job_id, "tenant": tenant, "attempt": attempt,
                             "result": orjson.loads(result) if result else None})  # fmt: skip
        headers = {"content-type": "application/json", "Panel-Callback-Id": job_id,
                   "Panel-Signature": sign((secret or b"").decode(), body, int(time.time()))}  # fmt: skip
        error = ""
        try:
            resp = await self.http.post(cb[b"url"].decode(), content=body, headers=headers)
            if 200 <= resp.status_code < 300:
                pipe = self.r.pipeline(transaction=True)
                pipe.hset(ckey, mapping={"state": "delivered", "attempts": attempt, "delivered_at": time.time()})
                pipe.zrem(DUE, job_id)
                await pipe.execute()
                return
            error = f"HTTP {resp.status_code}"
        except (httpx.HTTPError, httpx.InvalidURL, ValueError) as e:  # a failed attempt, never a stuck one
            error = f"{type(e).__name__}: {e}"[:200]
        if attempt >= self.settings.callback_max_attempts:
            pipe = self.r.pipeline(transaction=True)
            pipe.hset(ckey, mapping={"state": "gave_up", "attempts": attempt, "last_error": error})
            pipe.zrem(DUE, job_id)
            await pipe.execute()
            log.warning("callback for job %s gave up after %d attempts: %s", job_id, attempt, error)
            return
        delay = self.settings.callback_backoff_s * 2 ** (attempt - 1)
        pipe = self.r.pipeline(transaction=True)
        pipe.hset(ckey, mapping={"attempts": attempt, "last_error": error})
        pipe.zadd(DUE, {job_id: int((time.time() + delay) * 1000)})
        await pipe.execute()

    async def close(self) -> None:
        await self.http.aclose()
