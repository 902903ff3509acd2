"""Cascade policies at load: the schema of CASCADE-SCHEMA.md loads, and every refusal names the
file, the line and the field (unknown check, out-of-range threshold, logprob on an Anthropic
model, a non-last `always`, agreement on a single-model stage, batch mode, a same-family judge)."""

from __future__ import annotations

from pathlib import Path

import pytest

from producer.contract import Job
from workers.errors import PolicyError
from workers.policy import NO_LOGPROBS, PolicyTable
from workers.registry import Registry

REG = Registry.load()
HEAD = """task_classes:
  qa_choice:
    default_lane: cascade
    single: {model: llama3.1-8b}
    panel:
      members: [llama3.1-70b, gpt-4o-mini, qwen2.5-72b-instruct]
      quorum: 2
      agreement: {rule: choice}
      arbiter: llama3.1-405b
"""
GOOD = HEAD + """    cascade:
      stages:
        - model: llama3.1-8b
          accept: {check: logprob, min: -0.35}
        - panel:
            members: [llama3.1-70b, gpt-4o-mini]
            quorum: 2
            agreement: {rule: choice}
          accept: {check: agreement}
        - model: llama3.1-405b
"""


def load(tmp_path: Path, text: str) -> PolicyTable:
    path = tmp_path / "tasks.yaml"
    path.write_text(text)
    return PolicyTable.load(REG, path)


def refusal(tmp_path: Path, text: str) -> PolicyError:
    with pytest.raises(PolicyError) as e:
        load(tmp_path, text)
    return e.value


def line_of(text: str, needle: str, nth: int = 1) -> int:
    return [i for i, t in enumerate(text.splitlines(), 1) if needle in t][nth - 1]


def test_the_shared_schema_loads_and_plans_a_cascade(tmp_path: Path) -> None:
    table = load(tmp_path, GOOD)
    policy = table.get("qa_choice")
    assert policy.cascade is not None
    assert [s.check for s in policy.cascade.stages] == ["logprob", "agreement", "always"]
    assert policy.cascade.stages[1].panel is not None and policy.cascade.stages[1].panel.arbiter is None
    plan = table.plan(Job(task_class="qa_choice", prompt="q"))
    assert (plan.lane, plan.triggers) == ("cascade", [])
    assert table.plan(Job(task_class="qa_choice", prompt="q", lane="panel")).lane == "panel"


@pytest.mark.parametrize(("old", "new", "field", "needle", "words"), [
    ("check: logprob, min: -0.35", "check: vibes, min: -0.35", "accept.check", "vibes", "Input should be"),
    ("check: logprob, min: -0.35", "check: logprob, min: 0.2", "accept.min", "min: 0.2", "out of range for logprob"),
    ("check: logprob, min: -0.35", "check: logprob", "accept", "check: logprob", "needs `min`"),
    ("check: logprob, min: -0.35", "check: self_reported, min: 1.5", "accept.min", "min: 1.5", "[0, 1]"),
    ("check: logprob, min: -0.35", "check: self_reported, min: -0.1", "accept.min", "min: -0.1", "[0, 1]"),
    ("check: logprob, min: -0.35", "check: always", "accept.check", "check: always", "never run"),
    ("check: logprob, min: -0.35", "check: agreement", "accept.check", "check: agreement}", "panel stage"),
    ("check: logprob, min: -0.35", "check: schema, min: 0.5", "accept.min", "min: 0.5", "takes no `min`"),
])  # fmt: skip
def test_a_bad_check_names_file_line_and_field(tmp_path: Path, old: str, new: str, field: str, needle: str, words: str) -> None:
    text = GOOD.replace(old, new, 1)
    e = refusal(tmp_path, text)
    assert e.field == f"task_classes.qa_choice.cascade.stages.0.{field}", str(e)
    assert e.line == line_of(text, needle) and str(tmp_path / "tasks.yaml") in str(e)
    assert words in str(e)


def test_logprob_on_an_anthropic_model_is_refused_with_the_reason(tmp_path: Path) -> None:
    text = GOOD.replace("- model: llama3.1-8b", "- model: claude-3-5-haiku", 1)
    e = refusal(tmp_path, text)
    assert e.field == "task_classes.qa_choice.cascade.stages.0.model" and e.line == line_of(text, "claude-3-5-haiku")
    assert NO_LOGPROBS in str(e)


