"""`--keyless` (docker compose runs the simulator so): requests without a key are answered, on both
wires and the batch API; everything else is checked as before (Anthropic still needs its version
header). Without the flag a missing key stays a 401 (tests/sim/test_wire.py)."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from sim.process import SimProcess
from tests.sim.conftest import REGISTRY


@pytest.fixture(scope="module")
def keyless() -> Iterator[SimProcess]:
    with SimProcess(args=["--models", str(REGISTRY), "--keyless"]) as proc:
        yield proc


def test_keyless_sim_answers_requests_without_a_key(keyless: SimProcess) -> None:
    with httpx.Client(timeout=10) as http:
        body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "2+2?"}]}
        assert http.post(f"{keyless.openai_base}/chat/completions", json=body).status_code == 200
        msg = {"model": "claude-3-5-haiku", "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]}
        ok = http.post(f"{keyless.anthropic_base}/v1/messages", json=msg, headers={"anthropic-version": "2023-06-01"})
        assert ok.status_code == 200, ok.text
        assert http.post(f"{keyless.anthropic_base}/v1/messages", json=msg).status_code == 400  # version still checked
        assert http.get(f"{keyless.openai_base}/batches").status_code != 401
