"""Tenants and their API keys: keys stored hashed (sha256), a per-tenant rate limit and daily
budget, all read in one Redis round trip per request (admission.lua).

    key = Keys(r).create("acme", budget_usd=5.0)   # shown once: only its hash is stored
    Keys(r).revoke(key.id)                          # the next request with it gets 401

The budget is the workers' own per-tenant spend counter (`keys.budget_tenant_day(tenant, day)`,
nano-USD, written by workers/budget.py as calls are paid): the gateway refuses a new job once
today's spend reached the tenant's cap, so nothing is queued for a tenant who has none left.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass
from importlib.resources import files

import redis
import redis.asyncio as aredis
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster

from gateway.errors import BudgetExhausted, RateLimited, Unauthorized
from gateway.settings import GatewaySettings
from producer import keys
from producer.errors import PanelError

NANO = 1_000_000_000
KEY_PREFIX = "pfk_"


def key_record(sha: str) -> str:
    return keys.gw_key_record(sha)


def key_index() -> str:
    """Hash: key id -> tenant (for `panel keys list` and revoke by id)."""
    return keys.GW_KEY_INDEX


def tenant_record(tenant: str) -> str:
    """Hash: rate_per_s, rate_burst, budget_usd (per UTC day), callback_secret, created_at."""
    return keys.gw_tenant(tenant)


def tenant_spend(tenant: str, day: str) -> str:
    """The workers' per-tenant spend counter (workers/budget.py `Budget.scopes`), nano-USD."""
    return keys.budget_tenant_day(tenant, day)


def today() -> str:
    return time.strftime("%Y%m%d", time.gmtime())


def hash_key(api_key: str) -> str:
    return hashlib.sha256(api_key.encode()).hexdigest()


@dataclass(frozen=True)
class NewKey:
    id: str
    tenant: str
    api_key: str  # shown once
    callback_secret: str


@dataclass(frozen=True)
class Caller:
    """The tenant behind a request, with what is left of its budget today."""

    tenant: str
    spent_usd: float
    cap_usd: float | None

    @property
    def left_usd(self) -> float | None:
        return None if self.cap_usd is None else self.cap_usd - self.spent_usd

    def check_budget(self, job_budget_usd: float | None = None, param: str | None = None) -> None:
        """Raise BudgetExhausted (402) before anything is queued."""
        left = self.left_usd
        if left is None:
            return
        if left <= 0:
            raise BudgetExhausted(
                f"tenant {self.tenant!r} spent ${self.spent_usd:.6f} of its ${self.cap_usd:.6f} budget today (UTC); "
                "nothing was queued. Raise it with `panel keys create TENANT --budget-usd N` or wait for the next UTC day",
                param=None, code="budget_exhausted")  # fmt: skip
        if job_budget_usd is not None and job_budget_usd > left:
            raise BudgetExhausted(
                f"budget_usd {job_budget_usd} is above the ${left:.6f} left of tenant {self.tenant!r}'s budget today; "
                "lower it or raise the tenant's budget", param=param or "budget_usd", code="budget_exhausted")  # fmt: skip


