"""One copy of a member calls its model at a time: a lease per (panel, member), taken in the
member's first round trip and kept alive by its process while the call runs.

A member's message can be delivered twice while the first copy still runs: kombu restores a
worker's unacknowledged messages when its broker connection drops (a Redis restart, a Sentinel
failover), a message running past the visibility timeout comes back, and the watchdog re-sends
a member it thinks lost. The call record makes a copy that starts *after* the answer was
recorded re-use it; the lease covers the window before that: a copy that finds the lease taken
waits for the holder's record instead of buying the answer again. The holder's process renews
its leases every quarter lease (one pipeline per process, not per call), so a lease outlives a
Redis outage of a few seconds and ends `lease_s` after its holder died (kill -9): the waiting copy
then takes it and calls.

    leases = Leases(r)
    token = leases.token()                 # this copy's, sent with the member's first reads
    with leases.holding(panel_id, "m0"):   # renewed until the call's record is written
        ...
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import redis

from producer import keys

log = logging.getLogger("panel.lease")
LEASE_S = 15.0  # outlives a Redis restart of ~10 s; a dead holder's copy waits at most this long


class Leases:
    """The member leases this process holds, renewed every quarter lease by one daemon thread
    while any is held. `lease_s` is the settings' `lease_s` (producer/settings.py)."""

    def __init__(self, r: redis.Redis, lease_s: float = LEASE_S):
        self.r = r
        self.lease_s = lease_s
        self._held: dict[str, int] = {}  # lease key -> how many holders in this process
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    @staticmethod
    def token() -> str:
        return uuid.uuid4().hex[:16]

    def take_step(self, pipe: Any, panel_id: str, member: str, token: str) -> None:
        """Queue the lease's `SET NX PX` on a pipeline; its reply is true when this copy holds it."""
        pipe.set(keys.member_lease(panel_id, member), token, nx=True, px=int(self.lease_s * 1000))

    @contextmanager
    def holding(self, panel_id: str, member: str) -> Iterator[None]:
        """Renew the lease while the body runs. A body that raises gives the lease up at once, so
        the task's retry does not wait for it to expire; one that returns has written the call's
        record, which is what a waiting copy reads first, and lets the lease expire."""
        k = keys.member_lease(panel_id, member)
        with self._lock:
            self._held[k] = self._held.get(k, 0) + 1
            if self._thread is None:
                self._thread = threading.Thread(target=self._renew_forever, name="member-leases", daemon=True)
                self._thread.start()
        try:
            yield
        except BaseException:
            try:
                self.r.delete(k)
            except redis.RedisError as e:
                log.warning("member lease %s not given up (%s): it expires in %.0f s", k, e, self.lease_s)
            raise
        finally:
            with self._lock:
                n = self._held.pop(k, 1) - 1
                if n > 0:
                    self._held[k] = n

    def held(self) -> list[str]:
        with self._lock:
            return list(self._held)

    def renew(self) -> None:
        """One round trip: every lease this process holds gets `lease_s` again (a lease that
        already expired is not brought back: `PEXPIRE` on a missing key does nothing)."""
        held = self.held()
        if not held:
            return
        pipe = self.r.pipeline(transaction=False)
        for k in held:
            pipe.pexpire(k, int(self.lease_s * 1000))
        pipe.execute()

    def _renew_forever(self) -> None:
        while True:
            time.sleep(self.lease_s / 4)
            try:
                self.renew()
            except redis.RedisError as e:  # Redis away: the leases carry their TTL through a short outage
                log.debug("member leases not renewed: %s", e)
            except Exception:  # never let the renewing thread die with leases held
                log.exception("member leases not renewed")
