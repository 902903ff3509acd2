"""A real fleet for integration tests: its own redis-server, the simulator, real Celery worker
processes (threads pool), all on 127.0.0.1. One fleet per test module keeps the suite fast."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from producer.client import PanelClient
from producer.fleet import Fleet


@pytest.fixture(scope="module")
def fleet() -> Iterator[Fleet]:
    f = Fleet()
    f.start()
    yield f
    f.stop()


@pytest.fixture
def client(fleet: Fleet) -> Iterator[PanelClient]:
    c = PanelClient(fleet.redis_url)
    fleet.sim("/_sim/reset", {})
    yield c
    c.close()
