"""Agreement rules: answers that mean the same vote together; different ones do not."""

from __future__ import annotations

import pytest

from workers.panel.agreement import make_rule
from workers.policy import AgreementSpec


def key(rule: str, text: str, existing: list[str] | None = None, schema: dict | None = None, **kw: object) -> str | None:  # type: ignore[type-arg]
    return make_rule(AgreementSpec(rule=rule, **kw), schema).key(text, existing or [])  # type: ignore[arg-type]


@pytest.mark.parametrize("text", ["B", "b", " B\n", "The answer is (B).", "ANSWER: B", "Answer: b"])
def test_choice_extracts_the_option_letter(text: str) -> None:
    assert key("choice", text) == "B"


def test_choice_with_labels_takes_the_last_label_mentioned() -> None:
    assert key("choice", "Not APPROVE: request changes, the migration lacks a backup", options=["APPROVE", "REQUEST_CHANGES"]) == "REQUEST_CHANGES"
    assert key("choice", "no verdict here", options=["APPROVE"]) is None


@pytest.mark.parametrize(("text", "value"), [("so 16.0\n#### 16", "16"), ("$1,200 in total", "1200"),
                                             ("#### 0.50", "0.5"), ("ANSWER: -3", "-3")])  # fmt: skip
def test_numeric_canonicalises(text: str, value: str) -> None:
    assert key("numeric", text) == value


def test_numeric_without_a_number_has_no_key() -> None:
    assert key("numeric", "I cannot tell") is None


def test_json_compares_schema_fields_canonically() -> None:
    schema = {"properties": {"vendor": {}, "total": {}}}
    a = key("json", 'Sure: {"vendor": "Acme GmbH ", "total": 1250, "note": "x"}', schema=schema)
    b = key("json", '```json\n{"total": 1250, "vendor": "acme gmbh"}\n```', schema=schema)
    assert a == b and a is not None
    assert key("json", '{"vendor": "Other", "total": 1250}', schema=schema) != a
    assert key("json", "no json", schema=schema) is None


def test_exact_ignores_case_space_and_trailing_punctuation() -> None:
    assert key("exact", "Use  the Redis transport.") == key("exact", "use the redis transport")


def test_set_joins_a_similar_existing_answer() -> None:
    first = key("set", "sql injection, missing auth check, no tests")
    assert first is not None
    assert key("set", "SQL injection\nmissing auth check\nno tests\nstyle", [first], threshold=0.7) == first
    assert key("set", "typo", [first]) != first
