"""The replay index: recorded answers (shared/data/replay format), looked up by model name and the
exact messages sent, so a replayed panel costs and behaves as the recorded models did.
"""

from __future__ import annotations

import gzip
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import orjson

from sim.prompt import Prompt


@dataclass(frozen=True)
class Recorded:
    text: str
    tokens_in: int | None
    tokens_out: int | None
    latency_ms: float | None


class ReplayIndex:
    """`(model, Prompt.sha) -> Recorded`. A model missing from a row is simply not indexed."""

    def __init__(self) -> None:
        self._rows: dict[tuple[str, str], Recorded] = {}

    def __len__(self) -> int:
        return len(self._rows)

    @classmethod
    def load(cls, paths: Iterable[Path]) -> ReplayIndex:
        index = cls()
        for path in paths:
            index.add_file(path)
        return index

    def add_file(self, path: Path) -> None:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = orjson.loads(line)
                    sha = Prompt.from_wire(row["messages"]).sha
                except (orjson.JSONDecodeError, KeyError, ValueError) as e:
                    raise ValueError(f"{path}:{lineno}: not a replay row ({e})") from None
                for model, rec in (row.get("models") or {}).items():
                    text = rec.get("text") if rec.get("text") is not None else rec.get("answer")
                    if text is None:
                        continue  # nothing recorded to replay: the rule answers instead
                    self._rows[(model, sha)] = Recorded(
                        text=str(text), tokens_in=rec.get("tokens_in"),
                        tokens_out=rec.get("tokens_out"), latency_ms=rec.get("latency_ms"),
                    )  # fmt: skip

    def lookup(self, model: str, prompt: Prompt) -> Recorded | None:
        return self._rows.get((model, prompt.sha))
