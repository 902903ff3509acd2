"""`panel up` as a newcomer uses it: start it, wait for its ready line, run the README's "Using it"
commands as written (with `panel` on PATH), Ctrl-C (SIGINT), and then no process it started is
alive and no temp dir is left. Also the temp-dir hygiene of RedisProcess and Fleet on their own.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import orjson
import pytest

from producer.embedded import RedisProcess, free_port, wait_port
from producer.fleet import Fleet, WorkerSpec

REPO = Path(__file__).resolve().parents[2]


def readme_commands() -> list[str]:
    """The shell block of README "Using it" that runs in the second shell (after `panel up`)."""
    text = (REPO / "README.md").read_text()
    section = text[text.index("## Using it"):]
    blocks = re.findall(r"```bash\n(.*?)```", section, re.S)
    (block,) = [b for b in blocks if "export PANEL_REDIS_URL" in b][:1]
    return [line.split("  #")[0].strip() for line in block.splitlines() if line.strip()]


def descendants(pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                stat = Path(f"/proc/{d}/stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(d))
    out, todo = set(), [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.add(c)
            todo.append(c)
    return out


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.fixture
def panel_bin(tmp_path: Path) -> Path:
    """`panel` as README users have it, running this checkout (an editable install may point elsewhere)."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    script = bindir / "panel"
    script.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m producer "$@"\n')
    script.chmod(0o755)
    return bindir


def test_panel_up_runs_the_readme_commands_and_ctrl_c_leaves_nothing(tmp_path: Path, panel_bin: Path) -> None:
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY") and k != "PANEL_REDIS_URL"}
    env |= {"TMPDIR": str(tmpdir), "PYTHONPATH": str(REPO), "PATH": f"{panel_bin}:{env['PATH']}"}
    up = subprocess.Popen([sys.executable, "-m", "producer", "up", "--redis-port", str(free_port()), "--workers", "1",
                           "--concurrency", "16"], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)  # fmt: skip
    out: list[str] = []
    try:
        assert up.stdout is not None
        url = None
        end = time.monotonic() + 180
        while url is None:
            line = up.stdout.readline().decode()
            assert line or up.poll() is None, "panel up exited:\n" + "".join(out)
            assert time.monotonic() < end, "panel up not ready:\n" + "".join(out)
            out.append(line)
            m = re.search(r"export PANEL_REDIS_URL=(\S+)", line)
            url = m.group(1) if m else None
        started = descendants(up.pid)
        assert len(started) >= 4, started  # redis-server, simulator, control, a tier worker
        workdir = tmp_path / "work"
        workdir.mkdir()
        (workdir / "examples").symlink_to(REPO / "examples")
        subprocess.run(["git", "init", "-q"], cwd=workdir, check=True)
        (workdir / "a.py").write_text("print('hi')\n")
        subprocess.run(["git", "-c", "user.email=t@t", "-c", "user.name=t", "add", "."], cwd=workdir, check=True)
        subprocess.run(["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "x"], cwd=workdir, check=True)
        job_id = ""
        for cmd in readme_commands():
            if cmd.startswith("export PANEL_REDIS_URL="):
                env["PANEL_REDIS_URL"] = url  # `panel up` said which (6379 was not free or not chosen here)
                continue
            shell = cmd.replace("JOB_ID", job_id)
            run = subprocess.run(["bash", "-c", shell], cwd=workdir, env=env, capture_output=True,
                                 timeout=360)  # fmt: skip
            assert run.returncode == 0, f"{cmd!r} -> {run.returncode}\n{run.stderr.decode()}"
            if "panel submit --task-class" in cmd:
                job_id = run.stdout.decode().strip()
                assert re.fullmatch(r"[0-9a-f]{32}", job_id), run.stdout
            if cmd.startswith("panel status JOB_ID"):
                assert run.stdout.decode().strip() == "decided"
            if cmd.startswith("panel submit-many"):  # examples/jobs.jsonl holds two bad lines on purpose
                submitted = int(re.search(r"submitted (\d+), rejected 2 ", run.stderr.decode()).group(1))  # type: ignore[union-attr]
                results = [orjson.loads(x) for x in (workdir / "results.jsonl").read_bytes().splitlines()]
                assert len(results) == submitted and all(r["status"] == "decided" for r in results), results
        assert "<svg" in (workdir / "ledger.html").read_text()
        port = free_port()
        serve = subprocess.Popen([sys.executable, "-m", "producer", "ledger", "--serve", str(port)], cwd=REPO, env=env,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        try:
            wait_port("127.0.0.1", port, timeout=60, proc=serve)
            page = httpx.get(f"http://127.0.0.1:{port}/", timeout=30)
            one = httpx.get(f"http://127.0.0.1:{port}/receipts/{job_id}", timeout=30)
            assert page.status_code == 200 and f'id="job-{job_id}"' in page.text
            assert one.status_code == 200 and one.text.count('class="receipt"') == 1
            assert httpx.get(f"http://127.0.0.1:{port}/receipts/nope", timeout=30).status_code == 404
        finally:
            serve.terminate()
            serve.wait(30)
        up.send_signal(signal.SIGINT)
        rest, _ = up.communicate(timeout=120)
        out.append(rest.decode())
        assert up.returncode == 0, "".join(out)
        end = time.monotonic() + 30
        while [p for p in started if alive(p)] and time.monotonic() < end:
            time.sleep(0.2)
        assert not [p for p in started if alive(p)], "processes left by panel up"
        assert list(tmpdir.iterdir()) == [], f"temp dirs left: {list(tmpdir.iterdir())}"
    finally:
        if up.poll() is None:
            up.kill()
            up.wait()


def test_redis_and_fleet_remove_their_temp_dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """They used to leave ~50 dirs (AOF files up to 30 MB) per test run under the temp dir."""
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    redis = RedisProcess().start()
    redis.restart()  # stop() alone keeps the AOF for the restart
    assert redis.workdir.exists()
    fleet = Fleet(workers=[WorkerSpec("tiers", "control,llm.economy,llm.workhorse,llm.frontier,llm.batch", 8)])
    fleet.start(redis=redis)
    assert {p.name.split("-")[1] for p in tmp_path.iterdir()} == {"redis", "fleet"}
    fleet.stop()
    assert list(tmp_path.iterdir()) == []
