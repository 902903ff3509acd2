"""Errors a user can act on: each names what is wrong and how to fix it."""

from __future__ import annotations

from pydantic import ValidationError


class PanelError(Exception):
    """Base of panel-fleet's errors; `str(e)` is one line fit for a terminal."""


class ContractError(PanelError, ValueError):
    """A job (or file line) does not fit the wire contract.

    `field` is the dotted path of the first bad field, `problems` every (field, message) found.
    """

    def __init__(self, problems: list[tuple[str, str]]):
        problems = [(_one_line(f), _one_line(m)) for f, m in problems]
        self.problems = problems
        self.field = problems[0][0] if problems else ""
        super().__init__("; ".join(f"{f}: {m}" for f, m in problems))

    @classmethod
    def from_validation(cls, err: ValidationError) -> ContractError:
        problems: list[tuple[str, str]] = []
        for e in err.errors():
            loc = ".".join(str(p) for p in e["loc"]) or "(job)"
            msg = e["msg"].removeprefix("Value error, ")
            if not e["loc"] and ": " in msg:  # model-level checks name their field first
                loc, msg = msg.split(": ", 1)
            if e["type"] == "extra_forbidden":
                msg = "unknown field; remove it (see producer/contract.py for the fields a Job takes)"
            elif e["type"] == "missing":
                msg = "field required"
            problems.append((loc, msg))
        return cls(problems)


def _one_line(text: str) -> str:
    """`text` fit for one terminal line: a field named `a\\nb` by a hostile job is shown escaped."""
    return text if text.isprintable() else repr(text)[1:-1]


class UnknownJob(PanelError, KeyError):
    def __init__(self, job_id: str):
        super().__init__(job_id)
        self.job_id = job_id

    def __str__(self) -> str:
        return f"job {self.job_id!r}: no such job (check the id; results expire after PANEL_RESULT_TTL)"


class JobTimeout(PanelError, TimeoutError):
    pass


class NoWorker(PanelError):
    """Jobs wait in a queue that no worker consumes: nothing will ever decide them."""
