"""One llmock server (the third-party provider emulator) per test session on a free loopback
port, reset before every test that uses it; async tests run on asyncio through anyio's plugin."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from producer.embedded import free_port, stop_process, wait_port


@dataclass(frozen=True)
class Llmock:
    origin: str

    @property
    def openai_base(self) -> str:
        return f"{self.origin}/v1"

    @property
    def anthropic_base(self) -> str:
        return f"{self.origin}/anthropic"

    def script(self, *behaviors: dict[str, Any]) -> None:
        """Queue faults, e.g. {"type": "fail", "status": 429, "retry_after": 0.4, "times": 2}."""
        httpx.post(f"{self.origin}/_llmock/scenario", json={"behaviors": list(behaviors)}).raise_for_status()

    def verdict(self) -> dict[str, Any]:
        response = httpx.get(f"{self.origin}/_llmock/verdict", timeout=10)
        response.raise_for_status()
        body: dict[str, Any] = response.json()
        return body

    def requests(self) -> list[dict[str, Any]]:
        response = httpx.get(f"{self.origin}/_llmock/requests", timeout=10)
        response.raise_for_status()
        records: list[dict[str, Any]] = response.json()["requests"]
        return records

    def reset(self) -> None:
        httpx.post(f"{self.origin}/_llmock/reset").raise_for_status()


@contextmanager
def llmock_process(*extra_args: str) -> Iterator[Llmock]:
    """llmock on a free loopback port for the block's duration (skips the test where it is absent)."""
    exe = shutil.which("llmock")
    if exe is None:
        pytest.skip("llmock is not installed (pip install 'llmock>=0.2.2', in the dev extras)")
    port = free_port()
    args = [exe, "serve", "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning", *extra_args]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    try:
        wait_port("127.0.0.1", port, timeout=30, proc=proc)
        yield Llmock(f"http://127.0.0.1:{port}")
    finally:
        stop_process(proc, timeout=5)


@pytest.fixture(scope="session")
def llmock_server() -> Iterator[Llmock]:
    with llmock_process() as server:
        yield server


@pytest.fixture
def llmock(llmock_server: Llmock) -> Llmock:
    llmock_server.reset()
    return llmock_server


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
