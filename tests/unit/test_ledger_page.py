"""The ledger page as a pure function of ledger entries (the Chromium test renders a real run)."""

from __future__ import annotations

from typing import Any

from producer.ledger_page import MIN_PANELS_TO_FLAG, class_rows, render_page, trends


def receipt(job_id: str, tc: str, lane: str = "panel", changed: bool | None = False, cost: float = 0.01,
            latency: float = 100.0) -> dict[str, Any]:  # fmt: skip
    return {"job_id": job_id, "task_class": tc, "lanes": [{"lane": lane, "reason": "policy"}], "triggers": [],
            "calls": [{"member": "1.m0", "model": "m", "status": "answered", "tokens_in": 3, "tokens_out": 1,
                       "latency_ms": 50.0, "cost_usd": cost}],
            "decision": "quorum", "early_exit": False, "changed_vs_default": changed, "total_cost_usd": cost,
            "latency_ms": latency}  # fmt: skip


def test_an_empty_ledger_renders_a_page_saying_so() -> None:
    page = render_page([])
    assert "no receipts yet" in page and "<svg" not in page


def test_a_panel_that_never_changes_an_answer_is_flagged_and_one_that_does_is_not() -> None:
    n = MIN_PANELS_TO_FLAG
    rs = [receipt(f"a{i}", "noop") for i in range(n)] + [receipt(f"s{i}", "noop", lane="single", cost=0.001) for i in range(3)]
    rs += [receipt(f"b{i}", "useful", changed=(i == 0)) for i in range(n)]
    rows = {r.summary["task_class"]: r for r in class_rows(rs, {})}
    assert rows["noop"].flag and "$0.009000 more per job than its single-lane jobs" in rows["noop"].flag
    assert rows["useful"].flag is None
    few = class_rows([receipt(f"c{i}", "few") for i in range(n - 1)], {})
    assert few[0].flag is None  # too few panels to judge


def test_labelled_accuracy_and_cost_per_correct_answer_count_only_labelled_jobs() -> None:
    rs = [receipt("x1", "t", cost=0.02), receipt("x2", "t", cost=0.04), receipt("x3", "t", cost=1.0)]
    (row,) = class_rows(rs, {"x1": True, "x2": False})
    assert (row.labelled, row.correct, row.accuracy) == (2, 1, 0.5)
    assert row.cost_per_correct == 0.06  # labelled jobs' cost over their correct answers


def test_trends_bucket_by_time_per_class_with_gaps() -> None:
    entries = [(1000.0 + i * 10, receipt(f"j{i}", "a" if i < 6 else "b", cost=i)) for i in range(12)]
    xs, m = trends(entries)
    assert len(xs) == 12 and xs == sorted(xs)
    assert m["cost"]["a"][:6] == [0, 1, 2, 3, 4, 5] and m["cost"]["a"][6:] == [None] * 6


def test_receipts_are_escaped_and_linkable_by_job_id() -> None:
    page = render_page([(1000.0, receipt("<script>x</script>", "t"))])
    assert "<script>" not in page and 'id="job-&lt;script&gt;x&lt;/script&gt;"' in page
