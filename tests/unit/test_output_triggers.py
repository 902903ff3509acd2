"""The single lane's output triggers (`workers/jobs.py: output_triggers`): what in an answer's text
escalates a job to a panel, with the shipped classes' thresholds (policies/tasks.yaml)."""

from __future__ import annotations

from producer.contract import Job
from workers.jobs import output_triggers
from workers.policy import PolicyTable
from workers.registry import Registry

POLICIES = PolicyTable.load(Registry.load())
SCHEMA = {"type": "object", "required": ["label"], "properties": {"label": {"type": "string"}}}


def test_a_failed_call_escalates() -> None:
    job = Job(task_class="docs_answer", prompt="q")
    assert output_triggers(job, POLICIES.get("docs_answer"), None, 0) == (["output:call_failed"], False)


def test_low_self_reported_confidence_and_missing_citations_escalate() -> None:
    job, policy = Job(task_class="docs_answer", prompt="q"), POLICIES.get("docs_answer")  # low_confidence 0.5
    assert output_triggers(job, policy, "Use v2. Confidence: 40%\nSources: [1]", 0) == (["output:low_confidence<0.5"], False)
    assert output_triggers(job, policy, "Use v2. confidence = 0.3 see https://x", 0)[0] == ["output:low_confidence<0.5"]
    assert output_triggers(job, policy, "Use v2. Confidence: 0.9", 0)[0] == ["output:missing_citations"]
    assert output_triggers(job, policy, "Use v2 [1]. Confidence: 90", 0)[0] == []  # 90 read as 90%
    assert output_triggers(job, policy, "Use v2 [1].", 0)[0] == []  # no stated confidence: nothing to judge


def test_a_schema_miss_escalates_only_at_the_class_count() -> None:
    job, policy = Job(task_class="extraction", prompt="q", response_schema=SCHEMA), POLICIES.get("extraction")
    assert output_triggers(job, policy, '{"label": "a"}', 0) == ([], False)
    assert output_triggers(job, policy, '{"other": 1}', 0) == ([], True)  # the first miss: counted, retried
    assert output_triggers(job, policy, "not json", 1) == (["output:schema_invalid_x2"], True)  # schema_invalid: 2
