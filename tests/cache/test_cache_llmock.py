"""Receipts on llmock (a third party's provider emulator), one job per wire through a real fleet.

What llmock 0.2.2 supports: it accepts Anthropic's `system` as content blocks with
`cache_control` (the request is recorded as sent). What it lacks: it reports no cache usage on
either wire (no `prompt_tokens_details.cached_tokens`, no `cache_read_input_tokens` or
`cache_creation_input_tokens`), so every token is priced at the uncached input rate, which these
receipts must match by hand. The cached rates are tested on the simulator (test_cache_fleet.py).
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from producer.client import PanelClient
from producer.fleet import ALL_QUEUES, Fleet, WorkerSpec
from tests.providers.conftest import llmock_process

SHIPPED = Path(__file__).resolve().parents[2] / "policies"
SYSTEM = "You are a careful classifier. Say only the label. " * 4


@pytest.fixture(scope="module")
def llmock_origin() -> Iterator[str]:
    with llmock_process("--response-style", "static") as server:
        yield server.origin


@pytest.fixture(scope="module")
def fleet(llmock_origin: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    policies = tmp_path_factory.mktemp("llmock-cache-policies")
    shutil.copy(SHIPPED / "models.yaml", policies / "models.yaml")
    tasks = {"task_classes": {
        name: {"default_lane": "single", "single": {"model": model},
               "panel": {"members": [model], "quorum": 1, "agreement": {"rule": "exact"}, "arbiter": model}}
        for name, model in (("claude_single", "claude-3-5-haiku"), ("openai_single", "gpt-4o-mini"))}}  # fmt: skip
    (policies / "tasks.yaml").write_text(yaml.safe_dump(tasks))
    env = {"PANEL_POLICIES": str(policies), "OPENAI_BASE_URL": f"{llmock_origin}/v1", "OPENAI_API_KEY": "sk-llmock",
           "ANTHROPIC_BASE_URL": f"{llmock_origin}/anthropic", "ANTHROPIC_API_KEY": "sk-ant-llmock"}  # fmt: skip
    f = Fleet(workers=[WorkerSpec("all", ALL_QUEUES, concurrency=8)], env=env)
    f.start()
    yield f
    f.stop()


def test_receipts_on_llmock_price_its_usage_by_hand_and_anthropic_gets_the_marked_prefix(
    fleet: Fleet, llmock_origin: str
) -> None:
    client = PanelClient(fleet.redis_url)
    hand = {"claude_single": (0.80, 4.00), "openai_single": (0.15, 0.60)}  # policies/models.yaml, USD per 1M
    try:
        for task_class, (p_in, p_out) in hand.items():
            job = {"task_class": task_class, "messages": [{"role": "system", "content": SYSTEM},
                                                          {"role": "user", "content": f"[{uuid.uuid4().hex[:6]}] a red apple"}]}  # fmt: skip
            res = client.wait(client.submit(job), 60)
            assert res.status == "decided" and res.receipt is not None, res.error
            [call] = res.receipt.calls
            assert call.tokens_in > 0 and call.tokens_cached == call.tokens_cache_write == 0  # llmock reports none
            assert call.cost_usd == pytest.approx((call.tokens_in * p_in + call.tokens_out * p_out) / 1e6, rel=1e-9)
            assert call.cache_saved_usd == 0
    finally:
        client.close()
    sent = httpx.get(f"{llmock_origin}/_llmock/requests", timeout=10).json()["requests"]
    anthropic = [r for r in sent if r["path"].endswith("/v1/messages")]
    assert anthropic and anthropic[-1]["body"]["system"] == [
        {"type": "text", "text": SYSTEM, "cache_control": {"type": "ephemeral"}}
    ]
    openai = [r for r in sent if r["path"].endswith("/chat/completions")]
    assert openai and openai[-1]["body"]["messages"][0] == {
        "role": "system",
        "content": SYSTEM,
    }  # first, byte-identical
