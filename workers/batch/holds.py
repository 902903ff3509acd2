"""Budget holds for batch lines: a batch line reserves its worst-case cost (at the batch price)
when its member is queued, exactly as a real-time call does before it is sent, so job and tenant
caps hold on the batch lane too. The hold rides with the line through retried batches and is
settled once: at its real cost when the line lands, at zero when it fails for good, is cancelled,
or goes to real time (which reserves its own).

    error = reserve_line(rt, cid, spec, "m0")   # None, or why the budget refused the line
    settle_line(rt, cid, actual_usd)            # idempotent: only the first settle counts
"""

from __future__ import annotations

import orjson

from producer import keys as pk
from workers.budget import Hold
from workers.errors import BudgetExceeded
from workers.panel.calls import estimate_tokens
from workers.panel.run import PanelRun
from workers.runtime import Runtime

# KEYS[1] line hash. Take the hold out of the line: returns it once, then nil.
_TAKE = """
local v = redis.call('HGET', KEYS[1], 'hold')
if v then redis.call('HDEL', KEYS[1], 'hold') end
return v
"""


def reserve_line(rt: Runtime, cid: str, spec: PanelRun, member: str) -> str | None:
    """Reserve the line's worst case on the job's and tenant's budgets; the refusal's reason, or None."""
    job = rt.jobs.load(spec.job_id)
    spend = rt.jobs.spend(job, True)
    model = spec.member(member).model
    worst = rt.registry.cost(model, estimate_tokens(job.chat()), rt.registry.model(model).max_output_tokens, True)
    try:
        hold = rt.budget.reserve(spend.job_id, spend.tenant, spend.cap_usd, worst)
    except BudgetExceeded as e:
        return str(e)
    rt.redis.hset(pk.batch_line(cid), "hold", orjson.dumps([list(hold.keys), list(hold.caps), hold.nano]))
    return None


def settle_line(rt: Runtime, cid: str, actual_usd: float) -> None:
    raw = rt.redis.eval(_TAKE, 1, pk.batch_line(cid))
    if raw:
        keys, caps, nano = orjson.loads(raw)
        rt.budget.settle(Hold(tuple(keys), tuple(caps), int(nano)), actual_usd)
