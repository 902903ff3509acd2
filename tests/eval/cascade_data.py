"""A synthetic replay file where a confidence signal pays: a cheap model whose log-probability
separates its right answers from its wrong ones, a mid model, and a strong expensive one."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import orjson

MODELS = {"cheap": (0.70, 1e-5), "mid": (0.80, 5e-5), "strong": (0.92, 4e-4), "other": (0.75, 2e-5)}


def rows(n: int = 150, seed: int = 1) -> list[dict[str, Any]]:
    rnd = random.Random(seed)
    out = []
    for i in range(n):
        gold = "ABCD"[i % 4]
        models = {}
        for name, (acc, cost) in MODELS.items():
            right = rnd.random() < acc
            answer = gold if right else rnd.choice([c for c in "ABCD" if c != gold])
            conf = -rnd.uniform(0, 0.2) if right else -rnd.uniform(0.1, 1.5)  # informative, overlapping
            models[name] = {"answer": answer, "text": answer, "correct": right, "tokens_in": 100, "tokens_out": 1,
                            "cost_usd": cost, "latency_ms": 100.0, "conf": round(conf, 4)}  # fmt: skip
        out.append({"id": f"s{i}", "source": "synthetic", "task": "t", "kind": "choice",
                    "messages": [{"role": "user", "content": f"question {i}"}], "gold": gold, "models": models})  # fmt: skip
    return out


def write(path: Path, data: list[dict[str, Any]]) -> Path:
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in data))
    return path
