"""The simulator as a subprocess on a free loopback port, for tests and the demo:

    with SimProcess(args=["--replay", "mmlu_train.jsonl"]) as sim:
        httpx.post(f"{sim.openai_base}/chat/completions", ...); sim.stats()["totals"]["requests"]
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from typing import Any

import httpx

from producer.embedded import child_env, free_port, stop_process, wait_port


class SimProcess:
    def __init__(self, port: int | None = None, args: list[str] | None = None, host: str = "127.0.0.1") -> None:
        self.host, self.port, self.args = host, port or free_port(), list(args or [])
        self.proc: subprocess.Popen[bytes] | None = None
        # A file, not a pipe: nobody drains a pipe, and a full one would stall the server.
        self.log = tempfile.TemporaryFile()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def openai_base(self) -> str:
        return f"{self.url}/v1"

    @property
    def anthropic_base(self) -> str:
        return self.url

    def start(self, timeout: float = 20.0) -> SimProcess:
        cmd = [sys.executable, "-m", "sim", "--host", self.host, "--port", str(self.port), *self.args]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=self.log, env=child_env())
        try:
            wait_port(self.host, self.port, timeout=timeout, proc=self.proc)
            end = time.monotonic() + timeout
            while True:  # the port may accept before the app is ready to answer
                try:
                    if httpx.get(f"{self.url}/_sim/health", timeout=1).status_code == 200:
                        return self
                except httpx.TransportError:
                    pass
                if time.monotonic() > end:
                    raise TimeoutError(f"simulator on {self.url} not healthy after {timeout}s")
                time.sleep(0.05)
        except Exception as e:
            err = self._stderr()
            self.stop()
            raise RuntimeError(f"simulator failed to start: {e}; stderr: {err}") from e

    def _stderr(self) -> str:
        self.log.seek(0)
        return self.log.read().decode(errors="replace")[-2000:]

    def _admin(self, path: str, payload: dict[str, Any] | None = None) -> dict[str, Any]:
        url = f"{self.url}/_sim/{path}"
        resp = httpx.post(url, json=payload, timeout=10) if payload is not None else httpx.get(url, timeout=10)
        resp.raise_for_status()
        body: dict[str, Any] = resp.json()
        return body

    def stats(self) -> dict[str, Any]:
        return self._admin("stats")

    def requests(self, model: str | None = None) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = self._admin("requests" + (f"?model={model}" if model else ""))["requests"]
        return rows

    def configure(self, config: dict[str, Any]) -> dict[str, Any]:
        return self._admin("config", config)

    def reset(self) -> None:
        self._admin("reset", {})

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, timeout=5)
            self.proc = None

    def __enter__(self) -> SimProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
