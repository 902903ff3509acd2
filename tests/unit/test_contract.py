"""The wire contract rejects bad input with the field's name and keeps good input intact."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from producer import job_json
from producer.contract import MAX_PROMPT_CHARS, Job, Receipt, Result
from producer.errors import ContractError


def field_of(data: object) -> str:
    with pytest.raises(ContractError) as e:
        Job.parse(data)  # type: ignore[arg-type]
    return e.value.field


def test_minimal_job_parses_with_defaults() -> None:
    job = Job.parse({"task_class": "extraction", "prompt": "hi"})
    assert (job.mode, job.tenant, job.schema_version) == ("realtime", "default", 1)
    assert job.chat() == [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize(
    ("data", "field"),
    [
        (b"{not json", "(line)"),
        (b"[1, 2]", "(line)"),
        ({"task_class": "x", "promt": "hi"}, "promt"),
        ({"task_class": "x"}, "messages"),
        ({"task_class": "x", "prompt": "a", "messages": [{"role": "user", "content": "b"}]}, "messages"),
        ({"task_class": "x", "messages": []}, "messages"),
        ({"task_class": "x", "messages": [{"role": "system", "content": "s"}]}, "messages"),
        ({"task_class": "x", "messages": [{"role": "robot", "content": "b"}]}, "messages.0.role"),
        ({"task_class": "x", "prompt": "a", "mode": "fast"}, "mode"),
        ({"task_class": "x", "prompt": "a", "budget_usd": -1}, "budget_usd"),
        ({"task_class": "x", "prompt": ""}, "prompt"),
        ({"task_class": "bad class!", "prompt": "a"}, "task_class"),
        ({"task_class": "x", "prompt": "a", "response_schema": {"type": 3}}, "response_schema"),
        ({"task_class": "x", "prompt": "a", "tenant": ""}, "tenant"),
        ({"task_class": "x", "prompt": "a", "metadata": {"blob": "x" * 5000}}, "metadata"),
        ({"task_class": "x", "prompt": "a", "schema_version": 2}, "schema_version"),
    ],
)
def test_bad_input_names_the_field(data: object, field: str) -> None:
    assert field_of(data) == field


def test_oversize_prompt_is_rejected_with_size() -> None:
    with pytest.raises(ContractError) as e:
        Job.parse({"task_class": "x", "prompt": "y" * (MAX_PROMPT_CHARS + 1)})
    assert e.value.field == "prompt" and "too large" in str(e.value)
    with pytest.raises(ContractError) as e:  # the same size spread over messages names `messages`
        half = "y" * (MAX_PROMPT_CHARS // 2 + 1)
        Job.parse({"task_class": "x", "messages": [{"role": "system", "content": half}, {"role": "user", "content": half}]})
    assert e.value.field == "messages" and "too large" in str(e.value)


def test_deadline_in_the_past_is_rejected_and_future_accepted() -> None:
    past = (datetime.now(UTC) - timedelta(seconds=5)).isoformat()
    assert field_of({"task_class": "x", "prompt": "a", "deadline": past}) == "deadline"
    future = (datetime.now(UTC) + timedelta(minutes=5)).isoformat()
    assert Job.parse({"task_class": "x", "prompt": "a", "deadline": future}).deadline is not None
    assert field_of({"task_class": "x", "prompt": "a", "deadline": "2030-01-01T00:00:00"}) == "deadline"  # no tz


def test_flags_are_deduplicated_and_sorted() -> None:
    assert Job.parse({"task_class": "x", "prompt": "a", "flags": ["b", "a", "b"]}).flags == ["a", "b"]


def test_result_round_trips_through_json() -> None:
    r = Result(job_id="j", status="decided", answer="B", receipt=Receipt(job_id="j", task_class="x"))
    assert Result.model_validate_json(r.model_dump_json()) == r


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", "1e400"])
def test_a_non_finite_budget_in_json_names_budget_usd_not_json(literal: str) -> None:
    raw = '{"task_class": "extraction", "prompt": "hi", "budget_usd": ' + literal + "}"
    with pytest.raises(ContractError) as caught:
        Job.parse(raw.encode())
    assert caught.value.field == "budget_usd" and "finite number" in str(caught.value)
    assert "not JSON" not in str(caught.value)


@pytest.mark.parametrize("n", [2**64, 2**70, -(2**63) - 1, 10**30])
def test_a_metadata_integer_past_64_bits_is_refused_naming_its_field(n: int) -> None:
    raw = '{"task_class": "extraction", "prompt": "order 12345678901234567890123", "metadata": {"order": ' + str(n) + "}}"
    with pytest.raises(ContractError) as caught:
        Job.parse(raw.encode())
    assert caught.value.field == "metadata.order" and str(n) in str(caught.value) and "string" in str(caught.value)


@pytest.mark.parametrize("n", [2**64 - 1, -(2**63), 2**53 + 1, 0])
def test_a_metadata_integer_within_64_bits_is_kept_exact(n: int) -> None:
    raw = '{"task_class": "extraction", "prompt": "hi", "metadata": {"order": ' + str(n) + "}}"
    job = Job.parse(raw.encode())
    assert job.metadata["order"] == n and type(job.metadata["order"]) is int
    assert Job.model_validate_json(job.model_dump_json()).metadata["order"] == n


def test_digits_inside_strings_are_never_mistaken_for_integers() -> None:
    raw = '{"task_class": "extraction", "prompt": "card 123456789012345678901234567890", "metadata": {"ref": "99999999999999999999999"}}'
    assert Job.parse(raw.encode()).metadata == {"ref": "99999999999999999999999"}


def test_jsonl_lines_are_numbered_blank_ones_skipped_and_each_bad_one_a_named_error() -> None:
    from producer import job_json

    got = list(job_json.jsonl([b'{"a": 1}', b"  ", b"\xff", b"nope", b'{"n": 1180591620717411303424}']))
    assert [n for n, _ in got] == [1, 3, 4, 5] and got[0][1] == {"a": 1}
    errors = [v for _, v in got[1:]]
    assert all(isinstance(e, ContractError) for e in errors)
    assert [(e.field, str(e).split(": ", 1)[1][:9]) for e in errors] == [
        ("(line)", "not UTF-8"), ("(line)", "not JSON:"), ("n", "integer 1")]


@pytest.mark.parametrize(("raw", "field"), [
    (b'{"budget_usd": NaN}', "budget_usd"),
    (b'{"body": {"seed": 1, "temperature": NaN}}', "body.temperature"),
    (b'{"a": [1, {"b": "x,:{[", "c": -Infinity}]}', "a.1.c"),
    (b'{"metadata": {"k\\"ey": Infinity}}', 'metadata.k\\"ey'),
])  # fmt: skip
def test_a_non_finite_number_is_named_by_its_whole_path(raw: bytes, field: str) -> None:
    with pytest.raises(ContractError) as e:
        job_json.load(raw)
    assert e.value.field == field and "not a finite number" in str(e.value)
