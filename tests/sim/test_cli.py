"""The CLI prints one ready line, refuses a bad config in one line, and reads YAML knobs at start."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx

from producer.embedded import free_port, stop_process
from sim.process import SimProcess
from tests.sim.conftest import OPENAI_AUTH


def test_cli_prints_the_ready_line_once_listening() -> None:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "sim", "--port", str(port)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().decode() == f"sim listening on http://127.0.0.1:{port}\n"
        assert httpx.get(f"http://127.0.0.1:{port}/_sim/health").json()["ok"] is True
    finally:
        stop_process(proc)


def test_cli_rejects_an_unknown_knob_in_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "knobs.yaml"
    bad.write_text("models:\n  gpt-4o: {latncy_ms: 5}\n")
    out = subprocess.run([sys.executable, "-m", "sim", "--port", str(free_port()), "--config", str(bad)],
                         capture_output=True, timeout=20)  # fmt: skip
    assert out.returncode == 2
    (line,) = out.stderr.decode().splitlines()
    assert "latncy_ms" in line and "models.gpt-4o" in line


def test_start_config_and_latency_flag_apply_and_reset_restores_them(tmp_path: Path) -> None:
    config = tmp_path / "knobs.yaml"
    config.write_text("default: {answer: 'B'}\nmodels:\n  gpt-4o: {answer: 'C', fail_next: 1}\n")
    with SimProcess(args=["--config", str(config), "--latency-ms", "50"]) as sim, httpx.Client() as http:
        def ask(model: str) -> httpx.Response:
            return http.post(f"{sim.openai_base}/chat/completions", headers=OPENAI_AUTH,
                             json={"model": model, "messages": [{"role": "user", "content": "q"}]})  # fmt: skip

        assert ask("gpt-4o").status_code == 503  # fail_next from the file
        assert ask("gpt-4o").json()["choices"][0]["message"]["content"] == "C"
        assert ask("other").json()["choices"][0]["message"]["content"] == "B"
        sim.configure({"models": {"gpt-4o": {"answer": "D"}}})
        assert ask("gpt-4o").json()["choices"][0]["message"]["content"] == "D"
        sim.reset()
        assert ask("gpt-4o").status_code == 503 and sim.stats()["totals"]["requests"] == 1
        assert "x-request-id" in ask("gpt-4o").headers
        (first, second) = sim.requests("gpt-4o")
        assert second["ended"] - second["started"] >= 0.05  # --latency-ms
