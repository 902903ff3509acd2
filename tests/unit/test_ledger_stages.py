"""`panel ledger`'s per-stage lines for cascade classes: reached, accepted by the check, concluded."""

from __future__ import annotations

from typing import Any

from producer.ledger_view import stage_rates


def receipt(job: str, steps: list[tuple[int, bool]], cls: str = "qa") -> dict[str, Any]:
    lanes = [{"lane": "single", "reason": "default" if n == 1 else f"cascade:stage{n - 1}:logprob=-1<-0.5",
              "stage": n, "check": "logprob", "value": -1.0, "threshold": -0.5, "accepted": ok} for n, ok in steps]  # fmt: skip
    return {"job_id": job, "task_class": cls, "lanes": lanes, "calls": [], "decision": "single", "triggers": [],
            "early_exit": False, "total_cost_usd": 0.0, "latency_ms": 10.0}


def test_each_stage_counts_the_jobs_that_reached_it_and_where_they_stopped() -> None:
    receipts = [
        receipt("a", [(1, True)]),
        receipt("b", [(1, True)]),
        receipt("c", [(1, False), (2, True)]),
        receipt("d", [(1, False), (2, False), (3, False)]),  # the last stage concludes though its check says no
        receipt("d", [(1, False), (2, False), (3, False)]),  # appended twice by a re-run: counted once
        {"job_id": "e", "task_class": "plain", "lanes": [{"lane": "panel", "reason": "default"}], "calls": [], "decision": "quorum"},
    ]
    (line,) = stage_rates(receipts)  # the class without cascade stages prints nothing
    assert line == ("qa (cascade): stage 1: 4 reached, 2 accepted (50%), 2 concluded; "
                    "stage 2: 2 reached, 1 accepted (50%), 1 concluded; stage 3: 1 reached, 0 accepted (0%), 1 concluded")  # fmt: skip


def test_a_retried_stage_counts_once_by_its_last_run() -> None:
    (line,) = stage_rates([receipt("a", [(1, False), (1, True)])])
    assert line == "qa (cascade): stage 1: 1 reached, 1 accepted (100%), 1 concluded"


def test_the_ledger_page_lists_the_stage_lines() -> None:
    from producer.ledger_page import render_page

    page = render_page([(1.0, receipt("a", [(1, False), (2, True)])), (2.0, receipt("b", [(1, True)]))])
    assert "<h2>Cascade stages</h2>" in page
    assert "<li>qa (cascade): stage 1: 2 reached, 1 accepted (50%), 1 concluded; stage 2: 1 reached, 1 accepted (100%), 1 concluded</li>" in page


def test_a_job_that_kept_an_earlier_stage_s_answer_concluded_there() -> None:
    """Stages 2 and 3 ended without an answer (the deadline ran out): the job concluded at stage 1,
    whose unaccepted answer it kept (workers/ledger.py's trigger), in the ledger and the labels'
    summary alike."""
    from producer.labels import summary

    kept = receipt("a", [(1, False), (2, False), (3, False)])
    kept["triggers"] = ["cascade:stage3:no answer; stage1's unaccepted answer kept"]
    (line,) = stage_rates([kept, receipt("b", [(1, False), (2, True)])])
    assert line == ("qa (cascade): stage 1: 2 reached, 0 accepted (0%), 1 concluded; "
                    "stage 2: 2 reached, 1 accepted (50%), 1 concluded; stage 3: 1 reached, 0 accepted (0%), 0 concluded")  # fmt: skip
    assert "decided at stage1:logprob 1" in summary([kept], {"a": True})[0]


def test_the_ledger_page_says_what_escalation_changed_among_labelled_jobs_as_the_cli_does() -> None:
    from producer.labels import summary
    from producer.ledger_page import render_page

    changed = receipt("a", [(1, False), (2, True)])
    changed["changed_vs_default"] = True
    receipts = [changed, receipt("b", [(1, True)])]
    labels = {"a": True, "b": False}
    page = render_page([(1.0, receipts[0]), (2.0, receipts[1])], labels)
    (line,) = summary(receipts, labels)
    assert "escalation changed 1 labelled answers (1 now correct)" in line
    assert "<h2>Labelled jobs</h2>" in page and line in page
    assert "<h2>Labelled jobs</h2>" not in render_page([(1.0, receipts[0])])  # no labels, no section
