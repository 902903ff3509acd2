"""One settings object, read from the environment (PANEL_*), shared by producers and workers."""

from __future__ import annotations

import os

from pydantic import BaseModel, ConfigDict, Field, model_validator

from producer import connect


class Settings(BaseModel):
    model_config = ConfigDict(hide_input_in_errors=True)
    redis_url: str = "redis://127.0.0.1:6379/0"
    # Broker and state apart (producer/connect.py has the URL forms): each defaults to redis_url.
    broker_url: str | None = None
    state_url: str | None = None
    sentinel_master: str = Field(default="mymaster", min_length=1, description="for sentinel:// URLs")
    result_ttl_s: int = Field(default=7 * 24 * 3600, gt=0)
    visibility_timeout_s: int = Field(default=3600, gt=0, description="above the longest call")
    soft_shutdown_s: float = Field(default=60.0, ge=0)
    metrics_port: int = Field(default=0, ge=0, description="0: no exporter")
    heartbeat_file: str = "/tmp/panel-worker-heartbeat"
    heartbeat_interval_s: float = Field(default=5.0, gt=0)
    # workers/liveness.py: a consumer free to fetch that has not for liveness_stale_s pauses the
    # heartbeat; after liveness_exit_s of that the worker exits for its supervisor (0: never)
    liveness_stale_s: float = Field(default=30.0, gt=0)
    liveness_exit_s: float = Field(default=90.0, ge=0)
    sweep_interval_s: float = Field(default=1.0, gt=0)
    # workers/panel/watchdog.py: a member not started this long after it was sent (its tier queue
    # empty) is sent again
    watchdog_s: float = Field(default=30.0, gt=0)
    batch_tick_s: float = Field(default=2.0, gt=0, description="how often batches are flushed and polled")
    call_timeout_s: float = Field(default=120.0, gt=0)
    # workers/quarantine.py: suspects (tasks whose worker was lost mid-task) running alone at once, per worker process
    quarantine_slots: int = Field(default=2, ge=1)
    # workers/panel/lease.py: one copy of a member calls at a time; a dead holder's lease ends this
    # long after its last renewal (capped at a third of the visibility timeout: see `lease_s`)
    member_lease_s: float = Field(default=15.0, gt=0)
    tenant_budget_usd: float | None = Field(default=None, gt=0)
    # One pool per worker process, shared by its task threads: callers wait for a free connection
    # (up to redis_pool_timeout_s) instead of failing, so size it near the pool's concurrency.
    redis_max_connections: int = Field(default=512, ge=1)
    redis_pool_timeout_s: float = Field(default=30.0, gt=0)
    # A hung Redis fails a state command after this long (read or connect) instead of hanging it;
    # at least 2 s: above the 1 s blocking reads the fleet makes (producer/connect.py SOCKET_TIMEOUT_S)
    redis_socket_timeout_s: float = Field(default=connect.SOCKET_TIMEOUT_S, ge=2.0)
    # Circuit breakers (workers/limits/breaker.py): fleet-wide, so every worker must share them.
    breaker_window_s: float = Field(default=30.0, gt=0)
    breaker_min_calls: int = Field(default=5, ge=1)
    breaker_failure_rate: float = Field(default=0.5, gt=0, le=1)
    breaker_open_s: float = Field(default=15.0, ge=0)

    @model_validator(mode="after")
    def _urls_usable(self) -> Settings:
        # a cluster URL is refused here, at start; errors name the setting, never echo its value (passwords)
        connect.broker(self.broker, self.sentinel_master, "PANEL_BROKER_URL" if self.broker_url else "PANEL_REDIS_URL")
        connect.parse(self.state, "PANEL_STATE_URL" if self.state_url else "PANEL_REDIS_URL")
        return self

    @property
    def lease_s(self) -> float:
        """The member lease in force: a copy waiting on a dead holder's lease must get it well
        before the visibility timeout delivers that copy again (each delivery counts as an attempt)."""
        return min(self.member_lease_s, self.visibility_timeout_s / 3)

    @property
    def broker(self) -> str:
        return self.broker_url or self.redis_url

    @property
    def state(self) -> str:
        return self.state_url or self.redis_url

    def publish_retry_policy(self) -> dict[str, float]:
        """Celery's publish retries: long enough to ride out a Sentinel failover (~1-3 s)."""
        return {"max_retries": 30, "interval_start": 0.1, "interval_step": 0.2, "interval_max": 1.0}

    def broker_options(self) -> tuple[str, dict[str, object]]:
        """Celery's broker URL and transport options (the queue names, plus a Sentinel master name)."""
        url, extra = connect.broker(self.broker, self.sentinel_master)
        return url, {**self.transport_options(), **extra}

    def state_client(self, client_name: str | None = None) -> connect.StateClient:
        return connect.state_client(self.state, sentinel_master=self.sentinel_master,
                                    max_connections=self.redis_max_connections,
                                    pool_timeout_s=self.redis_pool_timeout_s, client_name=client_name,
                                    socket_timeout_s=self.redis_socket_timeout_s)  # fmt: skip

    def transport_options(self) -> dict[str, object]:
        """Broker options every producer and worker must share: they name the Redis lists."""
        return {
            # Above the longest call, or a late-acked task is delivered twice (celery#5935).
            "visibility_timeout": self.visibility_timeout_s,
            # A message whose worker died is restored by a periodic scan: kombu's default is every
            # 10 s x throttle 10 = 100 s on top of the timeout; scan every min(10 s, timeout/4).
            "unacked_restore_interval": max(1, min(10, self.visibility_timeout_s // 4)),
            "unacked_restore_throttle": 1,
            # Priority lists named `q`, `q:3`, `q:6`, `q:9`, so KEDA can watch each by name.
            "sep": ":",
            "priority_steps": [0, 3, 6, 9],
            "queue_order_strategy": "priority",
        }

    @classmethod
    def from_env(cls) -> Settings:
        fields = {
            "redis_url": "PANEL_REDIS_URL",
            "broker_url": "PANEL_BROKER_URL",
            "state_url": "PANEL_STATE_URL",
            "sentinel_master": "PANEL_SENTINEL_MASTER",
            "result_ttl_s": "PANEL_RESULT_TTL",
            "visibility_timeout_s": "PANEL_VISIBILITY_TIMEOUT_S",
            "soft_shutdown_s": "PANEL_SOFT_SHUTDOWN_S",
            "metrics_port": "PANEL_METRICS_PORT",
            "heartbeat_file": "PANEL_HEARTBEAT_FILE",
            "heartbeat_interval_s": "PANEL_HEARTBEAT_INTERVAL_S",
            "liveness_stale_s": "PANEL_LIVENESS_STALE_S",
            "liveness_exit_s": "PANEL_LIVENESS_EXIT_S",
            "sweep_interval_s": "PANEL_SWEEP_INTERVAL_S",
            "watchdog_s": "PANEL_WATCHDOG_S",
            "batch_tick_s": "PANEL_BATCH_TICK_S",
            "call_timeout_s": "PANEL_CALL_TIMEOUT_S",
            "quarantine_slots": "PANEL_QUARANTINE_SLOTS",
            "member_lease_s": "PANEL_MEMBER_LEASE_S",
            "tenant_budget_usd": "PANEL_TENANT_BUDGET_USD",
            "redis_max_connections": "PANEL_REDIS_MAX_CONNECTIONS",
            "redis_pool_timeout_s": "PANEL_REDIS_POOL_TIMEOUT_S",
            "redis_socket_timeout_s": "PANEL_REDIS_SOCKET_TIMEOUT_S",
            "breaker_window_s": "PANEL_BREAKER_WINDOW_S",
            "breaker_min_calls": "PANEL_BREAKER_MIN_CALLS",
            "breaker_failure_rate": "PANEL_BREAKER_FAILURE_RATE",
            "breaker_open_s": "PANEL_BREAKER_OPEN_S",
        }
        return cls.model_validate({k: os.environ[v] for k, v in fields.items() if os.environ.get(v)})
