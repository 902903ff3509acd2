"""What a panel's conclusion reads of its job, queued on a pipeline the caller sends: its panels,
whether it was finalised, and (for a re-render) the result and ledger entry it replaces. The job
and its panels share a slot (producer/keys.py), so these go with the panel's own reads.

    at = queue_view(pipe, job_id, prior=True)   # then parse_view(pipe.execute()[at:])
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import orjson

from producer import keys


@dataclass(frozen=True)
class JobView:
    """What a conclusion reads of its job, in one round trip. `prior` and `ledger_id` (the result
    and ledger entry a re-render replaces) are read only when asked for (`has_prior`)."""

    panels: list[dict[str, Any]]
    finalised: bool
    submitted_at: float
    schema_invalid: int
    status: str
    has_prior: bool = False
    prior: bytes | None = None
    ledger_id: bytes | None = None


def queue_view(pipe: Any, job_id: str, prior: bool = False) -> int:
    """Queue the view's two reads (with `prior`, the result and ledger id too); returns their index."""
    at = len(pipe)  # queued so far (a cluster pipeline keeps no command_stack of its own)
    pipe.lrange(keys.job_panels(job_id), 0, -1)
    pipe.hmget(keys.job(job_id), "finalised", "submitted_at", "schema_invalid", "status",
               *(("result", "ledger_id") if prior else ()))  # fmt: skip
    return at


def parse_view(got: list[Any]) -> JobView:
    panels, (finalised, submitted, invalid, status, *prior) = got[:2]
    return JobView(panels=[orjson.loads(x) for x in panels], finalised=finalised is not None,
                   submitted_at=float(submitted or time.time()), schema_invalid=int(invalid or 0),
                   status=(status or b"").decode(), has_prior=bool(prior),
                   prior=prior[0] if prior else None, ledger_id=prior[1] if prior else None)  # fmt: skip
