"""The replay index: recorded answers (shared/data/replay format), looked up by model name and the
exact messages sent, so a replayed panel costs and behaves as the recorded models did. Each row is
also kept as a `Question` under the text an arbiter prompt quotes it by (`sim.arbiter`).
"""

from __future__ import annotations

import gzip
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import orjson

from sim.arbiter import Question, render_task
from sim.prompt import Prompt


@dataclass(frozen=True)
class Recorded:
    text: str
    tokens_in: int | None
    tokens_out: int | None
    latency_ms: float | None
    conf: float | None = None  # the recorded confidence: served as the reply's log-probability


class ReplayIndex:
    """`(model, Prompt.sha) -> Recorded`. A model missing from a row is simply not indexed."""

    def __init__(self) -> None:
        self._rows: dict[tuple[str, str], Recorded] = {}
        self._questions: dict[str, Question] = {}  # keyed by render_task(messages)
        self._latency: dict[tuple[str, str], float] = {}  # (model, rendered task) -> recorded ms

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
                    prompt = Prompt.from_wire(row["messages"])
                except (orjson.JSONDecodeError, KeyError, ValueError) as e:
                    raise ValueError(f"{path}:{lineno}: not a replay row ({e})") from None
                self._add_question(render_task(list(prompt.messages)), row)
                sha = prompt.sha
                for model, rec in (row.get("models") or {}).items():
                    text = rec.get("text") if rec.get("text") is not None else rec.get("answer")
                    if text is None:
                        continue  # nothing recorded to replay: the rule answers instead
                    self._rows[(model, sha)] = Recorded(
                        text=str(text), tokens_in=rec.get("tokens_in"),
                        tokens_out=rec.get("tokens_out"), latency_ms=rec.get("latency_ms"),
                        conf=float(rec["conf"]) if isinstance(rec.get("conf"), (int, float)) else None,
                    )  # fmt: skip

    def _add_question(self, task: str, row: dict[str, object]) -> None:
        models: dict[str, dict[str, object]] = row.get("models") or {}  # type: ignore[assignment]
        answers = {m: None if r.get("answer") is None else str(r["answer"]) for m, r in models.items()}
        texts = {str(r["text"]): answers[m] for m, r in models.items() if r.get("text") is not None}
        self._questions[task] = Question(str(row.get("kind") or "text"), answers, texts)
        for m, r in models.items():
            if isinstance(r.get("latency_ms"), (int, float)):
                self._latency[(m, task)] = float(r["latency_ms"])  # type: ignore[arg-type]

    def lookup(self, model: str, prompt: Prompt) -> Recorded | None:
        return self._rows.get((model, prompt.sha))

    def question(self, task: str) -> Question | None:
        """The row an arbiter prompt quotes (`task` as `sim.arbiter.render_task` renders it)."""
        return self._questions.get(task)

    def latency(self, model: str, task: str) -> float | None:
        return self._latency.get((model, task))
