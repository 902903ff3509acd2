"""Replay files (shared/data/replay format): one question per line with every model's recorded
answer, correctness, tokens, cost and latency. Any file of that format is accepted."""

from __future__ import annotations

import gzip
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

KINDS = ("choice", "number", "label", "text")


@dataclass(frozen=True)
class Recorded:
    answer: str | None
    text: str | None
    correct: bool | None
    tokens_in: int | None
    tokens_out: int | None
    cost_usd: float | None
    latency_ms: float | None


@dataclass(frozen=True)
class Row:
    id: str
    kind: str
    messages: list[dict[str, str]]
    gold: str
    models: dict[str, Recorded]


class ReplayFormatError(ValueError):
    pass


def open_text(path: Path) -> bytes:
    raw = path.read_bytes()
    return gzip.decompress(raw) if path.suffix == ".gz" or raw[:2] == b"\x1f\x8b" else raw


def load(path: Path) -> list[Row]:
    rows = []
    for n, line in enumerate(open_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            d: dict[str, Any] = orjson.loads(line)
            kind = d["kind"]
            if kind not in KINDS:
                raise ReplayFormatError(f"{path}:{n}: kind: {kind!r} is not one of {KINDS}")
            models = {m: Recorded(**{k: v.get(k) for k in Recorded.__dataclass_fields__}) for m, v in d["models"].items()}
            rows.append(Row(str(d["id"]), kind, list(d["messages"]), str(d["gold"]), models))
        except (KeyError, TypeError, orjson.JSONDecodeError) as e:
            raise ReplayFormatError(f"{path}:{n}: not a replay row ({type(e).__name__}: {e})") from None
    if not rows:
        raise ReplayFormatError(f"{path}: no rows")
    return rows


def is_correct(kind: str, answer: str | None, gold: str) -> bool:
    """Scored as the data's README says: numbers numerically, everything else by equality."""
    if answer is None:
        return False
    if kind == "number":
        try:
            return abs(float(answer) - float(gold)) <= 1e-6 * max(1.0, abs(float(gold)))
        except ValueError:
            return False
    if kind == "choice":
        return answer.strip().upper() == gold.strip().upper()
    return " ".join(answer.split()).casefold() == " ".join(gold.split()).casefold()


def agreement_for(kind: str) -> dict[str, Any]:
    return {"choice": {"rule": "choice"}, "number": {"rule": "numeric", "tolerance": 1e-6}}.get(kind, {"rule": "exact"})


def models_in(rows: list[Row]) -> list[str]:
    """Models present in every row (a policy can only be replayed on those)."""
    common = set(rows[0].models)
    for r in rows[1:]:
        common &= set(r.models)
    return sorted(common)
