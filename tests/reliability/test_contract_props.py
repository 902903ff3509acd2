"""Hostile input, by property: whatever a producer or an operator hands panel-fleet is either taken
exactly as meant or rejected with one line naming the field; nothing crashes, nothing is lost.

- Jobs (`producer/contract.py`): random JSON, wrong types, huge and empty prompts, unknown task
  classes and fields, bad schemas, negative budgets, past deadlines.
- JSONL (`PanelClient.submit_many`): invalid UTF-8 and bad lines among good ones; every line ends
  submitted or reported, and the good ones run to a decision on a real fleet.
- Policy files (`policies/*.yaml` through `workers/policy_files.py`): a mutated file loads to
  exactly what it says or fails with file:line and field; a real worker given a bad policy dir
  exits before it consumes a single message.

    python3 -m pytest -q tests/reliability/test_contract_props.py
    PANEL_RELIABILITY_FULL=1 PANEL_PROPS_SCALE=10 python3 -m pytest -q tests/reliability/test_contract_props.py  # deeper
"""

from __future__ import annotations

import copy
import json
import math
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from producer import keys
from producer.client import PanelClient
from producer.contract import MAX_PROMPT_CHARS, Job
from producer.embedded import child_env
from producer.errors import ContractError
from producer.fleet import Fleet
from tests.reliability._support import SHIPPED_POLICIES, uid, wait_all
from workers.errors import PolicyError
from workers.policy import PolicyTable
from workers.registry import Registry

GOOD: dict[str, Any] = {"task_class": "extraction", "prompt": "Invoice 42: total is 17.50 EUR. Total?"}
SHIPPED_CLASSES = sorted(yaml.safe_load((SHIPPED_POLICIES / "tasks.yaml").read_text())["task_classes"])
# PANEL_PROPS_SCALE=10 runs ten times the examples (a deeper search than the default suite's);
# database=None: no .hypothesis/ in a shared working tree; a failure prints its example.
SCALE = float(os.environ.get("PANEL_PROPS_SCALE", "1"))


def props(examples: int) -> settings:
    return settings(max_examples=max(1, int(examples * SCALE)), deadline=None, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])  # fmt: skip


PROPS = props(60)

# --- strategies
json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20)
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
                           max_leaves=12)  # fmt: skip
# every character Python can hold, lone surrogates and control characters included
any_text = st.text(st.characters(codec=None, exclude_categories=()), max_size=30)
bad_names = st.one_of(st.just(""), st.just("a" * 129), st.text(min_size=1, max_size=12).filter(lambda s: not s.isascii() or " " in s or s[0] in "_.:-"),
                      st.integers(), st.booleans(), st.lists(st.text(max_size=3), max_size=2))  # fmt: skip
now = datetime.now(UTC)
past = st.datetimes(min_value=datetime(1970, 1, 2), max_value=(now - timedelta(seconds=5)).replace(tzinfo=None),
                    timezones=st.just(UTC))  # fmt: skip

