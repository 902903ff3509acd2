"""The gateway's two Lua scripts, directly on a real redis-server: admission.lua (key lookup,
revocation, the fleet-wide token bucket, today's spend) and claim_due.lua (one claimer per due
callback, a lease that lets another take it after)."""

from __future__ import annotations

import asyncio
import time

import pytest
import redis as redis_lib
import redis.asyncio as aredis

from gateway.callbacks import DUE, Callbacks
from gateway.errors import RateLimited, Unauthorized
from gateway.settings import GatewaySettings
from gateway.tenants import Admission, Keys, tenant_spend, today


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


def test_admission_spends_the_burst_then_refuses_with_retry_after(redis_url: str, redis_client: redis_lib.Redis) -> None:
    key = Keys(redis_client).create("acme", rate_per_s=0.5, rate_burst=3)

    async def go() -> list[object]:
        r = aredis.Redis.from_url(redis_url)
        adm = Admission(r, GatewaySettings(), budget_usd=None)
        out: list[object] = []
        for _ in range(5):
            try:
                out.append(await adm.admit(f"Bearer {key.api_key}"))
            except RateLimited as e:
                out.append(e)
        await r.aclose()
        return out

    got = run(go())
    assert [type(x).__name__ for x in got] == ["Caller"] * 3 + ["RateLimited"] * 2
    limited = got[3]
    assert isinstance(limited, RateLimited) and 1 <= int(limited.headers["Retry-After"]) <= 2


def test_admission_names_unknown_and_revoked_keys_and_reads_todays_spend(redis_url: str, redis_client: redis_lib.Redis) -> None:
    keys = Keys(redis_client)
    key = keys.create("acme", budget_usd=1.5)
    redis_client.set(tenant_spend("acme", today()), 250_000_000)  # $0.25 charged by the workers today

    async def admit(header: str | None) -> object:
        r = aredis.Redis.from_url(redis_url)
        try:
            return await Admission(r, GatewaySettings(), budget_usd=None).admit(header)
        except Unauthorized as e:
            return e
        finally:
            await r.aclose()

    caller = run(admit(f"Bearer {key.api_key}"))
    assert caller.tenant == "acme" and caller.spent_usd == pytest.approx(0.25) and caller.cap_usd == pytest.approx(1.5)  # type: ignore[attr-defined]
    assert "unknown" in run(admit("Bearer pfk_x_y")).message  # type: ignore[attr-defined]
    assert run(admit(None)).param == "authorization"  # type: ignore[attr-defined]
    keys.revoke(key.id)
    assert "revoked" in run(admit(f"Bearer {key.api_key}")).message  # type: ignore[attr-defined]
    assert [row["revoked"] for row in keys.list()] == [True]


def test_each_due_callback_is_claimed_once_until_its_lease_ends(redis_url: str, redis_client: redis_lib.Redis) -> None:
    now_ms = int(time.time() * 1000)
    redis_client.zadd(DUE, {f"job-{i}": now_ms - 1 for i in range(10)} | {"later": now_ms + 60_000})

    async def claims() -> tuple[list[bytes], list[bytes], list[bytes]]:
        r = aredis.Redis.from_url(redis_url)
        a, b = Callbacks(r, GatewaySettings()), Callbacks(r, GatewaySettings())
        first, second = await asyncio.gather(a._claim(keys=[DUE], args=[6, 300]), b._claim(keys=[DUE], args=[6, 300]))
        await asyncio.sleep(0.4)  # the 300 ms leases end: whatever was claimed is due again
        again = await a._claim(keys=[DUE], args=[20, 300])
        await a.close()
        await b.close()
        await r.aclose()
        return first, second, again

    first, second, again = run(claims())
    assert len(first) + len(second) == 10 and not set(first) & set(second)
    assert sorted(again) == sorted(first + second) and b"later" not in again
