"""The poll lock of one open batch: one poller follows a batch at a time. Each take holds a token
of its own (redis-py's Lock: SET NX PX, released by a compare-and-delete script on the one key).

    lock = PollLock.take(r, batch_id, lock_s)   # None: another poller follows this batch now
    try: ...
    finally: lock.release()                     # False: it expired under this poll

The lock bounds how long a killed poller holds its batch up. A poll that outlives it (a provider
slow to answer) cannot free the lock another poller has taken since, so no third poller gets in;
two pollers at once stay possible, which is why landing a line is safe to repeat
(Line.first_landing).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import redis
from redis.exceptions import LockNotOwnedError
from redis.lock import Lock

from producer import keys


@dataclass
class PollLock:
    lock: Lock
    batch_id: str

    @classmethod
    def take(cls, r: redis.Redis, batch_id: str, lock_s: float) -> PollLock | None:
        lock = r.lock(keys.batch_poll_lock(batch_id), timeout=lock_s, thread_local=False)
        if not lock.acquire(blocking=False, token=uuid.uuid4().hex):
            return None
        return cls(lock, batch_id)

    def release(self) -> bool:
        """Let the lock go if it is still this take's; False when it expired under the poll (and
        may be another poller's now, which it is left to)."""
        try:
            self.lock.release()
        except LockNotOwnedError:
            return False
        return True
