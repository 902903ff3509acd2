"""A panel's state in Redis and the two atomic steps on it: `vote` (vote.lua) and `decide`
(decide.lua). Everything a member or the sweep needs to act is read from here, so any worker
can pick up any step after a crash.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from importlib.resources import files
from typing import Any, Literal

import orjson
import redis

from producer import keys
from workers.policy import AgreementSpec

VoteStatus = Literal["quorum", "exhausted", "next", "pending", "decided"]
Stage = Literal["single", "panel"]


@dataclass(frozen=True)
class Member:
    member: str  # "m0", "m1", ...
    model: str
    tier: str


@dataclass(frozen=True)
class PanelSpec:
    panel_id: str
    job_id: str
    stage: Stage
    attempt: int
    members: list[Member]
    quorum: int
    dispatch: Literal["parallel", "staged"]
    agreement: dict[str, Any]
    arbiter: str
    rubric: list[str]
    deadline: float  # epoch seconds
    batch: bool = False
    triggers: list[str] = field(default_factory=list)
    logprobs: bool = False  # members ask for token log-probabilities (a cascade stage's logprob check)

    @property
    def first_stage_size(self) -> int:
        return len(self.members) if self.dispatch == "parallel" else self.quorum

    def member(self, member_id: str) -> Member:
        return next(m for m in self.members if m.member == member_id)

    def agreement_spec(self) -> AgreementSpec:
        return AgreementSpec.model_validate(self.agreement)

    def to_json(self) -> bytes:
        return orjson.dumps(asdict(self))

    @classmethod
    def from_json(cls, raw: bytes) -> PanelSpec:
        d = orjson.loads(raw)
        d["members"] = [Member(**m) for m in d["members"]]
        return cls(**d)


@dataclass(frozen=True)
class VoteOutcome:
    status: VoteStatus
    answer: str
    duplicate: bool
    outcome: str = ""  # for 'decided': what decided it
    send_from: int = 0  # for 'next': members[send_from:send_to] are owed
    send_to: int = 0


class PanelStore:
    """Reads and writes panels; scripts are loaded once per process."""

    def __init__(self, r: redis.Redis):
        self.r = r
        here = files("workers.panel")
        self._vote = r.register_script(here.joinpath("vote.lua").read_text())
        self._decide = r.register_script(here.joinpath("decide.lua").read_text())

    def create(self, spec: PanelSpec, ttl_s: int) -> None:
        key = keys.panel(spec.panel_id)
        pipe = self.r.pipeline()
        pipe.hset(key, mapping={
            "spec": spec.to_json(), "job_id": spec.job_id, "n": len(spec.members), "quorum": spec.quorum,
            "dispatched": spec.first_stage_size, "created_at": time.time(),
        })  # fmt: skip
        for k in (key, keys.votes(spec.panel_id), keys.tally(spec.panel_id), keys.calls(spec.panel_id)):
            pipe.expire(k, ttl_s)
        pipe.zadd(keys.PANEL_DEADLINES, {spec.panel_id: spec.deadline})
        pipe.execute()

    def spec(self, panel_id: str) -> PanelSpec | None:
        raw = self.r.hget(keys.panel(panel_id), "spec")
        return PanelSpec.from_json(raw) if raw else None

    def state(self, panel_id: str) -> dict[str, str]:
        raw = self.r.hgetall(keys.panel(panel_id))
        return {k.decode(): v.decode() for k, v in raw.items() if k != b"spec"}

    def decided(self, panel_id: str) -> str | None:
        v = self.r.hget(keys.panel(panel_id), "decided")
        return v.decode() if v else None

    def vote(self, panel_id: str, member: str, answer_key: str | None, step: int) -> VoteOutcome:
        res = self._vote(
            keys=[keys.panel(panel_id), keys.votes(panel_id), keys.tally(panel_id)],
            args=[member, answer_key or "", step],
        )
        status = res[0].decode()
        answer = res[1].decode()
        dup = bool(res[2])
        if status == "decided":
            return VoteOutcome("decided", answer, dup, outcome=res[3].decode())
        if status == "next":
            return VoteOutcome("next", answer, dup, send_from=int(res[3]), send_to=int(res[4]))
        return VoteOutcome(status, answer, dup)  # type: ignore[arg-type]

    def decide(self, panel_id: str, outcome: str, answer: str = "", replace_exhausted: bool = False) -> tuple[bool, str, str]:
        won, out, ans = self._decide(
            keys=[keys.panel(panel_id), keys.tally(panel_id)], args=[outcome, answer, "1" if replace_exhausted else "0"]
        )
        return bool(won), out.decode(), ans.decode()

    def once(self, panel_id: str, action: str) -> bool:
        """True for exactly one caller per (panel, action): guards every follow-up of a decision."""
        return bool(self.r.hsetnx(keys.panel(panel_id), f"once:{action}", time.time()))

    def votes(self, panel_id: str) -> dict[str, str]:
        return {k.decode(): v.decode() for k, v in self.r.hgetall(keys.votes(panel_id)).items()}

    def tally(self, panel_id: str) -> dict[str, int]:
        return {k.decode(): int(v) for k, v in self.r.hgetall(keys.tally(panel_id)).items()}

    # --- call records: written before the vote, so a redelivered member re-uses a paid answer
    def call(self, panel_id: str, member: str) -> dict[str, Any] | None:
        raw = self.r.hget(keys.calls(panel_id), member)
        return orjson.loads(raw) if raw else None

    def put_call(self, panel_id: str, member: str, record: dict[str, Any], only_if_absent: bool = False) -> bool:
        data = orjson.dumps(record)
        if only_if_absent:
            return bool(self.r.hsetnx(keys.calls(panel_id), member, data))
        self.r.hset(keys.calls(panel_id), member, data)
        return True

    def calls(self, panel_id: str) -> dict[str, dict[str, Any]]:
        return {k.decode(): orjson.loads(v) for k, v in self.r.hgetall(keys.calls(panel_id)).items()}

    def set_task_id(self, panel_id: str, member: str, task_id: str) -> None:
        self.r.hset(keys.panel(panel_id), f"task:{member}", task_id)

    def task_ids(self, panel_id: str) -> dict[str, str]:
        st = self.state(panel_id)
        return {k[5:]: v for k, v in st.items() if k.startswith("task:")}
