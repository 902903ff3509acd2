"""A model call's record: what a member (or the arbiter) paid for and voted, stored as JSON in the
panel's calls hash before its vote, and rendered into the receipt's `CallRecord` lines.

    rec = Call(member="m0", model="gpt-4o-mini", provider="openai", tier="economy", status="answered")
    store.put_call(panel_id, rec)          # workers/panel/state.py
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Literal

import orjson

Status = Literal["answered", "failed", "late", "cancelled", "skipped"]
_RECEIPT_FIELDS = ("member", "role", "model", "provider", "tier", "status", "tokens_in", "tokens_out", "tokens_cached",
                   "tokens_cache_write", "cache_saved_usd", "latency_ms", "cost_usd", "batch", "realtime_cost_usd",
                   "answer_key", "failed_over_from", "error", "logprob", "anonymised", "compared", "equivalent")  # fmt: skip


NOT_MEMBERS = ("arbiter", "equivalence")  # calls of a panel that are not a member's answer


@dataclass
class Call:
    member: str  # m0, m1, ... or "arbiter" (or "equivalence", the free-text equivalence check)
    model: str
    provider: str
    tier: str
    status: Status
    role: Literal["member", "arbiter", "equivalence"] = "member"
    batch: bool = False  # priced at the batch price list
    tokens_in: int = 0
    tokens_out: int = 0
    tokens_cached: int = 0  # of tokens_in: read from the provider's prompt cache
    tokens_cache_write: int = 0  # of tokens_in: written to it
    cache_saved_usd: float = 0.0  # the same tokens at the uncached price, minus cost_usd
    latency_ms: float = 0.0
    cost_usd: float = 0.0
    realtime_cost_usd: float | None = None  # batch calls: the same tokens at the real-time price
    answer_key: str | None = None  # the normalised answer it voted for
    text: str | None = None  # the answer (never logged)
    error: str | None = None
    failed_over_from: str | None = None
    verdict: dict[str, Any] | None = None  # the arbiter's validated verdict
    anonymised: dict[str, str] | None = None  # the arbiter: label shown to the judge -> member id
    logprob: float | None = None  # the answer's sequence log-probability (OpenAI wire, when asked)
    compared: list[str] | None = None  # the equivalence check: the two members it compared
    equivalent: bool | None = None  # and what it said (None: unreadable or failed)
    tries: int = 0  # the batch arbiter's verdict requests, each paid for
    ended_at: float | None = None  # when its outcome was known (epoch s; set when first stored)
    extra: dict[str, Any] = field(default_factory=dict, repr=False)  # fields of a newer version, kept

    def to_json(self) -> bytes:
        # not `asdict`, which deep-copies every field first: a record is written on every member call
        data = {k: v for k in _FIELDS if (v := getattr(self, k)) is not None}
        data.update((k, v) for k, v in self.extra.items() if v is not None)
        return orjson.dumps(data)

    @classmethod
    def from_json(cls, raw: bytes | str) -> Call:
        data = orjson.loads(raw)
        return cls(**{k: v for k, v in data.items() if k in _KNOWN}, extra={k: v for k, v in data.items() if k not in _KNOWN})

    def receipt_fields(self) -> dict[str, Any]:
        """The fields producer.contract.CallRecord has (the receipt's line for this call)."""
        return {k: getattr(self, k) for k in _RECEIPT_FIELDS}


_FIELDS = tuple(f.name for f in fields(Call) if f.name != "extra")  # stored, in declaration order
_KNOWN = frozenset(_FIELDS)
