"""A panel's state in Redis and the two atomic steps on it: `vote` (vote.lua) and `decide`
(decide.lua). Everything a member or the sweep needs to act is read from here, so any worker
can pick up any step after a crash.
"""

from __future__ import annotations

import os
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from importlib.resources import files
from typing import Any, Literal

import redis
from redis.client import Pipeline

from producer import connect, keys
from producer.wire import text
from workers.limits.steps import Owed
from workers.panel import attempts
from workers.panel.jobview import parse_view, queue_view
from workers.panel.lease import LEASE_S, Leases
from workers.panel.record import Call
from workers.panel.run import PanelRun, PanelSnapshot, Read, VoteOutcome

SPEC_CACHE = 4096  # panel specs kept per process: a member, its vote and the conclusion re-read them
CONCLUDE_LEASE_S = 30  # a conclusion whose worker died is taken up again after this (workers/take_lease.lua)
CutOffLease = Literal["taken", "concluded", "held"]


@dataclass(frozen=True)
class Start:
    """What a member's first round trip read (`PanelStore.turn`)."""

    spec: PanelRun | None  # None: the panel is gone
    prior: Call | None  # the member's recorded call, if any
    decided: bool
    held: bool  # this copy took the member's lease: it may call
    running: bool  # another copy holds the lease: it is calling now
    job_spec: bytes | None = None  # the job's stored spec, when asked for (`turn(job_spec_of=...)`)
    admitted: list[Any] = field(default_factory=list)  # the replies of what `turn(admit=...)` queued


