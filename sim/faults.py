"""Fault and latency draws: one seeded RNG per model, so a model's fault sequence is reproducible
for a given `--seed` and does not shift when other models' traffic interleaves differently.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from typing import Literal

from sim.knobs import Knobs

FaultKind = Literal["down", "fail_next", "429", "500", "502", "503", "timeout", "malformed", "truncated", "empty_choices"]

# Fixed order: one uniform draw walks the cumulative rates, so a sequence depends only on the seed.
_RATED: tuple[tuple[str, FaultKind], ...] = (
    ("rate_429", "429"), ("rate_500", "500"), ("rate_502", "502"), ("rate_503", "503"),
    ("rate_timeout", "timeout"), ("rate_malformed", "malformed"), ("rate_truncated", "truncated"),
    ("rate_empty_choices", "empty_choices"),
)  # fmt: skip


@dataclass(frozen=True)
class Fault:
    kind: FaultKind
    status: int  # the HTTP status the OpenAI-shaped API would send; Anthropic maps it

    @property
    def before_latency(self) -> bool:
        """Errors a gateway returns at once; the others come after the model 'ran'."""
        return self.kind not in ("malformed", "truncated", "empty_choices")


class FaultDice:
    def __init__(self, seed: int) -> None:
        self.seed = seed
        self._rngs: dict[str, random.Random] = {}

    def _rng(self, model: str) -> random.Random:
        if model not in self._rngs:
            digest = hashlib.sha256(f"{self.seed}\x1f{model}".encode()).digest()
            self._rngs[model] = random.Random(int.from_bytes(digest[:8], "big"))
        return self._rngs[model]

    def reset(self) -> None:
        self._rngs.clear()

    def draw(self, model: str, knobs: Knobs) -> Fault | None:
        u = self._rng(model).random()
        edge = 0.0
        for knob, kind in _RATED:
            edge += float(getattr(knobs, knob))
            if u < edge:
                status = int(kind) if kind.isdigit() else 200
                return Fault(kind, status)
        return None

    def latency_s(self, model: str, knobs: Knobs, recorded_ms: float | None) -> float:
        base = knobs.latency_ms
        if knobs.latency_mode == "recorded" and recorded_ms is not None:
            base = recorded_ms * knobs.latency_scale
        jitter = self._rng(model).uniform(-knobs.latency_jitter_ms, knobs.latency_jitter_ms) if knobs.latency_jitter_ms else 0.0
        return max(0.0, base + jitter) / 1000.0
