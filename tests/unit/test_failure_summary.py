"""A failed job's error names why, in one line: each failed model's last error."""

from __future__ import annotations

from producer.contract import CallRecord, Receipt
from workers.jobs import NO_ANSWER, failure_summary


def receipt(*calls: tuple[str, str, str | None]) -> Receipt:
    return Receipt.model_construct(calls=[CallRecord.model_construct(model=m, status=s, error=e) for m, s, e in calls])


def test_each_failed_model_is_named_once_with_its_first_error_line() -> None:
    r = receipt(("gpt-4o", "failed", "HTTP 401 from openai: invalid key\nbody..."),
                ("gpt-4o", "failed", "HTTP 401 again"), ("claude-3-5-haiku", "failed", "circuit open"),
                ("llama3.1-8b", "cancelled", None))  # fmt: skip
    assert failure_summary(r) == f"{NO_ANSWER} (gpt-4o: HTTP 401 from openai: invalid key; claude-3-5-haiku: circuit open)"


def test_without_failed_calls_the_reason_is_the_deadline() -> None:
    assert failure_summary(receipt(("gpt-4o", "cancelled", None))) == NO_ANSWER


def test_many_failures_stay_one_bounded_line() -> None:
    r = receipt(*[(f"m{i}", "failed", "x" * 500) for i in range(6)])
    s = failure_summary(r)
    assert "\n" not in s and s.endswith("; and 3 more)") and len(s) < 700