# field -> values that field must refuse; the error must name that field
BAD_VALUES: dict[str, st.SearchStrategy[Any]] = {
    "task_class": bad_names,
    "tenant": bad_names,
    "id": bad_names.filter(lambda v: v is not None),
    "idempotency_key": bad_names.filter(lambda v: v is not None),
    "prompt": st.one_of(st.just(""), st.just("x" * (MAX_PROMPT_CHARS + 1)), st.integers(), st.lists(st.text(), max_size=2)),
    "messages": st.one_of(
        st.just([]), st.just("hello"), st.just([{"role": "system", "content": "only a system message"}]),
        st.just([{"role": "user", "content": ""}]), st.just([{"role": "user", "content": "x" * (MAX_PROMPT_CHARS + 1)}]),
        st.text(min_size=1, max_size=8).filter(lambda r: r not in ("system", "user", "assistant")).map(lambda r: [{"role": r, "content": "x"}]),
        st.just([{"role": "user", "content": "hi", "name": "extra"}]),
    ),  # fmt: skip
    "response_schema": st.one_of(st.just({}), st.just({"title": "no type"}), st.integers().map(lambda n: {"type": n}),
                                 st.text(max_size=5), st.lists(st.integers(), max_size=2)),  # fmt: skip
    "mode": st.text(max_size=10).filter(lambda m: m not in ("realtime", "batch")),
    "lane": st.text(max_size=10).filter(lambda m: m not in ("single", "panel")),
    "flags": st.one_of(st.text(max_size=5), st.lists(st.sampled_from(["has space", "", "ünïcode", "-lead", "a" * 200]), min_size=1)),
    "deadline": st.one_of(past.map(datetime.isoformat), st.just("2999-01-01T00:00:00"), st.just("tomorrow"),
                          st.integers(min_value=0, max_value=int(now.timestamp()) - 5)),  # fmt: skip
    "budget_usd": st.one_of(st.floats(max_value=0, allow_nan=False), st.integers(max_value=0), st.booleans(),
                            st.just("0.50"), st.just(float("inf")), st.just(float("nan"))),  # fmt: skip
    "metadata": st.one_of(st.just({"blob": "x" * 5000}), st.just({"nested": {"a": 1}}), st.just({"big": 2**70}), st.just([1])),
    "schema_version": st.sampled_from([0, 2, "1", None]),
}


def assert_one_clear_line(err: ContractError | PolicyError, field: str | None = None) -> None:
    text = str(err)
    assert text and "\n" not in text and "\r" not in text, repr(text)
    assert err.field, repr(text)
    if field is not None:
        assert err.field.split(".")[0] == field, (field, text)


# --- jobs
@PROPS
@given(json_values)
def test_any_json_value_is_a_job_or_one_clear_contract_error(value: Any) -> None:
    for raw in (value, json.dumps(value).encode()):  # stdlib: it writes integers past 64 bits too
        try:
            Job.parse(raw)
        except ContractError as e:
            assert_one_clear_line(e)


@PROPS
@given(st.dictionaries(st.sampled_from(sorted(Job.model_fields)), json_values, max_size=6), st.sampled_from([True, False]))
def test_jobs_of_wrong_types_everywhere_never_crash_the_parser(fields: dict[str, Any], with_good: bool) -> None:
    try:
        job = Job.parse({**GOOD, **fields} if with_good else fields)
    except ContractError as e:
        assert_one_clear_line(e)
    else:  # accepted: it must survive the trip through Redis unchanged
        assert Job.model_validate_json(job.model_dump_json()) == job


@PROPS
@given(st.data())
def test_a_bad_value_in_one_field_is_rejected_naming_that_field(data: st.DataObject) -> None:
    field = data.draw(st.sampled_from(sorted(BAD_VALUES)))
    value = data.draw(BAD_VALUES[field])
    job = {k: v for k, v in GOOD.items() if not (field == "messages" and k == "prompt")} | {field: value}
    with pytest.raises(ContractError) as caught:
        Job.parse(job)
    assert_one_clear_line(caught.value, field)


@PROPS
@given(any_text.filter(lambda k: k not in Job.model_fields), json_values)
@example(name="\ud800", value=None)  # a lone surrogate: pydantic-core reported it without its name
def test_an_unknown_field_is_named_in_one_line_whatever_its_name(name: str, value: Any) -> None:
    with pytest.raises(ContractError) as caught:
        Job.parse({**GOOD, name: value})
    assert_one_clear_line(caught.value)
    assert "unknown field" in str(caught.value)


@PROPS
@given(any_text, any_text)
def test_any_text_in_prompt_and_metadata_is_stored_as_given_or_named(prompt: str, tag: str) -> None:
    try:
        job = Job.parse({**GOOD, "prompt": prompt, "metadata": {"tag": tag}})
    except ContractError as e:
        assert_one_clear_line(e)
        assert e.field in ("prompt", "metadata", "metadata.tag"), str(e)
    else:
        assert Job.model_validate_json(job.model_dump_json()).prompt == prompt


# --- JSONL through submit_many (real redis-server, no workers: the lines are only queued)
@pytest.fixture
def submit_redis(redis_url: str) -> Iterator[tuple[PanelClient, redis.Redis]]:
    r = redis.Redis.from_url(redis_url)
    client = PanelClient(redis_url)
    yield client, r
    client.close()
    r.close()