def test_a_stage_without_accept_that_is_not_last_is_refused(tmp_path: Path) -> None:
    text = GOOD.replace("          accept: {check: agreement}\n", "")
    e = refusal(tmp_path, text)
    assert e.field == "task_classes.qa_choice.cascade.stages.1" and "never run" in str(e)


def test_model_and_panel_in_one_stage_and_unknown_models_are_refused(tmp_path: Path) -> None:
    text = GOOD.replace("        - model: llama3.1-405b\n", "        - model: llama3.1-405b\n          panel: {members: [gpt-4o], quorum: 1, agreement: {rule: exact}}\n")
    assert "exactly one of `model`" in str(refusal(tmp_path, text))
    text = GOOD.replace("- model: llama3.1-405b", "- model: gpt-7")
    e = refusal(tmp_path, text)
    assert e.field == "task_classes.qa_choice.cascade.stages.2.model" and e.line == line_of(text, "gpt-7")


def test_cascade_lane_without_stages_and_more_than_four_stages(tmp_path: Path) -> None:
    assert "needs a `cascade" in str(refusal(tmp_path, HEAD))
    five = GOOD + "".join("        - model: llama3.1-405b\n" for _ in range(2))
    assert refusal(tmp_path, five).field == "task_classes.qa_choice.cascade.stages"


def test_batch_jobs_run_cascades_and_a_class_without_one_refuses_lane_cascade(tmp_path: Path) -> None:
    table = load(tmp_path, GOOD.replace("    default_lane: cascade\n", "    default_lane: cascade\n    mode: batch\n"))
    assert (table.plan(Job(task_class="qa_choice", prompt="q")).lane, table.plan(Job(task_class="qa_choice", prompt="q")).mode) == ("cascade", "batch")
    plain = load(tmp_path, GOOD.replace("default_lane: cascade", "default_lane: single").split("    cascade:")[0])
    with pytest.raises(PolicyError, match="declares no cascade"):
        plain.plan(Job(task_class="qa_choice", prompt="q", lane="cascade"))


def test_arbiter_of_another_family_is_enforced_at_load(tmp_path: Path) -> None:
    same = GOOD.replace("      arbiter: llama3.1-405b\n", "      arbiter: llama3.1-405b\n      arbiter_family: different\n")
    e = refusal(tmp_path, same)  # llama judging llama3.1-70b
    assert e.field == "task_classes.qa_choice.panel.arbiter" and "family 'llama'" in str(e) and e.line == line_of(same, "arbiter: llama3.1-405b")
    ok = same.replace("arbiter: llama3.1-405b", "arbiter: claude-3-5-sonnet")
    assert load(tmp_path, ok).get("qa_choice").panel.arbiter_family == "different"
    staged = GOOD.replace("            agreement: {rule: choice}\n          accept",
                          "            agreement: {rule: choice}\n            arbiter: gpt-4o\n            arbiter_family: different\n          accept")
    e = refusal(tmp_path, staged)  # gpt-4o judging gpt-4o-mini inside a cascade stage
    assert e.field == "task_classes.qa_choice.cascade.stages.1.panel.arbiter" and "gpt-4o-mini" in str(e)


def test_agrees_previous_needs_a_stage_before_it_and_a_single_model_stage(tmp_path: Path) -> None:
    first = GOOD.replace("accept: {check: logprob, min: -0.35}", "accept: {check: agrees_previous}")
    e = refusal(tmp_path, first)
    assert e.field == "task_classes.qa_choice.cascade.stages.0.accept.check" and "stage before it" in str(e)
    assert e.line == line_of(first, "check: agrees_previous")
    panel = GOOD.replace("accept: {check: agreement}", "accept: {check: agrees_previous}")
    e = refusal(tmp_path, panel)
    assert e.field == "task_classes.qa_choice.cascade.stages.1.accept.check" and "a panel stage uses agreement" in str(e)
    ok = GOOD.replace("""        - panel:
            members: [llama3.1-70b, gpt-4o-mini]
            quorum: 2
            agreement: {rule: choice}
          accept: {check: agreement}""", """        - model: llama3.1-70b
          accept: {check: agrees_previous}""")
    assert load(tmp_path, ok).get("qa_choice").cascade.stages[1].check == "agrees_previous"  # type: ignore[union-attr]
