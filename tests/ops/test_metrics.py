"""Each worker's Prometheus endpoint, scraped after real panels, agrees with their receipts: calls,
tokens, cost, decisions, early exits and arbiter calls, summed over the fleet as Prometheus would."""

from __future__ import annotations

from collections import Counter

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.ops.conftest import OPS_WORKERS, FinishedPanels, MeteredFleet

pytestmark = pytest.mark.integration

LabelKey = tuple[tuple[str, str], ...]


def fleet_totals(fleet: MeteredFleet, names: tuple[str, ...]) -> dict[str, Counter[LabelKey]]:
    """Sum each counter's `_total` samples over every worker, keyed by metric then label set."""
    totals: dict[str, Counter[LabelKey]] = {}
    for worker in OPS_WORKERS:
        for family in text_string_to_metric_families(fleet.scrape(worker.name)):
            for s in family.samples:
                if s.name in names:
                    totals.setdefault(s.name, Counter())[tuple(sorted(s.labels.items()))] += s.value
    return totals


def by(counter: Counter[LabelKey], *labels: str) -> Counter[tuple[str, ...]]:
    out: Counter[tuple[str, ...]] = Counter()
    for key, value in counter.items():
        d = dict(key)
        out[tuple(d[label] for label in labels)] += value
    return out


def test_worker_metrics_mirror_the_receipts(ops_fleet: MeteredFleet, finished_panels: FinishedPanels) -> None:
    names = ("panel_calls_total", "panel_tokens_total", "panel_cost_usd_total", "panel_decisions_total",
             "panel_early_exits_total", "panel_arbiter_calls_total")  # fmt: skip
    totals = fleet_totals(ops_fleet, names)
    receipts = [r.receipt for r in finished_panels.results]
    assert all(r is not None for r in receipts)
    calls = [c for r in receipts if r for c in r.calls if c.status != "skipped"]  # skipped: never sent

    assert by(totals["panel_calls_total"], "model", "status", "role") == Counter(
        (c.model, c.status, c.role) for c in calls
    )
    tokens = by(totals["panel_tokens_total"], "direction")
    assert tokens["in",] == sum(c.tokens_in for c in calls) > 0
    assert tokens["out",] == sum(c.tokens_out for c in calls) > 0
    assert sum(totals["panel_cost_usd_total"].values()) == pytest.approx(sum(r.total_cost_usd for r in receipts if r))

    early, arbitrated = finished_panels.early.receipt, finished_panels.arbitrated.receipt
    assert early is not None and arbitrated is not None
    assert by(totals["panel_decisions_total"], "task_class", "decision") == Counter(
        {("math_word_problem", early.decision): 1, ("multiple_choice", arbitrated.decision): 1}
    )
    assert by(totals["panel_early_exits_total"], "task_class") == Counter({("math_word_problem",): 1})
    assert by(totals["panel_arbiter_calls_total"], "task_class") == Counter({("multiple_choice",): 1})


def test_each_worker_serves_its_own_metrics_port(ops_fleet: MeteredFleet, finished_panels: FinishedPanels) -> None:
    """One exporter per process (per pod in k8s): the frontier worker made the arbiter call, the
    economy worker the early-exit panel's calls; neither reports the other's."""
    frontier = fleet_totals_of(ops_fleet, "frontier")
    economy = fleet_totals_of(ops_fleet, "economy")
    assert {model for model, _ in frontier} == {"llama3.1-405b"}
    assert {model for model, _ in economy} == {"llama3.2-3b", "llama3.1-8b"}


def fleet_totals_of(fleet: MeteredFleet, worker: str) -> Counter[tuple[str, str]]:
    out: Counter[tuple[str, str]] = Counter()
    for family in text_string_to_metric_families(fleet.scrape(worker)):
        for s in family.samples:
            if s.name == "panel_calls_total":
                out[s.labels["model"], s.labels["status"]] += s.value
    return out