class PanelStore:
    """Reads and writes panels; scripts are loaded once per process, and a panel's spec (never
    changed once created) is read from Redis once per process."""

    def __init__(self, r: redis.Redis, lease_s: float = LEASE_S):
        self.r = r
        self._specs: OrderedDict[str, PanelRun] = OrderedDict()
        self.leases = Leases(r, lease_s)  # the member leases this process holds, renewed while their calls run
        here = files("workers.panel")
        self._vote = r.register_script(here.joinpath("vote.lua").read_text())
        self._decide = r.register_script(here.joinpath("decide.lua").read_text())
        self._take = r.register_script(files("workers").joinpath("take_lease.lua").read_text())

    def create(self, spec: PanelRun, ttl_s: int, pipe: Pipeline | None = None) -> None:
        """Store a new panel. With `pipe`, the writes are queued on it for the caller to execute
        with its own (one round trip for the panel and the job's record of it)."""
        key = keys.panel(spec.panel_id)
        own = pipe is None
        # Not a MULTI: the deadlines zset is another cluster slot (producer/keys.py); one round trip
        # on a single Redis, split per node on a cluster; the sweep drops a deadline whose panel is gone.
        pipe = self.r.pipeline(transaction=False) if pipe is None else pipe
        pipe.hset(key, mapping={
            "spec": spec.to_json(), "job_id": spec.job_id, "n": len(spec.members), "quorum": spec.quorum,
            "dispatched": spec.first_stage_size, "created_at": time.time(),
        })  # fmt: skip
        pipe.expire(key, ttl_s)  # votes, tally and calls get theirs when the job is finalised (they do not exist yet)
        pipe.zadd(keys.PANEL_DEADLINES, {spec.panel_id: spec.deadline})
        if own:
            pipe.execute()
        self._remember(spec)

    def spec(self, panel_id: str, fresh: bool = False) -> PanelRun | None:
        """The panel's spec; `fresh` reads Redis even when this process has it (the sweep does,
        so a spec damaged in Redis is found and quarantined rather than masked by a cache)."""
        cached = None if fresh else self._specs.get(panel_id)
        if cached is not None:
            return cached
        raw = self.r.hget(keys.panel(panel_id), "spec")
        return self._remember(PanelRun.from_json(raw)) if raw else None

    def _remember(self, spec: PanelRun) -> PanelRun:
        self._specs[spec.panel_id] = spec
        if len(self._specs) > SPEC_CACHE:
            self._specs.popitem(last=False)
        return spec

    def snapshot(self, panel_id: str) -> PanelSnapshot:
        pipe = self.r.pipeline()
        self.queue_snapshot(pipe, panel_id)
        return self.parse_snapshot(pipe.execute())

    @staticmethod
    def queue_snapshot(pipe: Pipeline, panel_id: str) -> int:
        """Queue a snapshot's reads on `pipe` (the job's MULTI at a conclusion: one slot); returns
        where its five replies start, for `parse_snapshot`."""
        at = len(pipe)  # queued so far (a cluster pipeline keeps no command_stack of its own)
        for k in (keys.panel(panel_id), keys.calls(panel_id), keys.votes(panel_id), keys.tally(panel_id),
                  attempts.key(panel_id)):  # fmt: skip
            pipe.hgetall(k)
        return at

    @staticmethod
    def parse_snapshot(got: list[Any]) -> PanelSnapshot:
        state, calls, votes, tally, tried = got[:5]
        return PanelSnapshot(
            state={k.decode(): v.decode() for k, v in state.items() if k != b"spec"},
            calls={k.decode(): Call.from_json(v) for k, v in calls.items()},
            votes={k.decode(): v.decode() for k, v in votes.items()},
            tally={k.decode(): int(v) for k, v in tally.items()},
            attempts=attempts.parse(tried),
        )

    def turn(self, panel_id: str, member: str, lease: str | None = None,
             also: Callable[[redis.Redis | Pipeline], object] | None = None,
             job_spec_of: str | None = None, admit: Callable[[Pipeline], object] | None = None) -> Start:  # fmt: skip
        """A member's start, one round trip: the panel's spec (unless this process has it), the
        member's recorded call (a redelivery re-uses a paid answer), whether the panel is decided
        already, and the member's lease (workers/panel/lease.py): taken with token `lease`, or
        just looked at. `also` queues more writes after the reads (the watchdog's started mark),
        in the same round trip on a single Redis; on a cluster (another slot) they go on their own.
        `job_spec_of`: a job id whose stored spec this process lacks, read in the same MULTI (the
        job and its panels share a slot). `admit` queues the member's admission last (its replies
        in `Start.admitted`; an error among them, a script Redis lost, is left for its reader);
        never on a cluster (workers/panel/admission.py does not ask there)."""
        spec = self._specs.get(panel_id)
        cluster = connect.is_cluster(self.r)
        pipe = self.r.pipeline()
        pipe.hget(keys.calls(panel_id), member)
        pipe.hmget(keys.panel(panel_id), "decided", "spec" if spec is None else "decided")
        if lease is None:
            pipe.exists(keys.member_lease(panel_id, member))
        else:
            self.leases.take_step(pipe, panel_id, member, lease)
        if job_spec_of is not None:
            pipe.hget(keys.job(job_spec_of), "spec")
        if also is not None and not cluster:
            also(pipe)
        at = len(pipe)
        if admit is not None:
            admit(pipe)
        got = pipe.execute(raise_on_error=admit is None)
        for res in got[:at]:
            if isinstance(res, Exception):
                raise res
        raw, (decided, raw_spec), leased, *more = got[:at]
        job_spec = more[0] if job_spec_of is not None else None
        if also is not None and cluster:
            also(self.r)
        if spec is None and raw_spec:
            spec = self._remember(PanelRun.from_json(raw_spec))
        held = bool(leased) if lease is not None else False
        running = not leased if lease is not None else bool(leased)
        return Start(spec, Call.from_json(raw) if raw else None, bool(decided), held, running, job_spec, got[at:])

    def cancel(self, spec: PanelRun) -> tuple[bool, list[str]]:
        """Decided: tell in-flight calls to stop (the decided channel), and return (first to
        cancel this panel, task ids of members with no call recorded): one round trip."""
        pid = spec.panel_id
        cluster = connect.is_cluster(self.r)
        pipe = self.r.pipeline()
        pipe.hsetnx(keys.panel(pid), "once:cancel", time.time())
        pipe.hkeys(keys.calls(pid))
        pipe.hmget(keys.panel(pid), [f"task:{m.member}" for m in spec.members])
        if not cluster:
            pipe.publish(keys.DECIDED_CHANNEL, pid)
        first, done, tids, *_ = pipe.execute()
        if cluster:  # redis-py's cluster pipeline refuses PUBLISH: a round trip of its own there
            self.r.publish(keys.DECIDED_CHANNEL, pid)
        called = {d.decode() for d in done}
        pending = [t.decode() for m, t in zip(spec.members, tids, strict=True) if t and m.member not in called]
        return bool(first), pending

    def publish_decided(self, panel_id: str) -> None:
        """Tell every process's in-flight calls of this panel to stop (runtime's watcher)."""
        self.r.publish(keys.DECIDED_CHANNEL, panel_id)

    def state(self, panel_id: str) -> dict[str, str]:
        raw = self.r.hgetall(keys.panel(panel_id))
        return {text(k): text(v) for k, v in raw.items() if k != b"spec"}

    def decided(self, panel_id: str) -> str | None:
        v = self.r.hget(keys.panel(panel_id), "decided")
        return text(v) if v else None

    def vote(self, panel_id: str, member: str, answer_key: str | None, step: int) -> VoteOutcome:
        res = self._vote(
            keys=[keys.panel(panel_id), keys.votes(panel_id), keys.tally(panel_id)],
            args=[member, answer_key or "", step],
        )
        return self._outcome(res)

    @staticmethod
    def _outcome(res: list[Any]) -> VoteOutcome:
        status = res[0].decode()
        answer = res[1].decode()
        dup = bool(res[2])
        distinct = int(res[5]) if len(res) > 5 else 0
        if status == "decided":
            return VoteOutcome("decided", answer, dup, outcome=res[3].decode(), distinct=distinct)
        if status == "next":
            return VoteOutcome("next", answer, dup, send_from=int(res[3]), send_to=int(res[4]))
        if status not in ("quorum", "exhausted", "pending"):
            raise ValueError(f"vote.lua returned an unknown status {status!r}")
        return VoteOutcome(status, answer, dup, distinct=distinct)

    def decide(self, panel_id: str, outcome: str, answer: str = "", replace_exhausted: bool = False) -> tuple[bool, str, str]:
        won, out, ans = self._decide(
            keys=[keys.panel(panel_id), keys.tally(panel_id)], args=[outcome, answer, "1" if replace_exhausted else "0"]
        )
        return bool(won), out.decode(), ans.decode()

    def once(self, panel_id: str, action: str) -> bool:
        """True for exactly one caller per (panel, action): guards every follow-up of a decision."""
        return bool(self.r.hsetnx(keys.panel(panel_id), f"once:{action}", time.time()))

    def votes(self, panel_id: str) -> dict[str, str]:
        return {text(k): text(v) for k, v in self.r.hgetall(keys.votes(panel_id)).items()}

    def tally(self, panel_id: str) -> dict[str, int]:
        return {text(k): int(v) for k, v in self.r.hgetall(keys.tally(panel_id)).items()}

    # --- call records: written before the vote, so a redelivered member re-uses a paid answer
    def call(self, panel_id: str, member: str) -> Call | None:
        raw = self.r.hget(keys.calls(panel_id), member)
        return Call.from_json(raw) if raw else None

    def put_call(self, panel_id: str, record: Call, only_if_absent: bool = False, owed: Owed | None = None) -> bool:
        """Write a member's call record (`only_if_absent`: unless it has one). `owed`: the call's
        give-back (a cut-off call's tokens and hold, its attempt's closing record), sent in front
        of the record in one round trip when they share this Redis (`put_call_and_vote`)."""
        # ended_at: when the call's outcome was known (with latency_ms, a trace span's extent)
        if record.ended_at is None:
            record = replace(record, ended_at=time.time())
        data = record.to_json()
        if owed is not None and not owed.sent and owed.r is self.r and not connect.is_cluster(self.r):
            pipe = self.r.pipeline(transaction=False)
            carried = owed.queue(pipe)
            (pipe.hsetnx if only_if_absent else pipe.hset)(keys.calls(panel_id), record.member, data)
            got = pipe.execute(raise_on_error=False)
            owed.ran(got[:carried])
            if isinstance(got[-1], Exception):
                raise got[-1]
            return bool(got[-1]) if only_if_absent else True
        if only_if_absent:
            return bool(self.r.hsetnx(keys.calls(panel_id), record.member, data))
        self.r.hset(keys.calls(panel_id), record.member, data)
        return True

    def put_cut_off(self, panel_id: str, job_id: str, record: Call,
                    owed: Owed | None = None) -> tuple[bool, CutOffLease | None, Read | None]:  # fmt: skip
        """A member cut off by the decision: its record (unless it has one), the conclusion lease
        (workers/take_lease.lua: taken, or a re-render request left for its holder) and what the
        conclusion reads (workers/panel/jobview.py, `snapshot`), in one round trip after the
        call's give-back (`owed`), so its charge reaches the receipt whether the conclusion is
        running (its holder re-renders), finished, or not begun (this caller concludes).

        Returns (written, lease, read): lease "taken" / "concluded" (this caller holds it; the
        panel was concluded before) with the read, taken after the lease (a write after it asks
        this holder to re-render); "held" (another caller holds it and re-renders); None: not
        asked here (a cluster, a script Redis lost): the caller asks for the conclusion itself.
        A record another copy wrote first still takes the lease: a re-render that changes nothing."""
        if record.ended_at is None:
            record = replace(record, ended_at=time.time())
        if connect.is_cluster(self.r):  # redis-py's cluster pipeline refuses EVALSHA
            return self.put_call(panel_id, record, only_if_absent=True, owed=owed), None, None
        pipe = self.r.pipeline(transaction=False)
        carried = owed.queue(pipe) if owed is not None and not owed.sent and owed.r is self.r else 0
        pipe.hsetnx(keys.calls(panel_id), record.member, record.to_json())
        pipe.evalsha(self._take.sha, 2, keys.concluding(panel_id), keys.panel(panel_id), os.getpid(), CONCLUDE_LEASE_S)
        v = queue_view(pipe, job_id, prior=True)
        s = self.queue_snapshot(pipe, panel_id)
        got = pipe.execute(raise_on_error=False)
        if owed is not None and carried:
            owed.ran(got[:carried])
        written, lease = got[carried], got[carried + 1]
        for res in (written, *got[v:]):
            if isinstance(res, Exception):
                raise res
        if isinstance(lease, redis.exceptions.NoScriptError):  # not run: the caller asks for the conclusion
            return bool(written), None, None
        if isinstance(lease, Exception):
            raise lease
        taken, concluded = lease
        if not taken:
            return bool(written), "held", None
        return bool(written), "concluded" if concluded else "taken", (parse_view(got[v:]), self.parse_snapshot(got[s:]))

    def put_call_and_vote(self, panel_id: str, record: Call, step: int, owed: Owed | None = None) -> VoteOutcome:
        """`put_call`, then `vote` the record's answer, in one round trip on a single Redis: one
        pipeline, not a transaction, so Redis runs the record's write before the vote as two
        steps did (a vote never exists without its paid record; a record without its vote is
        re-used by the redelivered member). On a cluster, or a vote script Redis lost (a
        restart: the record is written), the vote goes on its own. `owed`: the call's settlement
        steps, sent in front of the record when they share this Redis (`Owed.sent` says so once
        the pipeline ran; a connection lost before a reply leaves them owed, as a settlement
        sent alone would be: its caller sends them again)."""
        if record.ended_at is None:
            record = replace(record, ended_at=time.time())
        if connect.is_cluster(self.r):  # redis-py's cluster pipeline refuses EVALSHA
            self.put_call(panel_id, record)
            return self.vote(panel_id, record.member, record.answer_key, step)
        pipe = self.r.pipeline(transaction=False)
        carried = owed.queue(pipe) if owed is not None and not owed.sent and owed.r is self.r else 0
        pipe.hset(keys.calls(panel_id), record.member, record.to_json())
        pipe.evalsha(self._vote.sha, 3, keys.panel(panel_id), keys.votes(panel_id), keys.tally(panel_id),
                     record.member, record.answer_key or "", step)  # fmt: skip
        *settled, written, res = pipe.execute(raise_on_error=False)
        if owed is not None and carried:
            owed.ran(settled)
        if isinstance(written, Exception):
            raise written
        if isinstance(res, redis.exceptions.NoScriptError):
            return self.vote(panel_id, record.member, record.answer_key, step)  # loads the script
        if isinstance(res, Exception):
            raise res
        return self._outcome(res)

    def calls(self, panel_id: str) -> dict[str, Call]:
        return {text(k): Call.from_json(v) for k, v in self.r.hgetall(keys.calls(panel_id)).items()}

    def set_task_ids(self, panel_id: str, task_ids: dict[str, str]) -> None:
        """member -> task id of the members just sent (one round trip)."""
        if task_ids:
            self.r.hset(keys.panel(panel_id), mapping={f"task:{m}": t for m, t in task_ids.items()})

    def task_ids(self, panel_id: str) -> dict[str, str]:
        st = self.state(panel_id)
        return {k[5:]: v for k, v in st.items() if k.startswith("task:")}
