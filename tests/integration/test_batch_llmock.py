"""The batch lane against a third party's batch endpoints: the same fleet (redis-server, real
Celery workers) with OpenAI and Anthropic pointed at `llmock`, whose Files/Batches and Message
Batches finish in ~3 s and answer "Mock response from <model>." for every prompt.

So members of different models disagree and members of one model agree, which drives a staged
panel through every step: stage 1 (one OpenAI and one Anthropic batch) disagrees, stage 2 settles
it; or nothing agrees and the arbiter goes by batch, twice (llmock's reply is no JSON verdict),
then the flagged majority decides.
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
from workers.registry import Registry

SHIPPED = Path(__file__).resolve().parents[2] / "policies"
REG = Registry.load()


def panel(members: list[str]) -> dict[str, object]:
    return {"default_lane": "panel", "mode": "batch", "single": {"model": members[0]},
            "panel": {"members": members, "quorum": 2, "dispatch": "staged", "agreement": {"rule": "exact"},
                      "arbiter": "gpt-4o"}}  # fmt: skip


@pytest.fixture(scope="module")
def llmock_origin() -> Iterator[str]:
    with llmock_process("--response-style", "static") as server:
        yield server.origin


@pytest.fixture(scope="module")
def fleet(llmock_origin: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    policies = tmp_path_factory.mktemp("llmock-policies")
    shutil.copy(SHIPPED / "models.yaml", policies / "models.yaml")
    tasks = {"task_classes": {"llmock_staged": panel(["gpt-4o-mini", "claude-3-5-haiku", "gpt-4o-mini"]),
                              "llmock_arbiter": panel(["gpt-4o-mini", "claude-3-5-haiku", "gpt-4o"])}}  # fmt: skip
    (policies / "tasks.yaml").write_text(yaml.safe_dump(tasks))
    env = {"PANEL_POLICIES": str(policies), "OPENAI_BASE_URL": f"{llmock_origin}/v1", "OPENAI_API_KEY": "sk-llmock",
           "ANTHROPIC_BASE_URL": f"{llmock_origin}/anthropic", "ANTHROPIC_API_KEY": "sk-ant-llmock",
           "PANEL_BATCH_TICK_S": "0.3", "PANEL_BATCH_MAX_AGE_S": "0.3"}  # fmt: skip
    # one worker for every queue (it flushes and polls too): the lane needs no more to run end to end
    f = Fleet(workers=[WorkerSpec("all", ALL_QUEUES, concurrency=32)], env=env)
    f.start()
    yield f
    f.stop()


def test_staged_panels_decide_through_llmocks_openai_and_anthropic_batches(fleet: Fleet, llmock_origin: str) -> None:
    client = PanelClient(fleet.redis_url)
    try:
        staged = client.submit({"task_class": "llmock_staged", "prompt": f"{uuid.uuid4().hex}: a headline"})
        arbitrated = client.submit({"task_class": "llmock_arbiter", "prompt": f"{uuid.uuid4().hex}: a headline"})
        res = client.wait(staged, timeout=60)
        arb = client.wait(arbitrated, timeout=60)
    finally:
        client.close()

    assert res.status == "decided" and res.answer == "Mock response from gpt-4o-mini.", res
    r = res.receipt
    assert r is not None and [s.lane for s in r.lanes] == ["batch"] and r.decision == "quorum"
    by = {c.member: c for c in r.calls}
    assert [by[m].status for m in ("1.m0", "1.m1", "1.m2")] == ["answered"] * 3  # m2 sent only on disagreement
    assert by["1.m0"].answer_key == by["1.m2"].answer_key != by["1.m1"].answer_key
    for c in r.calls:
        assert c.batch and c.cost_usd == pytest.approx(REG.cost(c.model, c.tokens_in, c.tokens_out, batch=True))

    assert arb.status == "decided" and arb.receipt is not None and arb.receipt.decision == "majority"
    arbiter = next(c for c in arb.receipt.calls if c.role == "arbiter")
    assert arbiter.status == "answered" and arbiter.batch and arbiter.model == "gpt-4o"
    assert arbiter.error == "verdict was not valid JSON of the verdict's shape"

    seen = httpx.get(f"{llmock_origin}/_llmock/requests", timeout=10).json()["requests"]
    paths = [q["path"] for q in seen]
    assert "/v1/files" in paths and "/v1/batches" in paths and "/anthropic/v1/messages/batches" in paths
    realtime = [p for p in paths if p.endswith("/chat/completions") or p.endswith("/v1/messages")]
    assert realtime == [], f"batch jobs made real-time calls: {realtime}"
    # staged: one more member per stage, the arbiter after them and once more on its bad verdict
    creates = sum(p in ("/v1/batches", "/anthropic/v1/messages/batches") for p in paths)
    assert creates >= 5
