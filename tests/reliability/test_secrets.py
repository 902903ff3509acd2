"""Secrets and prompts stay where they belong, after a real run with canary provider keys.

One fleet (control worker at INFO, tier worker at DEBUG, so both levels are read) with a unique
canary key per provider runs a single-lane job, a panel reached through a provider error (a 401
on the single lane, a provider down among the members), and a batch-lane job through the
providers' batch APIs; Flower watches the run. Then every Redis key, every worker log line and
Flower's task API are scanned: the canary appears nowhere, and no prompt or answer appears in a
log record at INFO or above.

    python3 -m pytest -q tests/reliability/test_secrets.py
"""

from __future__ import annotations

import re
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import orjson
import pytest
import redis

from producer.client import PanelClient
from producer.contract import Result
from producer.embedded import child_env, free_port, stop_process, wait_port
from producer.fleet import Fleet, WorkerSpec
from tests.reliability._support import redis_values, uid, wait_all

pytestmark = pytest.mark.integration

TOKEN = secrets.token_hex(12)  # the part every canary key shares; unique to this run
KEYS = {"OPENAI_API_KEY": f"sk-canary-openai-{TOKEN}", "FIREWORKS_API_KEY": f"fw-canary-{TOKEN}",
        "ANTHROPIC_API_KEY": f"sk-ant-canary-{TOKEN}"}  # fmt: skip
FLOWER_AUTH = ("ops", secrets.token_hex(8))
RECORD = re.compile(r"^\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+: (\w+)/")  # Celery's log record prefix


@dataclass
class Run:
    fleet: Fleet
    results: list[Result]
    prompts: list[str]
    answers: list[str]
    flower_tasks: dict[str, object]


def _start_debug_worker(fleet: Fleet) -> None:
    """The tier worker at DEBUG (Fleet starts its workers at INFO): what an operator turning up
    logging to chase a bug would see."""
    name = "tiers-debug"
    args = [sys.executable, "-m", "celery", "-A", "workers.app", "worker", "-Q", "llm.economy,llm.workhorse,llm.frontier,llm.batch",
            "-n", f"{name}@%h", "--pool", "threads", "--concurrency", "32", "--without-mingle", "--without-gossip", "-E",
            "--loglevel", "DEBUG"]  # fmt: skip
    log = open(fleet.log_dir / f"worker-{name}.log", "ab")
    fleet.procs[name] = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=fleet.worker_env())
    fleet.wait_ready()


def _start_flower(fleet: Fleet) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    args = [sys.executable, "-m", "celery", "-A", "workers.app", "flower", "--address=127.0.0.1", f"--port={port}",
            f"--basic-auth={FLOWER_AUTH[0]}:{FLOWER_AUTH[1]}"]  # fmt: skip
    # like deploy/: Flower gets the broker, never a provider key
    log = open(fleet.log_dir / "flower.log", "ab")
    proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=child_env({"PANEL_REDIS_URL": fleet.redis_url}))
    wait_port("127.0.0.1", port, timeout=60, proc=proc)
    url = f"http://127.0.0.1:{port}"
    # Flower keeps only the events it hears: start the run once it has heard a worker's heartbeat
    end = time.monotonic() + 60
    while 'flower_worker_online{worker="control@' not in httpx.get(f"{url}/metrics", timeout=10).text:
        assert time.monotonic() < end and proc.poll() is None, "Flower heard no worker heartbeat in 60 s"
        time.sleep(0.5)
    return proc, url


def _jobs(fleet: Fleet) -> tuple[list[dict[str, object]], list[str]]:
    """The jobs of the run and the answers the simulator will give (each carries a marker)."""
    answers = {m: f"answer-{m}-{uid('said')}" for m in ("llama3.1-8b", "gpt-4o-mini", "claude-3-5-haiku", "qwen2.5-32b-coder-instruct")}
    knobs: dict[str, dict[str, object]] = {m: {"answer": a} for m, a in answers.items()}
    answers["llama3.1-8b"] = orjson.dumps({"total": 17.5, "note": answers["llama3.1-8b"]}).decode()
    knobs["llama3.1-8b"] = {"answer": answers["llama3.1-8b"]}
    knobs["qwen2.5-32b-coder-instruct"]["fail_next"] = 1  # the single lane's call fails...
    knobs["qwen2.5-32b-coder-instruct"]["fail_status"] = 401  # ...as a rejected key would
    knobs["llama3.1-70b"] = {"down": True}  # and one panel member's provider is down
    fleet.sim("/_sim/config", {"default": {"batch_delay_s": 0.6}, "models": knobs})
    jobs: list[dict[str, object]] = [
        {"task_class": "extraction", "prompt": f"{uid('prompt')}: invoice 42, total?",
         "response_schema": {"type": "object", "properties": {"total": {"type": "number"}}}},
        {"task_class": "code_review", "prompt": f"{uid('prompt')}: -teh\n+the"},
        {"task_class": "product_copy", "mode": "batch", "lane": "panel", "prompt": f"{uid('prompt')}: a headline"},
    ]  # fmt: skip
    return jobs, list(answers.values())