LINE_KINDS: dict[str, tuple[bytes, str | None]] = {
    "good": (b"", None),
    "invalid_utf8": (b'{"task_class": "extraction", "prompt": "caf\xe9 \xff"}', "(line)"),
    "not_json": (b'{"task_class": "extraction", "prompt": ', "(line)"),
    "not_object": (b'["extraction", "hello"]', "(line)"),
    "unknown_class": (b'{"task_class": "no_such_class", "prompt": "hi"}', "task_class"),
    "empty_prompt": (b'{"task_class": "extraction", "prompt": ""}', "prompt"),
    "huge_prompt": (orjson.dumps({"task_class": "extraction", "prompt": "x" * (MAX_PROMPT_CHARS + 1)}), "prompt"),
    "bad_schema": (b'{"task_class": "extraction", "prompt": "hi", "response_schema": {"type": 7}}', "response_schema"),
    "negative_budget": (b'{"task_class": "extraction", "prompt": "hi", "budget_usd": -0.01}', "budget_usd"),
    "past_deadline": (b'{"task_class": "extraction", "prompt": "hi", "deadline": "2001-01-01T00:00:00Z"}', "deadline"),
    "wrong_type": (b'{"task_class": "extraction", "prompt": ["a", "list"]}', "prompt"),
    "unknown_field": (b'{"task_class": "extraction", "prompt": "hi", "promt": "typo"}', "promt"),
    "nan_budget": (b'{"task_class": "extraction", "prompt": "hi", "budget_usd": NaN}', "budget_usd"),
    "big_int_metadata": (b'{"task_class": "extraction", "prompt": "hi", "metadata": {"n": 1180591620717411303424}}',
                         "metadata.n"),
}


def good_line(n: int) -> bytes:
    return orjson.dumps({"task_class": "extraction", "prompt": f"{uid('line')}: invoice {n} total?"})


@props(25)
@given(st.lists(st.sampled_from(sorted(LINE_KINDS)), min_size=1, max_size=25), st.sampled_from([b"\n", b"\r\n"]))
def test_submit_many_reports_every_bad_line_by_number_and_queues_every_good_one(
    submit_redis: tuple[PanelClient, redis.Redis], kinds: list[str], eol: bytes
) -> None:
    client, r = submit_redis
    r.flushdb()
    r.sadd(keys.task_classes(), *SHIPPED_CLASSES)  # what a started worker publishes
    lines = [good_line(n) if kind == "good" else LINE_KINDS[kind][0] for n, kind in enumerate(kinds)]
    report = client.submit_many(line + eol for line in lines)
    assert report.total == len(kinds)  # nothing dropped, nothing doubled
    good_numbers = [n for n, kind in enumerate(kinds, start=1) if kind == "good"]
    assert [n for n, _ in report.submitted] == good_numbers
    for err in report.errors:
        kind = kinds[err.line - 1]
        assert err.field == LINE_KINDS[kind][1], (kind, str(err))
        assert "\n" not in str(err) and str(err).startswith(f"line {err.line}: {err.field}: ")
    for (line_no, job_id) in report.submitted:
        raw = lines[line_no - 1]
        assert r.hget(keys.job(job_id), "status") == b"queued"
        assert orjson.loads(r.hget(keys.job(job_id), "spec"))["prompt"] == orjson.loads(raw)["prompt"]
    assert r.llen("control") == len(good_numbers)  # one panel.run message per good line


@pytest.mark.skipif(os.environ.get("PANEL_RELIABILITY_FULL") != "1",
                    reason="a fleet of its own (~10 s idle, ~40 s loaded); PANEL_RELIABILITY_FULL=1 runs it. The default "
                           "suite's tests/integration/test_lanes.py runs good lines among bad ones through submit_many")  # fmt: skip
