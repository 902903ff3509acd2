"""A fleet whose policies opt classes into the answer cache, and a simulator that caches prompt
prefixes from 32 tokens (the real providers' 1024 would need pages of test text)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.cache import cache_policies
from producer.client import PanelClient
from producer.fleet import Fleet


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
