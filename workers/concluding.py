"""What a panel's conclusion reads, in as few round trips as the keys allow: the job's view (its
panels, whether it was finalised), the panel's snapshot, and with them the conclusion lease and
the decided publish. The job and its panels share a slot (producer/keys.py), so on a single Redis
or a cluster the reads are one MULTI; the lease script joins it on a single Redis.

    (taken, concluded), read = take_and_read(rt, spec, take_lease)   # read: (JobView, PanelSnapshot)
    view, snap = read_concluding(rt, panel_id, job_id, prior=True)   # a re-render's reads

The lease's release goes at the end of the finalise MULTI when there is one (`LeaseRelease`),
and a quorum's cancel (its once-guard) with the lease's reads (`take_and_read(cancel=True)`).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any

import redis

from producer import connect, keys
from workers.panel.jobview import JobView, parse_view, queue_view
from workers.panel.run import PanelRun, PanelSnapshot
from workers.panel.state import CONCLUDE_LEASE_S
from workers.runtime import Runtime


def job_view(rt: Runtime, job_id: str) -> JobView:
    pipe = rt.redis.pipeline(transaction=False)  # reads, one slot: the job's
    queue_view(pipe, job_id)
    return parse_view(pipe.execute())


def read_concluding(rt: Runtime, panel_id: str, job_id: str, prior: bool = False,
                    publish: bool = False) -> tuple[JobView, PanelSnapshot]:
    """A conclusion's reads in one MULTI (the job and its panels share a slot: producer/keys.py):
    the job's view and the panel's snapshot; with `publish`, the decided message too (tells
    in-flight calls of the panel to stop), in the same round trip on a single Redis."""
    cluster = connect.is_cluster(rt.redis)
    if publish and cluster:  # redis-py's cluster pipeline refuses PUBLISH: a round trip of its own there
        rt.store.publish_decided(panel_id)
    pipe = rt.redis.pipeline()  # a MULTI, as snapshot's own
    v = queue_view(pipe, job_id, prior)
    if publish and not cluster:
        pipe.publish(keys.DECIDED_CHANNEL, panel_id)
    s = rt.store.queue_snapshot(pipe, panel_id)
    got = pipe.execute()
    return parse_view(got[v:]), rt.store.parse_snapshot(got[s:])


def take_and_read(rt: Runtime, spec: PanelRun, take: Any,
                  cancel: bool = False) -> tuple[list[Any], tuple[JobView, PanelSnapshot] | None, list[str] | None]:  # fmt: skip
    """The conclusion lease (take_lease.lua) and, in the same MULTI on a single Redis, what the
    conclusion reads (`read_concluding`, the decided publish with it): read in vain only when
    another caller holds the lease. The view has the prior result and ledger id, so a concluded
    panel's re-render (a late member) needs no read of its own. On a cluster (redis-py's cluster
    pipeline refuses EVALSHA) or for a script Redis lost, the lease is taken on its own.

    With `cancel` (a quorum: stop the stragglers), the cancel's once-guard goes in the MULTI too
    (`PanelStore.cancel` without its reads: the snapshot has the task ids and the calls), and the
    third value is the task ids to revoke ([] when another caller cancelled first, or when every
    member left has begun its call); None: not cancelled here, the caller cancels on its own."""
    lease = ([keys.concluding(spec.panel_id), keys.panel(spec.panel_id)], [os.getpid(), CONCLUDE_LEASE_S])
    if connect.is_cluster(rt.redis):
        return take(keys=lease[0], args=lease[1]), None, None
    pipe = rt.redis.pipeline()
    pipe.evalsha(take.sha, 2, *lease[0], *lease[1])
    if cancel:
        pipe.hsetnx(keys.panel(spec.panel_id), "once:cancel", time.time())
    v = queue_view(pipe, spec.job_id, prior=True)  # a concluded panel's re-render uses it (absent before)
    pipe.publish(keys.DECIDED_CHANNEL, spec.panel_id)
    s = rt.store.queue_snapshot(pipe, spec.panel_id)
    got = pipe.execute(raise_on_error=False)
    lost = isinstance(got[0], redis.exceptions.NoScriptError)  # a Redis restart: the lease was not taken
    for res in got[1:] if lost else got:
        if isinstance(res, Exception):
            raise res
    snap = rt.store.parse_snapshot(got[s:])
    pending = None
    if cancel:  # first to cancel: the members sent (a task id) with no call recorded, nor begun: one
        # that made a provider attempt is running (the decided publish above stops it), and a revoke
        # reaches a task only before it starts, at the price of a broadcast every worker handles
        tids = [snap.state.get(f"task:{m.member}") for m in spec.members
                if m.member not in snap.calls and m.member not in snap.attempts]  # fmt: skip
        pending = [t for t in tids if t] if got[1] else []
    if lost:  # the reads went for nothing (they come before the lease): taken on its own, read again
        return take(keys=lease[0], args=lease[1]), None, pending
    return got[0], (parse_view(got[v:]), snap), pending


@dataclass
class LeaseRelease:
    """The conclusion lease's release (release_lease.lua), queued at the end of the finalise
    MULTI (`finalise_job(release=...)`): one round trip less per conclusion. `again` once that
    MULTI ran: a re-render was asked for meanwhile (the lease is kept); None: it was not sent (a
    cluster, a re-render that changed nothing, a script Redis lost): the holder releases alone."""

    script: Any
    panel_id: str
    concluded: bool  # write `once:concluded` (a conclusion's first action), not a re-render's
    again: bool | None = None

    def queue(self, pipe: Any) -> int:
        at = len(pipe)
        pipe.evalsha(self.script.sha, 2, keys.concluding(self.panel_id), keys.panel(self.panel_id),
                     time.time() if self.concluded else "")  # fmt: skip
        return at

    def ran(self, res: Any) -> None:
        if isinstance(res, redis.exceptions.NoScriptError):
            return  # not run: released alone (which loads the script)
        if isinstance(res, Exception):
            raise res
        self.again = bool(res)