def test_bad_lines_among_good_ones_are_reported_once_and_the_good_ones_run(tmp_path: Path) -> None:
    """The whole path on a real fleet, through the CLI a user runs: one stderr line per bad line,
    and every good line decided."""
    kinds = ["good", *sorted(k for k in LINE_KINDS if k != "good"), "good", "good"]
    lines = [good_line(n) if k == "good" else LINE_KINDS[k][0] for n, k in enumerate(kinds)]
    path = tmp_path / "jobs.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n\n")
    with Fleet() as fleet:
        out = subprocess.run([sys.executable, "-m", "producer", "--redis-url", fleet.redis_url, "submit-many", str(path)],
                             capture_output=True, timeout=120)  # fmt: skip
        assert out.returncode == 2, out
        rejected = [ln for ln in out.stderr.decode().splitlines() if ln.startswith("rejected: ")]
        expected = {f"rejected: line {n}: {LINE_KINDS[k][1]}: " for n, k in enumerate(kinds, start=1) if k != "good"}
        assert len(rejected) == len(expected) and {ln[: len(next(e for e in expected if ln.startswith(e)))] for ln in rejected} == expected
        job_ids = [ln.split("\t")[1] for ln in out.stdout.decode().splitlines()]
        assert len(job_ids) == kinds.count("good")
        client = PanelClient(fleet.redis_url)
        try:
            results = wait_all(client, job_ids, timeout=60)
        finally:
            client.close()
        assert [r.status for r in results.values()] == ["decided"] * len(job_ids)


# --- policy files
TASKS = yaml.safe_load((SHIPPED_POLICIES / "tasks.yaml").read_text())
MODELS = yaml.safe_load((SHIPPED_POLICIES / "models.yaml").read_text())


