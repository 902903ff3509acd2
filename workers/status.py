"""Provider health for operators: breaker state and limiter headroom per provider:model,
published to Redis (`keys.PROVIDERS_SNAPSHOT`, read by `panel status --providers`) and to Prometheus."""

from __future__ import annotations

import orjson

from producer import keys
from workers import metrics
from workers.limits import Limit
from workers.runtime import Runtime

SNAPSHOT_KEY = keys.PROVIDERS_SNAPSHOT
EVERY_S = 5


def publish(rt: Runtime, force: bool = False) -> dict[str, dict[str, object]] | None:
    """At most once per EVERY_S fleet-wide (a SET NX guard), unless forced."""
    if not force and not rt.redis.set(keys.PROVIDERS_SNAPSHOT_GUARD, 1, nx=True, ex=EVERY_S):
        return None
    rows: dict[str, dict[str, object]] = {}
    for name, spec in rt.registry.models.items():
        key = f"{spec.provider}:{name}"
        snap = dict(rt.breaker.snapshot(key))
        head = rt.limiter.headroom(Limit(key, spec.rpm, spec.tpm, spec.burst_s))
        rows[key] = {**snap, **head}
        metrics.breaker_state(key, str(snap.get("state", "closed")))
        metrics.HEADROOM_REQ.labels(key).set(float(head.get("requests", 0)))
        metrics.HEADROOM_TOK.labels(key).set(float(head.get("tokens", 0)))
    rt.redis.set(SNAPSHOT_KEY, orjson.dumps(rows, default=str), ex=300)
    return rows
