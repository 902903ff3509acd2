"""Policy files: the shipped table loads; a bad file names file:line and field; lanes and triggers."""

from __future__ import annotations

from pathlib import Path

import pytest

from producer.contract import Job
from workers.errors import PolicyError
from workers.policy import AgreementSpec, PolicyTable
from workers.registry import Registry, policies_dir

SHIPPED = policies_dir()


@pytest.fixture(scope="module")
def table() -> PolicyTable:
    return PolicyTable.load(Registry.load())


def test_shipped_table_has_the_six_task_classes(table: PolicyTable) -> None:
    for tc in ("extraction", "docs_answer", "code_review", "agent_plan", "product_copy", "paid_final_answer"):
        assert table.get(tc).default_lane == "single"


def test_migration_diff_escalates_and_names_the_trigger(table: PolicyTable) -> None:
    plan = table.plan(Job(task_class="code_review", prompt="--- a/app/migrations/0042.py\n+ALTER TABLE x"))
    assert plan.lane == "panel"
    assert any("migrations" in t for t in plan.triggers)


def test_plain_diff_stays_on_the_default_lane(table: PolicyTable) -> None:
    plan = table.plan(Job(task_class="code_review", prompt="--- a/README.md\n-teh\n+the"))
    assert (plan.lane, plan.triggers) == ("single", [])


def test_flag_and_explicit_lane(table: PolicyTable) -> None:
    assert table.plan(Job(task_class="paid_final_answer", prompt="q", flags=["evidence_conflict"])).triggers == [
        "input:flag:evidence_conflict"
    ]
    assert table.plan(Job(task_class="product_copy", prompt="q", lane="panel")).triggers == ["explicit:lane=panel"]


def _write(tmp: Path, text: str) -> Path:
    p = tmp / "tasks.yaml"
    p.write_text(text)
    return p


def test_unknown_model_is_reported_with_its_line(tmp_path: Path) -> None:
    text = (SHIPPED / "tasks.yaml").read_text().replace("single: {model: gpt-4o-mini}", "single: {model: gpt-5-mega}")
    path = _write(tmp_path, text)
    line = next(i for i, t in enumerate(text.splitlines(), 1) if "gpt-5-mega" in t)
    with pytest.raises(PolicyError) as e:
        PolicyTable.load(Registry.load(), path)
    assert e.value.line == line and e.value.field == "task_classes.product_copy.single.model"


def test_quorum_above_members_and_bad_regex_and_typo_key(tmp_path: Path) -> None:
    base = (SHIPPED / "tasks.yaml").read_text()
    for old, new, field in (
        ("quorum: 2\n      dispatch: parallel\n      agreement: {rule: json}", "quorum: 9\n      dispatch: parallel\n      agreement: {rule: json}", "task_classes.extraction.panel"),
        ("'contradict'", "'contra(dict'", "task_classes.docs_answer.triggers.input.keywords"),
        ("default_lane: single\n    single: {model: llama3.1-8b}", "default_lane: single\n    singel: {model: llama3.1-8b}", "task_classes.extraction.singel"),
        ("dispatch: staged", "dispatch: sometimes", "task_classes.math_word_problem.panel.dispatch"),
    ):  # fmt: skip
        assert old in base, old
        with pytest.raises(PolicyError) as e:
            PolicyTable.load(Registry.load(), _write(tmp_path, base.replace(old, new, 1)))
        assert e.value.field == field and e.value.line is not None, str(e.value)


def test_yaml_syntax_error_names_the_line(tmp_path: Path) -> None:
    with pytest.raises(PolicyError) as e:
        PolicyTable.load(Registry.load(), _write(tmp_path, "task_classes:\n  x: [unclosed\n"))
    assert e.value.field == "(syntax)" and e.value.line


def test_registry_rejects_unknown_fallback(tmp_path: Path) -> None:
    text = (SHIPPED / "models.yaml").read_text().replace("fallbacks: [gpt-4o]\n  gpt-4o:", "fallbacks: [gpt-9]\n  gpt-4o:")
    p = tmp_path / "models.yaml"
    p.write_text(text)
    with pytest.raises(PolicyError) as e:
        Registry.load(p)
    assert "gpt-9" in str(e.value) and e.value.line is not None


def test_cost_comes_from_the_registry() -> None:
    reg = Registry.load()
    assert reg.cost("gpt-4o", 1_000_000, 0) == 2.5
    assert reg.cost("gpt-4o", 0, 1_000_000, batch=True) == 5.0


SIMILAR = """
task_classes:
  free_text:
    default_lane: panel
    single: {model: llama3.1-8b}
    panel:
      members: [llama3.1-8b, llama3.1-70b]
      quorum: 2
      agreement: {rule: similar, threshold: 0.85, answer_fields: [result]}
      arbiter: llama3.1-405b
"""


def test_similar_rule_loads_with_its_threshold_and_answer_fields(tmp_path: Path) -> None:
    from workers.panel.agreement import Similar, make_rule

    spec = PolicyTable.load(Registry.load(), _write(tmp_path, SIMILAR)).get("free_text").panel.agreement
    rule = make_rule(spec)
    assert isinstance(rule, Similar) and (rule.threshold, rule.fields) == (0.85, ("result",))
    assert rule.key('{"result": "Paris, France"}', []) == "paris france"
    default = make_rule(AgreementSpec(rule="similar"))
    assert isinstance(default, Similar) and default.threshold == 0.9  # the calibrated default


def test_similar_threshold_out_of_range_is_refused_with_its_line(tmp_path: Path) -> None:
    for bad in ("threshold: 1.5", "threshold: 0", "answer_fields: []"):
        text = SIMILAR.replace("threshold: 0.85, answer_fields: [result]", bad)
        with pytest.raises(PolicyError) as e:
            PolicyTable.load(Registry.load(), _write(tmp_path, text))
        line = next(i for i, t in enumerate(text.splitlines(), 1) if "rule: similar" in t)
        assert e.value.field.startswith("task_classes.free_text.panel.agreement") and e.value.line == line, str(e.value)