def paths(node: Any, loc: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Every key path into a parsed YAML document."""
    yield loc
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for k, v in items:
        yield from paths(v, loc + (k,))


TASK_PATHS = [p for p in paths(TASKS) if p]
MODEL_PATHS = [p for p in paths(MODELS) if p]
yaml_values = st.one_of(st.none(), st.booleans(), st.integers(-3, 10**6), st.floats(allow_nan=True, allow_infinity=True),
                        st.text(max_size=12), st.lists(st.integers(0, 3), max_size=2), st.dictionaries(st.text(max_size=4), st.integers(), max_size=1),
                        st.sampled_from(["yes", "no", "on", "1e-3", "0x10", "gpt-4o", "single", "panel", "exact"]))  # fmt: skip


def mutate(doc: Any, path: tuple[Any, ...], how: str, value: Any) -> Any:
    doc = copy.deepcopy(doc)
    parent = doc
    for k in path[:-1]:
        parent = parent[k]
    last = path[-1]
    if how == "set":
        parent[last] = value
    elif how == "delete":
        del parent[last]
    elif how == "rename" and isinstance(parent, dict):
        parent[f"{last}_"] = parent.pop(last)
    return doc


def reflects(data: Any, loaded: Any) -> bool:
    """True when `loaded` (a model's dump) holds exactly what the file said, with no coercion
    beyond an integer read as a float."""
    if isinstance(data, dict):
        return isinstance(loaded, dict) and all(k in loaded and reflects(v, loaded[k]) for k, v in data.items())
    if isinstance(data, list):
        return isinstance(loaded, (list, tuple)) and len(data) == len(loaded) and all(map(reflects, data, loaded))
    if type(data) is int and type(loaded) is float:
        return data == loaded
    return type(data) is type(loaded) and data == loaded


SHIPPED_REGISTRY = Registry.load(SHIPPED_POLICIES / "models.yaml")
DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


def load_mutated(tmp: Path, which: str, doc: Any) -> tuple[PolicyTable, Any]:
    """The table from the mutated file and the shipped other one; and the mutated file's model."""
    (tmp / f"{which}.yaml").write_text(yaml.dump(doc, Dumper=DUMPER, sort_keys=False, allow_unicode=True))
    if which == "models":
        table = PolicyTable.load(Registry.load(tmp / "models.yaml"), SHIPPED_POLICIES / "tasks.yaml")
        return table, table.registry
    table = PolicyTable.load(SHIPPED_REGISTRY, tmp / "tasks.yaml")
    return table, table.file


@props(40)
@given(st.sampled_from(["tasks", "models"]), st.data(), st.sampled_from(["set", "set", "delete", "rename"]), yaml_values)
def test_a_mutated_policy_file_loads_exactly_as_written_or_fails_naming_file_line_and_field(
    tmp_path: Path, which: str, data: st.DataObject, how: str, value: Any
) -> None:
    path = data.draw(st.sampled_from(TASK_PATHS if which == "tasks" else MODEL_PATHS))
    doc = mutate(TASKS if which == "tasks" else MODELS, path, how, value)
    try:
        _, loaded = load_mutated(tmp_path, which, doc)
    except PolicyError as e:
        assert_one_clear_line(e)
        # a model deleted or renamed in models.yaml is reported where the table still names it
        dangling = which == "models" and str(e).startswith(str(SHIPPED_POLICIES / "tasks.yaml")) and "is not in models.yaml" in str(e)
        assert dangling or str(e).startswith(str(tmp_path / f"{which}.yaml")), str(e)
        return
    assert reflects(doc, loaded.model_dump()), f"{which} {how} {path} = {value!r} loaded as something else"
    assert not (how == "set" and isinstance(value, float) and not math.isfinite(value)), f"{path} = {value} accepted"


def _bad_policy_dirs(root: Path) -> dict[str, tuple[Path, str]]:
    """name -> (policies dir, the `file:line: field` its worker must name)."""
    shipped_tasks = (SHIPPED_POLICIES / "tasks.yaml").read_text()
    shipped_models = (SHIPPED_POLICIES / "models.yaml").read_text()
    cases = {
        "quorum_is_yes": (shipped_tasks.replace("quorum: 2", "quorum: yes", 1), shipped_models, "tasks.yaml", "quorum"),
        "duplicate_class": (shipped_tasks + "\n  extraction:\n    default_lane: panel\n", shipped_models, "tasks.yaml", "task_classes.extraction"),
        "price_is_inf": (shipped_tasks, shipped_models.replace("input: 0.10,", "input: .inf,", 1), "models.yaml", "price.input"),
    }  # fmt: skip
    out = {}
    for name, (tasks, models, file, field) in cases.items():
        d = root / name
        d.mkdir()
        (d / "tasks.yaml").write_text(tasks)
        (d / "models.yaml").write_text(models)
        out[name] = (d, f"{d / file}:", field)
    return out  # type: ignore[return-value]


def test_a_worker_given_a_bad_policy_dir_exits_before_consuming_anything(tmp_path: Path, redis_url: str) -> None:
    r = redis.Redis.from_url(redis_url)
    r.flushdb()
    client = PanelClient(redis_url)
    job_id = client.submit({**GOOD, "prompt": f"{uid('wait')}: queued before any worker"})
    client.close()
    r.sadd(keys.task_classes(), "sentinel")  # a bad worker must not republish the classes
    cases = _bad_policy_dirs(tmp_path)
    procs = {
        name: subprocess.Popen([sys.executable, "-m", "celery", "-A", "workers.app", "worker", "-Q", "control",
                                "--pool", "threads", "--concurrency", "2", "--without-mingle", "--without-gossip",
                                "-n", f"{name}@%h", "--loglevel", "INFO"],
                               env=child_env({"PANEL_REDIS_URL": redis_url, "PANEL_POLICIES": str(d)}),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for name, (d, _, _) in cases.items()
    }  # fmt: skip
    for name, proc in procs.items():
        stdout, stderr = proc.communicate(timeout=120)
        _, where, field = cases[name]
        lines = [ln for ln in stderr.decode().splitlines() if ln.startswith("panel-fleet: cannot start: ")]
        assert proc.returncode == 2 and len(lines) == 1, (name, proc.returncode, stderr.decode()[-2000:])
        assert where in lines[0] and field in lines[0], (name, lines[0])
        assert b" ready." not in stdout + stderr, name
    assert r.llen("control") == 1 and r.hget(keys.job(job_id), "status") == b"queued"  # nothing consumed
    assert r.smembers(keys.task_classes()) == {b"sentinel"}
    r.close()
