"""Typed errors of the worker side; each carries what an operator needs to act."""

from __future__ import annotations

import pydantic

from producer.errors import PanelError


class PolicyError(PanelError):
    """A policy file is wrong: names the file, line and field at fault."""

    def __init__(self, path: str, line: int | None, field: str, message: str):
        self.path, self.line, self.field = path, line, field
        where = f"{path}:{line}" if line else path
        super().__init__(f"{where}: {field}: {message}")


class BudgetExceeded(PanelError):
    def __init__(self, scope: str, cap_usd: float, would_spend_usd: float):
        self.scope, self.cap_usd, self.would_spend_usd = scope, cap_usd, would_spend_usd
        super().__init__(f"budget {scope}: cap ${cap_usd:.6f} would be passed (${would_spend_usd:.6f}); raise budget_usd")


class Cancelled(Exception):
    """The panel was decided while this call was queued (`sent` False) or in flight (`sent` True:
    the provider may bill the prompt, so the receipt charges its input tokens)."""

    def __init__(self, panel_id: str, sent: bool = False):
        super().__init__(panel_id)
        self.sent = sent
        self.tokens_in: int | None = None  # the input as sent, set by the call path (providers/billing.py)


def failure_reason(e: BaseException) -> str:
    """One line on why a task failed, for the job's error and the dead-letter list. A pydantic
    error names the fields only: its default text quotes the input, which may be a prompt."""
    if isinstance(e, pydantic.ValidationError):
        where = ", ".join(".".join(map(str, err["loc"])) or "(root)" for err in e.errors()[:5])
        return f"ValidationError: {e.error_count()} invalid field(s) of {e.title}: {where}"
    return f"{type(e).__name__}: {e}"[:300]
