"""A suspect task runs alone: in a child interpreter of its worker, one task per child.

After a worker process is lost mid-task, every task it was running comes back and none of them
can be blamed: the one that killed it (a segfault, the OOM killer, `os._exit` in a library) and
its innocent neighbours look the same. Each of them therefore runs its next attempts here. A
child that dies ran nothing else, so its death is charged to its task (workers/tasks.py counts
it as a failed attempt); the neighbours finish in their own children and keep their attempts,
and the worker itself survives whatever the suspect does.

    python3 -m workers.alone FD   # the child (workers/alone.py): request JSON on stdin, its outcome written to FD

A child costs an interpreter start (~1 s) and a worker's memory, so at most `quarantine_slots`
(PANEL_QUARANTINE_SLOTS, default 2) run at once per worker process; other suspects wait a turn.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
from dataclasses import dataclass
from typing import Any, Literal

import orjson

log = logging.getLogger("panel.quarantine")
_slots: threading.BoundedSemaphore | None = None
_slots_lock = threading.Lock()


class KilledItsProcess(Exception):
    """The suspect's child died (a signal or an exit without an outcome) while running it alone."""

    def __init__(self, task: str, exit_code: int):
        self.exit_code = exit_code
        how = f"signal {-exit_code}" if exit_code < 0 else f"exit code {exit_code}"
        super().__init__(f"{task} killed the process running it alone ({how})")


@dataclass(frozen=True)
class Outcome:
    kind: Literal["ok", "raised", "died"]
    out: str = ""
    reason: str = ""  # raised: failure_reason of the child's exception
    exit_code: int = 0


def _slot(n: int) -> threading.BoundedSemaphore:
    global _slots
    with _slots_lock:
        if _slots is None:
            _slots = threading.BoundedSemaphore(n)
        return _slots


def run_alone(task: str, args: list[Any], job_id: str, slots: int, timeout_s: float) -> Outcome:
    """Run task `task`'s body on `args` in a child of its own; waits for a free slot first."""
    request = orjson.dumps({"task": task, "args": args, "job_id": job_id})
    with _slot(slots):
        read_fd, write_fd = os.pipe()
        env = {**os.environ, "PANEL_METRICS_PORT": "0"}  # the worker's exporter keeps its port
        try:
            proc = subprocess.Popen([sys.executable, "-m", "workers.alone", str(write_fd)],
                                    stdin=subprocess.PIPE, pass_fds=(write_fd,), env=env)  # fmt: skip
        finally:
            os.close(write_fd)
        with os.fdopen(read_fd, "rb") as reader:
            try:
                proc.communicate(request, timeout=timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                return Outcome("raised", reason=f"TimeoutError: {task} ran alone past {timeout_s:.0f} s")
            raw = reader.read()
    if proc.returncode == 0 and raw:
        got = orjson.loads(raw)
        if "error" in got:
            return Outcome("raised", reason=str(got["error"]))
        return Outcome("ok", out=str(got["out"]))
    log.warning("%s for job %s killed its quarantine process (exit %s)", task, job_id, proc.returncode)
    return Outcome("died", exit_code=proc.returncode)
