"""A fleet whose policies opt classes into the answer cache, and a simulator that caches prompt
prefixes from 32 tokens (the real providers' 1024 would need pages of test text)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from producer.client import PanelClient
from producer.fleet import Fleet

SHIPPED = Path(__file__).resolve().parents[2] / "policies"
CACHE = {"ttl_s": 600}


def cache_policies(dest: Path) -> Path:
    """The shipped policies, plus: extraction cached, a cached panel class, and one single-model
    class per wire (no answer cache) for the prompt-cache receipts."""
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copy(SHIPPED / "models.yaml", dest / "models.yaml")
    tasks: dict[str, Any] = yaml.safe_load((SHIPPED / "tasks.yaml").read_text())
    classes = tasks["task_classes"]
    classes["extraction"]["cache"] = dict(CACHE)
    panel = {"members": ["gpt-4o-mini", "claude-3-5-haiku", "llama3.1-8b"], "quorum": 2, "dispatch": "parallel",
             "agreement": {"rule": "choice", "options": ["A", "B", "C", "D"]}, "arbiter": "gpt-4o"}  # fmt: skip
    classes["cached_panel"] = {"default_lane": "panel", "single": {"model": "gpt-4o-mini"}, "panel": panel,
                               "cache": dict(CACHE)}  # fmt: skip
    for name, model in (("claude_single", "claude-3-5-haiku"), ("openai_single", "gpt-4o-mini")):
        classes[name] = {"default_lane": "single", "single": {"model": model}, "panel": {**panel, "members": [model], "quorum": 1}}
    (dest / "tasks.yaml").write_text(yaml.safe_dump(tasks, sort_keys=False))
    return dest


@pytest.fixture(scope="module")
def policy_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return cache_policies(tmp_path_factory.mktemp("cache-policies"))


@pytest.fixture(scope="module")
def fleet(policy_dir: Path) -> Iterator[Fleet]:
    f = Fleet(sim_args=["--prompt-cache-min-tokens", "32"], env={"PANEL_POLICIES": str(policy_dir)})
    f.start()
    yield f
    f.stop()


@pytest.fixture
def client(fleet: Fleet) -> Iterator[PanelClient]:
    c = PanelClient(fleet.redis_url)
    fleet.sim("/_sim/reset", {})
    yield c
    c.close()
