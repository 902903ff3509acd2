"""Exact counts of every request the simulator saw, faults included, per model and in total, and a
bounded per-request log. Tests prove "no call paid twice" and "zero 429s" from these numbers.

The log keeps a sha of the messages, never prompt text.
"""

from __future__ import annotations

import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

LOG_SIZE = 10_000
BATCH_COUNTERS = ("batch_files", "batch_creates", "batch_polls", "batch_lines")


@dataclass
class ModelStats:
    requests: int = 0
    by_status: Counter[str] = field(default_factory=Counter)
    answered: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    in_flight: int = 0
    max_in_flight: int = 0
    rate_limited: int = 0  # 429s issued, whether by an enforced limit or a fault knob
    faults: Counter[str] = field(default_factory=Counter)
    # requests whose client hung up mid-answer (499) and the input they had sent, counted as an
    # answer's is: what a provider may bill for a cancelled call
    dropped: int = 0
    dropped_tokens_in: int = 0
    batch_lines: int = 0
    batch_tokens_in: int = 0
    batch_tokens_out: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "by_status": dict(self.by_status), "faults": dict(self.faults)}


@dataclass
class CallRecord:
    """One request's entry in the stats; `finish` closes it exactly once."""

    model: str
    api: str
    messages_sha: str
    started: float = field(default_factory=time.time)
    status: int = 0
    fault: str | None = None


class Stats:
    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.models: dict[str, ModelStats] = {}
        self.in_flight = 0
        self.max_in_flight = 0
        self.batch = Counter({name: 0 for name in BATCH_COUNTERS})
        self.log: deque[dict[str, Any]] = deque(maxlen=LOG_SIZE)

    def model(self, name: str) -> ModelStats:
        return self.models.setdefault(name, ModelStats())

    def start(self, model: str, api: str, messages_sha: str) -> CallRecord:
        m = self.model(model)
        m.requests += 1
        m.in_flight += 1
        m.max_in_flight = max(m.max_in_flight, m.in_flight)
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        return CallRecord(model, api, messages_sha)

    def finish(self, rec: CallRecord, status: int, fault: str | None = None,
               tokens: tuple[int, int] | None = None, dropped_tokens_in: int | None = None) -> None:  # fmt: skip
        m = self.model(rec.model)
        m.in_flight -= 1
        self.in_flight -= 1
        m.by_status[str(status)] += 1
        if status == 429:
            m.rate_limited += 1
        if fault:
            m.faults[fault] += 1
        if tokens is not None:  # only a delivered, well-formed answer counts as answered
            m.answered += 1
            m.tokens_in += tokens[0]
            m.tokens_out += tokens[1]
        if dropped_tokens_in is not None:
            m.dropped += 1
            m.dropped_tokens_in += dropped_tokens_in
        tokens_in = tokens[0] if tokens is not None else dropped_tokens_in
        self.log.append({
            "model": rec.model, "api": rec.api, "status": status, "fault": fault,
            "started": rec.started, "ended": time.time(), "messages_sha": rec.messages_sha,
            "tokens_in": tokens_in,
        })  # fmt: skip

    def batch_line(self, model: str, tokens_in: int, tokens_out: int) -> None:
        m = self.model(model)
        m.batch_lines += 1
        m.batch_tokens_in += tokens_in
        m.batch_tokens_out += tokens_out
        self.batch["batch_lines"] += 1

    def snapshot(self) -> dict[str, Any]:
        models = {name: m.as_dict() for name, m in sorted(self.models.items())}
        totals: dict[str, Any] = {"by_status": Counter(), "faults": Counter()}
        for m in self.models.values():
            for key, value in m.__dict__.items():
                if key in ("by_status", "faults"):
                    totals[key].update(value)
                elif key not in ("in_flight", "max_in_flight"):
                    totals[key] = totals.get(key, 0) + value
        totals.update(by_status=dict(totals["by_status"]), faults=dict(totals["faults"]),
                      in_flight=self.in_flight, max_in_flight=self.max_in_flight, **self.batch)  # fmt: skip
        for key in ("requests", "answered", "tokens_in", "tokens_out", "rate_limited"):
            totals.setdefault(key, 0)
        return {"models": models, "totals": totals}

    def requests(self, model: str | None = None, limit: int = LOG_SIZE) -> list[dict[str, Any]]:
        rows = [r for r in self.log if model is None or r["model"] == model]
        return rows[-limit:]
