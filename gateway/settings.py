"""The gateway's settings, read from the environment (PANEL_GATEWAY_*), beside the fleet's."""

from __future__ import annotations

import os
from typing import Literal

from pydantic import BaseModel, Field

MIB = 1024 * 1024


class GatewaySettings(BaseModel):
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    # a JSON body (one job, one chat request); a job's prompt is at most 400k chars
    max_body_bytes: int = Field(default=4 * MIB, ge=1024)
    # a JSONL body of POST /v1/jobs:batch, an uploaded batch file (stored in Redis: keep it sane)
    max_file_bytes: int = Field(default=64 * MIB, ge=1024)
    max_batch_lines: int = Field(default=50_000, ge=1, description="OpenAI's per-file limit")
    # per-tenant request rate (token bucket on Redis server time, fleet-wide); a tenant's own
    # record (`panel keys create --rate`) overrides it
    rate_per_s: float = Field(default=200.0, gt=0)
    rate_burst: float = Field(default=400.0, ge=1)
    wait_max_s: float = Field(default=60.0, gt=0, description="longest ?wait= on GET /v1/jobs/{id}")
    chat_timeout_s: float = Field(default=600.0, gt=0, description="how long a chat completion waits for its panel")
    sse_poll_s: float = Field(default=0.25, gt=0)
    callback_backoff_s: float = Field(default=2.0, gt=0, description="first retry delay; doubled per attempt")
    callback_max_attempts: int = Field(default=8, ge=1)
    callback_timeout_s: float = Field(default=10.0, gt=0)
    callback_lease_s: float = Field(default=60.0, gt=0, description="a claimed delivery whose replica died is retried after this")
    callback_private_hosts: bool = Field(default=False, description="allow callbacks to loopback/private addresses")
    callbacks: bool = Field(default=True, description="deliver callbacks from this replica")
    # uvicorn's event loop and HTTP parser: "auto" takes uvloop and httptools (both declared)
    loop: Literal["auto", "asyncio", "uvloop"] = "auto"
    http: Literal["auto", "h11", "httptools"] = "auto"
    submit_inline: bool = Field(default=False, description="submit one job on the event loop, not a thread")
    file_ttl_s: int = Field(default=30 * 24 * 3600, gt=0)

    @classmethod
    def from_env(cls) -> GatewaySettings:
        names = {name: f"PANEL_GATEWAY_{name.upper()}" for name in cls.model_fields}
        return cls.model_validate({k: os.environ[v] for k, v in names.items() if os.environ.get(v)})
