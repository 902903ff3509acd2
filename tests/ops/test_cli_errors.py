"""The CLI's errors, as a user meets them: one line naming the fix, and the exit code `--help`
documents (0 done, 1 failed / not done / timed out, 2 bad input, 3 fleet unreachable). A real
redis-server with no worker attached: exactly the state that left jobs queued forever."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import redis

from producer import keys
from producer.contract import Result
from producer.embedded import free_port

REPO = Path(__file__).resolve().parents[2]


def panel(url: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "producer", "--redis-url", url, *args], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout)  # fmt: skip


def one_line(text: str) -> str:
    lines = text.strip().splitlines()
    assert len(lines) == 1, text
    return lines[0]


def test_help_documents_the_exit_codes_and_every_option_has_help() -> None:
    from producer.cli import build_parser

    p = build_parser()
    assert "3  the fleet is unreachable" in p.format_help()
    sub = next(a for a in p._actions if a.dest == "cmd")
    for name, sp in sub.choices.items():  # type: ignore[union-attr]
        for action in sp._actions:
            assert action.help, f"panel {name} {action.option_strings or action.dest}: no help text"


def test_redis_down_is_one_line_with_the_fix_and_exit_3() -> None:
    run = panel(f"redis://:secret-pw@127.0.0.1:{free_port()}/0", "status", "some-job")
    assert run.returncode == 3
    line = one_line(run.stderr)
    assert "cannot reach Redis" in line and "panel up" in line and "secret-pw" not in line


def test_unknown_class_is_checked_against_the_policy_files_before_any_worker_published(
    redis_url: str, redis_client: redis.Redis
) -> None:
    assert not redis_client.exists(keys.task_classes())
    run = panel(redis_url, "submit", "--task-class", "astrology", "--prompt", "x")
    assert run.returncode == 2
    line = one_line(run.stderr)
    assert "unknown task class 'astrology'" in line and "tasks.yaml" in line and "code_review" in line
    assert redis_client.dbsize() == 0  # nothing stored, nothing queued


def test_a_job_no_worker_will_take_fails_fast_with_exit_3(redis_url: str, redis_client: redis.Redis) -> None:
    sub = panel(redis_url, "submit", "--task-class", "code_review", "--prompt", "x")
    assert sub.returncode == 0 and "no worker has started" in sub.stderr
    job_id = sub.stdout.strip()
    t0 = time.monotonic()
    run = panel(redis_url, "wait", job_id, "--timeout", "120")
    assert run.returncode == 3
    assert "no worker answers" in one_line(run.stderr) and "panel up" in run.stderr
    assert time.monotonic() - t0 < 100  # not the whole --timeout (a generous bound; the check runs after ~3 s)


def test_wait_timeout_exits_1_as_its_help_says(redis_url: str, redis_client: redis.Redis) -> None:
    redis_client.hset(keys.job("j-running"), mapping={"status": "running"})
    run = panel(redis_url, "wait", "j-running", "--timeout", "1")
    assert run.returncode == 1
    assert "not done after 1s" in one_line(run.stderr)


def test_status_of_a_failed_job_prints_the_reason(redis_url: str, redis_client: redis.Redis) -> None:
    res = Result(job_id="j-failed", status="failed", error="no member answered (m0: HTTP 401 invalid key)")
    redis_client.hset(keys.job("j-failed"), mapping={"status": "failed", "result": res.model_dump_json()})
    run = panel(redis_url, "status", "j-failed")
    assert run.returncode == 1
    assert run.stdout.strip() == "failed: no member answered (m0: HTTP 401 invalid key)"


def test_wait_on_several_ids_prints_one_result_per_line(redis_url: str, redis_client: redis.Redis) -> None:
    for jid in ("a1", "a2"):
        res = Result(job_id=jid, status="decided", answer="ok")
        redis_client.hset(keys.job(jid), mapping={"status": "decided", "result": res.model_dump_json()})
    run = panel(redis_url, "wait", "a1", "a2")
    assert run.returncode == 0
    assert [Result.model_validate_json(x).job_id for x in run.stdout.splitlines()] == ["a1", "a2"]
