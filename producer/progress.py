"""Progress bars for the CLI's long commands (`submit-many`, `wait` on many ids, `eval`).

rich: already a dependency for `panel up`'s live status panel, so one library draws both. It
writes to stderr (stdout stays the command's data, pipeable), and draws nothing when stderr is
not a terminal (CI logs, pipes), where a bar would only add noise.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Protocol

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


class Advance(Protocol):
    def __call__(self, done: int, note: str = "") -> None: ...


@contextmanager
def progress(label: str, total: int | None) -> Iterator[Advance]:
    """`with progress("waiting", len(ids)) as tick: ... tick(done)`; `total` None: unknown size."""
    console = Console(file=sys.stderr)
    bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[note]}"),
                   TimeElapsedColumn(), TimeRemainingColumn(), console=console, disable=not console.is_terminal,
                   transient=False)  # fmt: skip
    with bar:
        task = bar.add_task(label, total=total, note="")

        def tick(done: int, note: str = "") -> None:
            bar.update(task, completed=done, note=note)

        yield tick
