"""Batch or real time: the one place a panel's call is given a lane.

    route(spec)        # "realtime" | "batch" | "batch_realtime"

A real-time panel's calls go out at once. A batch panel's calls wait for their model's next
provider batch (about half the price, up to 24 h), unless the job's deadline is nearer than
PANEL_BATCH_REALTIME_MARGIN_S: then the call is made now, at the real-time price, and its
receipt line says so ("batch_realtime").
"""

from __future__ import annotations

import os
import time
from typing import Literal

from workers.panel.run import PanelRun

Route = Literal["realtime", "batch", "batch_realtime"]
DEFAULT_MARGIN_S = 120.0


def realtime_margin_s() -> float:
    return float(os.environ.get("PANEL_BATCH_REALTIME_MARGIN_S", DEFAULT_MARGIN_S))


def route(spec: PanelRun, margin_s: float | None = None, now: float | None = None) -> Route:
    """The lane of the panel's next call (member or arbiter), decided now."""
    if not spec.batch:
        return "realtime"
    left = spec.deadline - (time.time() if now is None else now)
    return "batch_realtime" if left < (realtime_margin_s() if margin_s is None else margin_s) else "batch"


def batch_priced(r: Route) -> bool:
    """The price list a call on this route pays."""
    return r == "batch"
