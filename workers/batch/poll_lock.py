"""The poll lock of one open batch: one poller follows a batch at a time. Each take holds a token
of its own (redis-py's Lock: SET NX PX, released by a compare-and-delete script on the one key).

    lock = PollLock.take(r, batch_id, lock_s)   # None: another poller follows this batch now
    try:
        with lock.kept(): results = download()  # re-armed from a thread while one long step runs
        for line in lines: lock.keep(); ...     # re-armed while the poll goes on
    finally: lock.release()                     # False: it expired under this poll

The lock bounds how long a killed poller holds its batch up. A poll longer than the lock keeps it:
by `kept` through a provider call (a results file may take the batch clients' 300 s transfer
timeout, five times the default lock), by `keep` between lines. One that outlives it anyway (the
process stalled longer than the lock) can neither free nor re-arm the lock another poller has
taken since, so no third poller gets in, and `keep` tells it to stop. Two pollers at once stay
possible for that moment, which is why landing a line is safe to repeat (Line.first_landing).
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import redis
from redis.exceptions import LockNotOwnedError
from redis.lock import Lock

from producer import keys

# `kept` re-arms the lock through one step for at most this long: twice the slowest provider call the
# batch clients allow (a 300 s results download, workers/providers/openai_batch.py)
KEPT_UP_TO_S = 600.0


@dataclass
class PollLock:
    lock: Lock
    lock_s: float
    armed_at: float  # time.monotonic() just before the lock was last set to a full lock_s

    @classmethod
    def take(cls, r: redis.Redis, batch_id: str, lock_s: float) -> PollLock | None:
        lock = r.lock(keys.batch_poll_lock(batch_id), timeout=lock_s, thread_local=False)
        armed_at = time.monotonic()
        if not lock.acquire(blocking=False, token=uuid.uuid4().hex):
            return None
        return cls(lock, lock_s, armed_at)

    def keep(self) -> None:
        """Re-arm the lock to a full `lock_s` once a third of it has gone (one round trip then,
        none before). Raises LockNotOwnedError when it was lost meanwhile: stop, the poller that
        holds it now follows the batch."""
        now = time.monotonic()
        if now - self.armed_at < self.lock_s / 3:
            return
        self.lock.reacquire()
        self.armed_at = now

    @contextmanager
    def kept(self, up_to_s: float = KEPT_UP_TO_S) -> Iterator[None]:
        """Re-arm the lock from a thread of its own every third of `lock_s` while the caller blocks
        on one step (a provider's status, a results download): a live poller keeps its batch however
        slow the provider, and a stopped process stops re-arming too, so the lock still lapses. So
        does a step still running after `up_to_s` (a wedged event loop, whose HTTP timeouts never fire)."""
        done = threading.Event()
        end = time.monotonic() + up_to_s

        def rearm() -> None:
            while not done.wait(self.lock_s / 3) and time.monotonic() < end:
                try:
                    self.keep()
                except Exception:  # lost, or Redis unreachable: the caller's next `keep` finds out
                    return

        keeper = threading.Thread(target=rearm, name="panel-poll-lock", daemon=True)
        keeper.start()
        try:
            yield
        finally:
            done.set()
            keeper.join()

    def release(self) -> bool:
        """Let the lock go if it is still this take's; False when it expired under the poll (and
        may be another poller's now, which it is left to)."""
        try:
            self.lock.release()
        except LockNotOwnedError:
            return False
        return True
