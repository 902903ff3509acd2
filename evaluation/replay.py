"""Replay files (shared/data/replay format): one question per line with every model's recorded
answer, correctness, tokens, cost, latency and confidence. Any file of that format is accepted; a
bad line is refused with the file, the line and the field (`x.jsonl:7: models.gpt-4o.cost_usd: ...`)."""

from __future__ import annotations

import gzip
import sys
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, ValidationError

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
    conf: float | None = None  # the answer's log-probability (zellinger); null where not recorded


@dataclass(frozen=True)
class Row:
    id: str
    kind: str
    messages: list[dict[str, str]]
    gold: str
    models: dict[str, Recorded]


class ReplayFormatError(ValueError):
    pass


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore")
    answer: str | None = None
    text: str | None = None
    correct: bool | None = None
    tokens_in: int | None = None
    tokens_out: int | None = None
    cost_usd: float | None = None
    latency_ms: float | None = None
    conf: float | None = None


class _Line(BaseModel):
    model_config = ConfigDict(extra="ignore")
    id: str | int
    kind: Literal["choice", "number", "label", "text"]
    messages: list[dict[str, str]]
    gold: str | int | float
    models: dict[str, _Model]
    source: str | None = None  # "ledger": a `panel label --export` file (`complete`)


def open_text(path: Path) -> bytes:
    raw = path.read_bytes()
    return gzip.decompress(raw) if path.suffix == ".gz" or raw[:2] == b"\x1f\x8b" else raw


MODEL_SHARE = 0.9  # a model recorded in fewer of a file's rows is left out of it (`complete`)


def load(path: Path, need: Iterable[str] = ()) -> list[Row]:
    """Every question of a replay file, each with the same models (`complete`; `need`: models kept
    whatever their share, as `panel eval` keeps the models its policies name)."""
    rows, lines, sources = [], [], set()
    for n, line in enumerate(open_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            d: Any = orjson.loads(line)
        except orjson.JSONDecodeError as e:
            raise ReplayFormatError(f"{path}:{n}: not JSON ({e}); each line is one question object") from None
        try:
            v = _Line.model_validate(d)
        except ValidationError as e:
            err = e.errors()[0]
            field = ".".join(map(str, err["loc"])) or "(line)"
            raise ReplayFormatError(f"{path}:{n}: {field}: {err['msg']} (got {str(err.get('input'))[:60]!r}); "
                                    "see shared/data/replay/README.md for the format") from None  # fmt: skip
        models = {m: Recorded(**r.model_dump()) for m, r in v.models.items()}
        rows.append(Row(str(v.id), v.kind, v.messages, str(v.gold), models))
        lines.append(n)
        sources.add(v.source)
    if not rows:
        raise ReplayFormatError(f"{path}: no rows")
    return complete(rows, lines, path, need, share=1.0 if sources == {"ledger"} else MODEL_SHARE)


def complete(rows: list[Row], lines: list[int], path: Path, need: Iterable[str] = (),
             share: float = MODEL_SHARE) -> list[Row]:  # fmt: skip
    """The rows that record every kept model. A policy can only be replayed, and a model compared,
    where each model answered, so a model recorded in fewer than `share` (90%) of the rows is left
    out of the file (one added late, say), and a row without one of the others is left out; both
    are said on stderr. Fewer than half the rows left is an error naming the models and lines to
    mend. A model in `need` is kept whatever its share: a policy tuned on one half of a file, where
    it cleared the share, is evaluated on the other, where it may not. A `panel label --export`
    file (`source: ledger`) reads with share 1: there a model is missing where the policy did not
    call it (a cascade's later stage, on the rows its first stage accepted), not at random, and
    leaving those rows out would hide exactly the rows the first stage was sure of."""
    counts = Counter(m for r in rows for m in r.models)
    keep = {m for m, c in counts.items() if c >= share * len(rows)} | (set(need) & counts.keys())
    lacking = [sorted(keep - r.models.keys()) for r in rows]  # per row, the kept models it does not record
    kept = [i for i, ms in enumerate(lacking) if not ms]
    if len(kept) == len(rows) and len(keep) == len(counts):
        return rows
    gaps = [(lines[i], ms) for i, ms in enumerate(lacking) if ms]
    where = "; ".join(f"line {n}: {', '.join(ms[:3])}" for n, ms in gaps[:3]) + (" ..." if len(gaps) > 3 else "")
    rare = ", ".join(f"{m} ({counts[m]} rows)" for m in sorted(set(counts) - keep))
    if len(kept) * 2 < len(rows) or not keep:
        missing = f" ({where})" if gaps else f"; no model is recorded in {share:.0%} of them ({rare})"
        raise ReplayFormatError(f"{path}: only {len(kept)} of {len(rows)} rows record every model kept{missing}; "
                                "give each row the same models' records")  # fmt: skip
    said = [f"{len(gaps)} of {len(rows)} rows left out, each lacking a model's record ({where})"] if gaps else []
    if rare:
        said.append(f"models in < {share:.0%} of rows left out: {rare}")
    print(f"{path}: " + "; ".join(said), file=sys.stderr)
    return [rows[i] for i in kept]


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


def credit(row: Row, model: str) -> bool:
    """Whether `model`'s recorded answer counts as right: the file's own `correct` verdict where it
    records one (a free-text answer is judged, not string-matched to gold), else `is_correct`."""
    rec = row.models[model]
    return rec.correct if rec.correct is not None else is_correct(row.kind, rec.answer, row.gold)


def agreement_for(kind: str) -> dict[str, Any]:
    return {"choice": {"rule": "choice"}, "number": {"rule": "numeric", "tolerance": 1e-6}}.get(kind, {"rule": "exact"})


def models_in(rows: list[Row]) -> list[str]:
    """Models present in every row (a policy can only be replayed on those)."""
    common = set(rows[0].models)
    for r in rows[1:]:
        common &= set(r.models)
    return sorted(common)
