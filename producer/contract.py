"""The wire contract: Job in, Result (with its Receipt) out. Versioned, strict, orjson-friendly.

Unknown fields and bad values are rejected with the field's name, at the producer, before
anything is queued:

    >>> Job.model_validate({"task_class": "extraction", "prompt": "Invoice 42: total?"})
    >>> Job.model_validate({"task_class": "x", "promt": "hi"})  # ContractError: promt: unknown field
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any, Literal

import orjson
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from producer import job_json
from producer.errors import ContractError

SCHEMA_VERSION: Literal[1] = 1
RUN_TASK = "panel.run"  # the task a submit sends to the `control` queue


def run_task_id(job_id: str) -> str:
    """The id of a job's `panel.run` task, the same from every sender (the client, the gateway, the
    watchdog's re-send): Flower shows one task per job, and an event about the job can go on it."""
    return f"run-{job_id}"

MAX_PROMPT_CHARS = 400_000  # ~100k tokens: above every registry context window we ship
MAX_METADATA_BYTES = 4_096
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$")

Mode = Literal["realtime", "batch"]
Lane = Literal["single", "panel", "cascade"]
CallStatus = Literal["answered", "cancelled", "failed", "skipped", "late", "lost"]  # lost: in flight with a dead worker
JobStatus = Literal["queued", "running", "decided", "failed"]
Decision = Literal["single", "quorum", "arbiter", "majority", "sweep", "failed", "cache"]
CacheUse = Literal["use", "bypass"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=False)


class Message(_Strict):
    role: Literal["system", "user", "assistant"]
    content: str = Field(min_length=1)


class Job(_Strict):
    """One unit of work. Give `messages` or `prompt`, not both."""

    schema_version: Literal[1] = SCHEMA_VERSION
    id: str | None = Field(default=None, description="caller-chosen job id; generated when absent")
    idempotency_key: str | None = Field(default=None, description="a resubmission returns the first job")
    task_class: str = Field(description="a row of policies/tasks.yaml")
    messages: list[Message] | None = None
    prompt: str | None = Field(default=None, min_length=1)
    response_schema: dict[str, Any] | None = Field(default=None, description="JSON schema the answer must fit")
    mode: Mode = "realtime"
    lane: Lane | None = Field(default=None, description="force a lane; `panel` asks for a panel explicitly")
    flags: list[str] = Field(default_factory=list, description="input triggers, e.g. migration, security")
    deadline: AwareDatetime | None = None
    # strict: JSON `true` or "0.5" is a wrong type here, not a budget of $1 or $0.50
    budget_usd: float | None = Field(default=None, gt=0, strict=True, allow_inf_nan=False)
    tenant: str = "default"
    metadata: dict[str, str | int | float | bool | None] = Field(default_factory=dict)
    cache: CacheUse = Field(default="use", description="`bypass`: compute afresh even if the class caches answers")

    @field_validator("id", "idempotency_key", "tenant", "task_class")
    @classmethod
    def _name(cls, v: str | None) -> str | None:
        if v is not None and not _NAME.match(v):
            raise ValueError("use 1-128 letters, digits or _.:- (starting with a letter or digit)")
        return v

    @field_validator("flags")
    @classmethod
    def _flags(cls, v: list[str]) -> list[str]:
        for f in v:
            if not _NAME.match(f):
                raise ValueError(f"flag {f!r}: use letters, digits or _.:-")
        return sorted(set(v))

    @field_validator("deadline")
    @classmethod
    def _future(cls, v: datetime | None) -> datetime | None:
        if v is not None and v <= datetime.now(UTC):
            raise ValueError("deadline is in the past; give a future ISO-8601 time with a timezone")
        return v

    @field_validator("metadata")
    @classmethod
    def _small(cls, v: dict[str, Any]) -> dict[str, Any]:
        try:
            size = len(orjson.dumps(v))
        except orjson.JSONEncodeError as e:  # an integer past 64 bits, a lone surrogate
            raise ValueError(f"not storable as JSON ({e}); keep strings, 64-bit numbers, booleans or null") from None
        if size > MAX_METADATA_BYTES:
            raise ValueError(f"metadata over {MAX_METADATA_BYTES} bytes; keep ids and tags, not payloads")
        return v

    @field_validator("response_schema")
    @classmethod
    def _schema(cls, v: dict[str, Any] | None) -> dict[str, Any] | None:
        if v is not None and not isinstance(v.get("type", "object"), (str, list)):
            raise ValueError("not a JSON schema: `type` must be a string or list")
        if v is not None and "type" not in v and "properties" not in v and "enum" not in v:
            raise ValueError("not a JSON schema: give at least `type`, `properties` or `enum`")
        return v

    @model_validator(mode="after")
    def _one_input(self) -> Job:
        if (self.messages is None) == (self.prompt is None):
            raise ValueError("messages: give exactly one of `messages` or `prompt`")
        if self.messages is not None:
            if not self.messages:
                raise ValueError("messages: empty list; give at least one user message")
            if not any(m.role == "user" for m in self.messages):
                raise ValueError("messages: no user message")
        if self.prompt_chars() > MAX_PROMPT_CHARS:
            field = "prompt" if self.prompt is not None else "messages"
            raise ValueError(f"{field}: too large: {self.prompt_chars()} chars over {MAX_PROMPT_CHARS}; split the job")
        return self

    def prompt_chars(self) -> int:
        if self.prompt is not None:
            return len(self.prompt)
        return sum(len(m.content) for m in self.messages or [])

    def chat(self) -> list[dict[str, str]]:
        """The conversation as provider-neutral dicts."""
        if self.messages is not None:
            return [m.model_dump() for m in self.messages]
        return [{"role": "user", "content": self.prompt or ""}]

    @classmethod
    def parse(cls, data: bytes | str | dict[str, Any]) -> Job:
        """Validate raw input; raise ContractError naming the field at fault."""
        try:
            if isinstance(data, (bytes, str)):
                data = job_json.load(data)  # names the field of a NaN or a 65-bit integer
            if not isinstance(data, dict):
                raise ContractError([("(line)", f"expected a JSON object, got {type(data).__name__}")])
            # pydantic-core cannot read a key that is not valid Unicode (a lone surrogate) and
            # reports it without its name; no field is named so, so it is an unknown field
            for k in data:
                if isinstance(k, str) and not _encodable(k):
                    raise ContractError([(k, "unknown field (its name is not valid Unicode); remove it "
                                             "(see producer/contract.py for the fields a Job takes)")])  # fmt: skip
            return cls.model_validate(data)
        except ValidationError as e:
            raise ContractError.from_validation(e) from None


