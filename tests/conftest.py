"""Shared fixtures: a real redis-server on 127.0.0.1 for the session, and where shared/ lives."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from producer.embedded import RedisProcess

# ../shared beside the checkout; PANEL_SHARED_DIR (or PANEL_REPLAY_DIR for the replay data alone) points
# elsewhere: a git worktree's parent is not the clone's
SHARED_DIR = Path(os.environ.get("PANEL_SHARED_DIR") or Path(__file__).resolve().parents[2] / "shared")
REPLAY_DIR = Path(os.environ.get("PANEL_REPLAY_DIR") or SHARED_DIR / "data" / "replay")


@pytest.fixture(scope="session")
def redis_proc() -> Iterator[RedisProcess]:
    proc = RedisProcess().start()
    yield proc
    proc.close()


@pytest.fixture(scope="session")
def redis_url(redis_proc: RedisProcess) -> str:
    return redis_proc.url


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    """A client on a clean database (flushed before each test)."""
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    yield client
    client.close()


@pytest.fixture(scope="session")
def replay_dir() -> Path:
    if not (REPLAY_DIR / "mmlu_train.jsonl").exists():
        pytest.skip(f"replay data not found at {REPLAY_DIR} (../shared is absent in a user's clone; "
                    "PANEL_REPLAY_DIR names another folder)")
    return REPLAY_DIR
