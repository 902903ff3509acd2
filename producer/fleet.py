"""Start and stop a whole local fleet: redis-server, the simulator, real Celery worker processes.

Used by `panel demo`, `panel eval`, the integration tests and the benchmarks. Workers run as
`python -m celery -A workers.app worker` subprocesses; nothing here imports worker code.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from producer.embedded import RedisProcess, child_env, free_port, start_owned, stop_process, wait_port
from producer.settings import Settings

SIM_KEY = "sim-local-key-not-a-secret"
ALL_QUEUES = "control,llm.economy,llm.workhorse,llm.frontier,llm.batch"


@dataclass
class WorkerSpec:
    name: str
    queues: str
    concurrency: int = 32
    pool: str = "threads"


TIER_QUEUES = "llm.economy,llm.workhorse,llm.frontier,llm.batch"
TIER_THREADS = 128  # in-flight calls across the tier processes


def default_workers(processes: int | None = None) -> list[WorkerSpec]:
    """A control process and `processes` tier processes (default: one per core beside the one
    the control process, Redis and the producer share, at least one), the threads split between
    them. One process is bound by its GIL, so more cores need more processes; on 2 cores a second
    tier process measured ~1.2 ms more CPU per member call and a lower sustained rate than one
    (bench/RESULTS.md, `python3 -m bench.hotpath --tier-processes N`)."""
    n = max(1, processes or (os.cpu_count() or 2) - 1)
    tiers = [WorkerSpec("tiers" if i == 0 else f"tiers-{i + 1}", TIER_QUEUES, concurrency=max(16, TIER_THREADS // n))
             for i in range(n)]  # fmt: skip
    return [WorkerSpec("control", "control", concurrency=16), *tiers]


DEFAULT_WORKERS = default_workers()


@dataclass
class Fleet:
    workers: list[WorkerSpec] = field(default_factory=lambda: list(DEFAULT_WORKERS))
    sim_args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    log_dir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="panel-fleet-")))
    redis: RedisProcess | None = None
    sim_proc: subprocess.Popen[bytes] | None = None
    sim_port: int = 0
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    # False: no simulator; workers keep the provider keys and base URLs of the environment
    use_sim: bool = True
    external_redis_url: str | None = None  # a Redis this fleet did not start (never stopped by it)

    @property
    def redis_url(self) -> str:
        if self.external_redis_url:
            return self.external_redis_url
        assert self.redis is not None
        return self.redis.url

    @property
    def state_url(self) -> str:
        """Where workers keep state: `PANEL_STATE_URL` in `env` (a cluster, say), else the broker's Redis."""
        return self.client_settings().state

    def client_settings(self) -> Settings:
        """Settings a producer needs to reach this fleet's broker and state."""
        return Settings.model_validate({
            **Settings.from_env().model_dump(), "redis_url": self.env.get("PANEL_REDIS_URL") or self.redis_url,
            "broker_url": self.env.get("PANEL_BROKER_URL"), "state_url": self.env.get("PANEL_STATE_URL"),
            "sentinel_master": self.env.get("PANEL_SENTINEL_MASTER", "mymaster")})  # fmt: skip

    @property
    def sim_url(self) -> str:
        return f"http://127.0.0.1:{self.sim_port}"

    def worker_env(self) -> dict[str, str]:
        env = {"PANEL_REDIS_URL": self.redis_url, "PANEL_SWEEP_INTERVAL_S": "0.5"}
        if self.use_sim:
            env.update({
                "OPENAI_BASE_URL": f"{self.sim_url}/v1", "OPENAI_API_KEY": SIM_KEY,
                "FIREWORKS_BASE_URL": f"{self.sim_url}/v1", "FIREWORKS_API_KEY": SIM_KEY,
                "ANTHROPIC_BASE_URL": self.sim_url, "ANTHROPIC_API_KEY": SIM_KEY,
            })  # fmt: skip
        # "$SIM_URL" in a caller's value stands for the simulator's address (known only at start)
        env.update({k: v.replace("$SIM_URL", self.sim_url) for k, v in self.env.items()})
        return child_env(env)

    def start(self, redis: RedisProcess | None = None, ready_timeout: float = 120.0,
              redis_url: str | None = None) -> Fleet:  # fmt: skip
        """`ready_timeout`: how long workers may take to attach (a loaded machine imports slowly).
        `redis_url`: use that Redis instead of starting one."""
        if redis_url:
            self.external_redis_url = redis_url
        else:
            self.redis = redis or RedisProcess().start()
        if self.use_sim:
            self.start_sim()
        for w in self.workers:
            self.start_worker(w)
        self.wait_ready(ready_timeout)
        return self

    def start_sim(self) -> None:
        self.sim_port = free_port()
        shipped = Path(__file__).resolve().parent.parent / "policies"
        policies = Path(self.env.get("PANEL_POLICIES") or os.environ.get("PANEL_POLICIES") or shipped)
        args = [sys.executable, "-m", "sim", "--host", "127.0.0.1", "--port", str(self.sim_port),
                "--models", str(policies / "models.yaml"), *self.sim_args]  # fmt: skip
        log = open(self.log_dir / "sim.log", "wb")
        self.sim_proc = start_owned(args, stdout=log, stderr=subprocess.STDOUT, env=child_env())
        wait_port("127.0.0.1", self.sim_port, timeout=30, proc=self.sim_proc)

    def start_worker(self, w: WorkerSpec) -> subprocess.Popen[bytes]:
        args = [sys.executable, "-m", "celery", "-A", "workers.app", "worker", "-Q", w.queues,
                "-n", f"{w.name}@%h", "--pool", w.pool, "--concurrency", str(w.concurrency),
                "--without-mingle", "--without-gossip", "-E", "--loglevel", "INFO"]  # fmt: skip
        log = open(self.log_dir / f"worker-{w.name}.log", "ab")
        proc = start_owned(args, stdout=log, stderr=subprocess.STDOUT, env=self.worker_env())
        self.procs[w.name] = proc
        return proc

    def wait_ready(self, timeout: float = 120.0) -> None:
        """Until every worker answers on the broker (its consumer is attached)."""
        from producer import keys

        r = self.client_settings().state_client()
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            for name, p in self.procs.items():
                if p.poll() is not None:
                    raise RuntimeError(f"worker {name} exited ({p.returncode}); log: {self.log_dir}/worker-{name}.log")
            # Celery logs "<name> ready." once its consumer is attached to the broker
            if r.exists(keys.task_classes()) and all(self._ready(n) for n in self.procs):
                return
            time.sleep(0.2)
        raise TimeoutError(f"workers not ready after {timeout}s; logs in {self.log_dir}")

    def _ready(self, name: str) -> bool:
        log = self.log_dir / f"worker-{name}.log"
        return log.exists() and b" ready." in log.read_bytes()

    def sim(self, path: str, payload: dict[str, object] | None = None) -> dict[str, object]:
        url = f"{self.sim_url}{path}"
        resp = httpx.post(url, json=payload, timeout=10) if payload is not None else httpx.get(url, timeout=10)
        resp.raise_for_status()
        return resp.json()  # type: ignore[no-any-return]

    def stop(self, keep_redis: bool = False, keep_logs: bool = False) -> None:
        """Stop every process; remove the log dir (unless `keep_logs`) and the embedded Redis's
        data dir (unless `keep_redis`: the caller still uses it and closes it)."""
        for p in self.procs.values():
            stop_process(p, timeout=20)
        self.procs.clear()
        if self.sim_proc is not None:
            stop_process(self.sim_proc, timeout=5)
            self.sim_proc = None
        if self.redis is not None and not keep_redis:
            self.redis.close()
        if not keep_logs:
            shutil.rmtree(self.log_dir, ignore_errors=True)

    def __enter__(self) -> Fleet:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
