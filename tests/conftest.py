"""Shared fixtures: a real redis-server on 127.0.0.1 for the session, and where shared/ lives."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from producer.embedded import RedisProcess

# ../shared beside the repo; PANEL_REPLAY_DIR points elsewhere (a git worktree sits deeper)
REPLAY_DIR = Path(os.environ.get("PANEL_REPLAY_DIR") or Path(__file__).resolve().parents[2] / "shared" / "data" / "replay")


@pytest.fixture(scope="session")
def redis_proc() -> Iterator[RedisProcess]:
    proc = RedisProcess().start()
    yield proc
    proc.stop()


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
        pytest.skip(f"replay data not found at {REPLAY_DIR} (../shared is absent in a user's clone)")
    return REPLAY_DIR
