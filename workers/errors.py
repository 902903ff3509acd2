"""Typed errors of the worker side; each carries what an operator needs to act."""

from __future__ import annotations

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