@pytest.fixture(scope="module")
def run() -> Iterator[Run]:
    env = {**KEYS, "PANEL_BATCH_TICK_S": "0.3", "PANEL_BATCH_MAX_AGE_S": "0.5"}
    fleet = Fleet(workers=[WorkerSpec("control", "control", concurrency=16)], env=env)
    fleet.start()
    flower = None
    try:
        _start_debug_worker(fleet)
        flower, flower_url = _start_flower(fleet)
        client = PanelClient(fleet.redis_url)
        jobs, answers = _jobs(fleet)
        results = list(wait_all(client, [client.submit(j) for j in jobs], timeout=90).values())
        client.close()
        tasks = httpx.get(f"{flower_url}/api/tasks", auth=FLOWER_AUTH, timeout=30)
        tasks.raise_for_status()
        yield Run(fleet, results, [str(j["prompt"]) for j in jobs], answers, tasks.json())
    finally:
        if flower is not None:
            stop_process(flower, timeout=10)
        fleet.stop()


def _records(log: Path) -> Iterator[tuple[str, str]]:
    """(level, text) of each log record; a traceback's lines belong to the record above them."""
    level, lines = "PRINT", []  # output before the first record (banner, warnings) counts as printed
    for line in log.read_text(errors="replace").splitlines():
        m = RECORD.match(line)
        if m:
            if lines:
                yield level, "\n".join(lines)
            level, lines = m.group(1), []
        lines.append(line)
    if lines:
        yield level, "\n".join(lines)


def test_the_run_took_every_path_it_means_to_check(run: Run) -> None:
    """Guards the scans below: a run that skipped the error path or the batch lane proves little."""
    single, escalated, batch = run.results
    assert [r.status for r in run.results] == ["decided"] * 3, run.results
    assert single.receipt and [s.lane for s in single.receipt.lanes] == ["single"]
    assert escalated.receipt and [s.lane for s in escalated.receipt.lanes] == ["single", "panel"]
    errors = [c.error or "" for c in escalated.receipt.calls if c.status == "failed"]
    assert any("HTTP 401" in e for e in errors) and any("HTTP 503" in e or "circuit open" in e for e in errors), errors
    assert batch.receipt and [s.lane for s in batch.receipt.lanes] == ["batch"]
    assert any(c.batch and c.status == "answered" for c in batch.receipt.calls)
    assert run.flower_tasks, "Flower saw no task: its scan below would prove nothing"


def test_no_canary_key_in_any_redis_key_result_receipt_or_ledger_entry(run: Run) -> None:
    r = redis.Redis.from_url(run.fleet.redis_url)
    scanned = 0
    for key, value in redis_values(r):
        scanned += 1
        assert TOKEN.encode() not in key + value, f"canary key in redis key {key!r}"
    r.close()
    assert scanned > 20  # jobs, panels, calls, votes, ledger, limiter and breaker state at least
    for res in run.results:
        assert TOKEN not in res.model_dump_json()


def test_no_canary_key_in_any_worker_log_at_any_level(run: Run) -> None:
    logs = sorted(run.fleet.log_dir.glob("worker-*.log"))
    assert {p.name for p in logs} >= {"worker-control.log", "worker-tiers-debug.log"}
    debug = (run.fleet.log_dir / "worker-tiers-debug.log").read_text(errors="replace")
    assert "DEBUG/" in debug and "panel.member" in debug  # the DEBUG worker did run the members
    for log in [*logs, run.fleet.log_dir / "flower.log"]:
        assert TOKEN not in log.read_text(errors="replace"), f"canary key in {log}"


def test_no_prompt_or_answer_in_a_log_record_at_info_or_above(run: Run) -> None:
    secrets_of_users = run.prompts + run.answers
    for log in sorted(run.fleet.log_dir.glob("worker-*.log")):
        for level, text in _records(log):
            if level == "DEBUG":
                continue
            for s in secrets_of_users:
                assert s not in text, f"{log.name}: a {level} record prints a prompt or answer: {text[:300]}"


def test_flower_shows_task_ids_not_prompts_answers_or_keys(run: Run) -> None:
    shown = orjson.dumps(run.flower_tasks).decode()
    assert TOKEN not in shown
    for s in run.prompts + run.answers:
        assert s not in shown, f"Flower's task API shows {s[:60]!r}"
    names = {t.get("name") for t in run.flower_tasks.values() if isinstance(t, dict)}
    assert {"panel.run", "panel.member"} <= names, names