def _encodable(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


class CallRecord(_Strict):
    """One model call of a job (or one that was planned and not made)."""

    member: str  # m0, m1, ... or "arbiter" (or "equivalence")
    role: Literal["member", "arbiter", "equivalence"] = "member"
    model: str
    provider: str
    tier: str
    status: CallStatus
    tokens_in: int = 0
    tokens_out: int = 0
    # of tokens_in: read from / written to the provider's prompt cache (priced at cache_read / cache_write)
    tokens_cached: int = 0
    tokens_cache_write: int = 0
    latency_ms: float = 0.0
    cost_usd: float = 0.0
    cache_saved_usd: float = 0.0  # the same tokens at the uncached input price, minus cost_usd
    batch: bool = False  # True: priced at the registry's batch price (the call went through a batch)
    realtime_cost_usd: float | None = None  # batch calls: the same tokens at the real-time price
    answer_key: str | None = None  # the normalised answer this call voted for
    logprob: float | None = None  # the answer's sequence log-probability (OpenAI wire, when asked)
    failed_over_from: str | None = None
    error: str | None = None
    anonymised: dict[str, str] | None = None  # the arbiter: label shown to the judge -> member id
    # the equivalence check (`similar` + `equivalence`): the two members compared, and its yes/no
    # (None: unreadable or failed; the arbiter decided)
    compared: list[str] | None = None
    equivalent: bool | None = None


class Verdict(_Strict):
    """The arbiter's JSON verdict (validated), or the majority fallback flagged as such."""

    final_answer: str
    chosen_members: list[str] = Field(default_factory=list)
    disagreements: list[str] = Field(default_factory=list)
    rationale: str = ""
    fallback: bool = False  # True: the arbiter failed twice; this is the members' majority


class LaneStep(_Strict):
    lane: Literal["single", "panel", "batch"]
    reason: str
    # a cascade stage (`stage` 1, 2, ...): its acceptance check, the measured value (None: no
    # signal, e.g. a server without log-probabilities), the threshold, and whether it accepted
    stage: int | None = None
    check: str | None = None
    value: float | None = None
    threshold: float | None = None
    accepted: bool | None = None


class Receipt(_Strict):
    schema_version: Literal[1] = SCHEMA_VERSION
    job_id: str
    task_class: str
    tenant: str = "default"
    lanes: list[LaneStep] = Field(default_factory=list)
    triggers: list[str] = Field(default_factory=list)
    calls: list[CallRecord] = Field(default_factory=list)
    decision: Decision = "failed"
    early_exit: bool = False
    calls_saved: int = 0
    verdict: Verdict | None = None
    disagreement: str | None = None
    default_answer: str | None = None
    final_answer: str | None = None
    changed_vs_default: bool | None = None
    total_cost_usd: float = 0.0
    latency_ms: float = 0.0
    # answer cache: served without a panel, from the decided answer of `cached_from_job`
    served_from_cache: bool = False
    cached_from_job: str | None = None
    coalesced: bool = False  # waited on that job while it ran (single flight), not read afterwards
    saved_usd: float = 0.0  # what `cached_from_job` had paid when it decided: the cost not repeated

    @property
    def lane(self) -> str:
        return self.lanes[-1].lane if self.lanes else "single"


class Result(_Strict):
    schema_version: Literal[1] = SCHEMA_VERSION
    job_id: str
    status: JobStatus
    answer: str | None = None
    parsed: Any = None  # the answer as JSON when the job gave a response_schema
    disagreement: str | None = None
    error: str | None = None
    receipt: Receipt | None = None