class Keys:
    """Create, revoke and list API keys (the `panel keys` CLI)."""

    def __init__(self, r: redis.Redis):
        self.r = r

    def create(self, tenant: str, budget_usd: float | None = None, rate_per_s: float | None = None,
               rate_burst: float | None = None) -> NewKey:  # fmt: skip
        from producer.contract import _NAME

        if not _NAME.match(tenant):
            raise PanelError(f"tenant {tenant!r}: use 1-128 letters, digits or _.:- (starting with a letter or digit)")
        key_id = secrets.token_hex(6)
        api_key = f"{KEY_PREFIX}{key_id}_{secrets.token_urlsafe(24)}"
        trec = tenant_record(tenant)
        self.r.hsetnx(trec, "callback_secret", secrets.token_hex(32))
        self.r.hsetnx(trec, "created_at", time.time())
        conf = {"budget_usd": budget_usd, "rate_per_s": rate_per_s, "rate_burst": rate_burst}
        if any(v is not None for v in conf.values()):
            self.r.hset(trec, mapping={k: v for k, v in conf.items() if v is not None})
        pipe = self.r.pipeline(transaction=False)  # two slots: the key's record and the index
        pipe.hset(key_record(hash_key(api_key)), mapping={"tenant": tenant, "id": key_id, "created_at": time.time()})
        pipe.hset(key_index(), key_id, f"{tenant} {hash_key(api_key)}")
        pipe.execute()
        secret = self.r.hget(trec, "callback_secret")
        return NewKey(key_id, tenant, api_key, (secret or b"").decode())

    def revoke(self, key_id: str) -> str:
        """Revoke by id (or by the full key); returns the tenant. Takes effect on the next request."""
        if key_id.startswith(KEY_PREFIX):
            key_id = key_id[len(KEY_PREFIX):].split("_", 1)[0]
        row = self.r.hget(key_index(), key_id)
        if row is None:
            raise PanelError(f"no API key with id {key_id!r} (see `panel keys list`)")
        tenant, sha = row.decode().split(" ", 1)
        self.r.hset(key_record(sha), "revoked_at", time.time())
        return tenant

    def list(self) -> list[dict[str, object]]:
        rows: list[dict[str, object]] = []
        for key_id, row in sorted(self.r.hgetall(key_index()).items()):
            tenant, sha = row.decode().split(" ", 1)
            rec = self.r.hgetall(key_record(sha))
            rows.append({"id": key_id.decode(), "tenant": tenant,
                         "created_at": float(rec.get(b"created_at", 0)),
                         "revoked": b"revoked_at" in rec})  # fmt: skip
        return rows

    def callback_secret(self, tenant: str) -> str | None:
        v = self.r.hget(tenant_record(tenant), "callback_secret")
        return v.decode() if v else None


class Admission:
    """Authenticate a bearer key, spend one token of its tenant's rate, read its budget."""

    def __init__(self, r: aredis.Redis, settings: GatewaySettings, budget_usd: float | None):
        self.settings = settings
        self.budget_usd = budget_usd
        self.r = r
        self._script = r.register_script(files("gateway").joinpath("admission.lua").read_text())

    async def admit(self, authorization: str | None) -> Caller:
        if not authorization or not authorization.startswith("Bearer "):
            raise Unauthorized("no API key: send `Authorization: Bearer pfk_...` (create one with `panel keys create TENANT`)",
                               param="authorization", code="invalid_api_key")  # fmt: skip
        api_key = authorization[len("Bearer "):].strip()
        budget = -1.0 if self.budget_usd is None else self.budget_usd
        limits = [today(), self.settings.rate_per_s, self.settings.rate_burst, budget]
        if isinstance(self.r, AsyncRedisCluster):  # the key's record and its tenant are two slots
            tenant, revoked = await self.r.hmget(key_record(hash_key(api_key)), ["tenant", "revoked_at"])
            if tenant is None or revoked is not None:
                res = [0, b"revoked" if tenant is not None else b"unknown"]
            else:
                t = tenant.decode()
                res = await self._script(keys=[keys.gw_tenant(t), keys.gw_rate(t), keys.budget_tenant_day(t, today())],
                                         args=[t, *limits])  # fmt: skip
        else:
            res = await self._script(keys=[key_record(hash_key(api_key))], args=[keys.tenant_tag_open(), *limits])
        if res[0] == 0:
            why = res[1].decode()
            if why == "rate":
                retry_ms = int(res[3])
                raise RateLimited(f"tenant {res[2].decode()!r} is over its request rate; retry after {retry_ms} ms",
                                  code="rate_limit_exceeded", headers={"Retry-After": str(max(1, -(-retry_ms // 1000))),
                                                                        "retry-after-ms": str(retry_ms)})  # fmt: skip
            text = "this API key was revoked" if why == "revoked" else "unknown API key"
            raise Unauthorized(f"{text}; create one with `panel keys create TENANT`", param="authorization",
                               code="invalid_api_key")  # fmt: skip
        cap = int(res[3])
        return Caller(tenant=res[1].decode(), spent_usd=int(res[2]) / NANO, cap_usd=None if cap < 0 else cap / NANO)
