"""One simulator subprocess per test module on a free loopback port, reset before every test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from sim.process import SimProcess

REGISTRY = Path(__file__).resolve().parents[2] / "policies" / "models.yaml"
OPENAI_AUTH = {"Authorization": "Bearer sim-test-key"}
ANTHROPIC_AUTH = {"x-api-key": "sim-test-key", "anthropic-version": "2023-06-01"}


@pytest.fixture(scope="module")
def sim() -> Iterator[SimProcess]:
    with SimProcess(args=["--models", str(REGISTRY), "--seed", "7"]) as proc:
        yield proc


@pytest.fixture
def http(sim: SimProcess) -> Iterator[httpx.Client]:
    sim.reset()
    with httpx.Client(timeout=10) as client:
        yield client


def chat(http: httpx.Client, sim: SimProcess, model: str, content: str, **extra: object) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": content}], **extra}
    return http.post(f"{sim.openai_base}/chat/completions", json=body, headers=OPENAI_AUTH)


def message(http: httpx.Client, sim: SimProcess, model: str, content: str, **extra: object) -> httpx.Response:
    body = {"model": model, "max_tokens": 64, "messages": [{"role": "user", "content": content}], **extra}
    return http.post(f"{sim.anthropic_base}/v1/messages", json=body, headers=ANTHROPIC_AUTH)
