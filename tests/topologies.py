"""Redis topologies on loopback, from the same redis-server binary: a 3-node Cluster and a
Sentinel-managed primary + replica + three sentinels. Used by tests/cluster (and its drills)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis
from redis.cluster import ClusterNode, RedisCluster

from producer.embedded import redis_server_binary, start_owned, stop_process, wait_port


def redis_cli_binary() -> str | None:
    return shutil.which("redis-cli")


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def cluster_ports(n: int) -> list[int]:
    """n free ports whose cluster bus ports (port + 10000) are free too."""
    ports: list[int] = []
    while len(ports) < n:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            p = int(s.getsockname()[1])
        if p + 10000 < 65536 and p not in ports and _bindable(p + 10000):
            ports.append(p)
    return ports


def _server(port: int, workdir: Path, *extra: str) -> subprocess.Popen[bytes]:
    workdir.mkdir(parents=True, exist_ok=True)
    args = [redis_server_binary(), "--port", str(port), "--bind", "127.0.0.1", "--dir", str(workdir),
            "--save", "", "--appendonly", "no", "--maxmemory-policy", "noeviction", "--daemonize", "no", *extra]  # fmt: skip
    proc = start_owned(args, stdout=open(workdir / "server.log", "wb"), stderr=subprocess.STDOUT)
    wait_port("127.0.0.1", port, proc=proc)
    return proc


@dataclass
class ClusterProcess:
    """Three primaries, no replicas: `redis-cli --cluster create ... --cluster-replicas 0`."""

    size: int = 3
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="panel-cluster-")))
    ports: list[int] = field(default_factory=list)
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in self.ports)

    def start(self, timeout: float = 30.0) -> ClusterProcess:
        cli = redis_cli_binary()
        if cli is None:
            raise RuntimeError("redis-cli not found (apt-get install -y redis-tools)")
        self.ports = cluster_ports(self.size)
        for p in self.ports:
            self.procs.append(_server(p, self.workdir / str(p), "--cluster-enabled", "yes",
                                      "--cluster-config-file", "nodes.conf", "--cluster-node-timeout", "2000"))  # fmt: skip
        subprocess.run([cli, "--cluster", "create", *[f"127.0.0.1:{p}" for p in self.ports],
                        "--cluster-replicas", "0", "--cluster-yes"], check=True, capture_output=True, timeout=timeout)  # fmt: skip
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            infos = [redis.Redis(port=p).cluster("info") for p in self.ports]
            if all(str(i.get("cluster_state")) == "ok" for i in infos):
                return self
            time.sleep(0.1)
        raise TimeoutError(f"cluster not ok after {timeout}s; logs in {self.workdir}")

    def client(self) -> RedisCluster:
        return RedisCluster(startup_nodes=[ClusterNode("127.0.0.1", p) for p in self.ports])

    def info_sum(self, field_name: str, section: str = "stats") -> int:
        return sum(int(redis.Redis(port=p).info(section).get(field_name, 0)) for p in self.ports)

    def stop(self) -> None:
        for proc in self.procs:
            stop_process(proc, timeout=10)
        self.procs.clear()


@dataclass
class SentinelSet:
    """A primary, one replica and three sentinels watching it (quorum 2) under `master`."""

    master: str = "pfmaster"
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="panel-sentinel-")))
    data_ports: list[int] = field(default_factory=list)  # [primary at start, replica at start]
    sentinel_ports: list[int] = field(default_factory=list)
    data: dict[int, subprocess.Popen[bytes]] = field(default_factory=dict)
    sentinels: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def url(self) -> str:
        return ";".join(f"sentinel://127.0.0.1:{p}" for p in self.sentinel_ports)

    def start(self, timeout: float = 30.0) -> SentinelSet:
        self.data_ports = cluster_ports(2)
        self.sentinel_ports = cluster_ports(3)
        primary, replica = self.data_ports
        # AOF on, as the broker wants (FIELD-NOTES). The first primary runs `min-replicas-to-write 1`:
        # cut off from its replica (promoted by SENTINEL FAILOVER) it refuses writes (NOREPLICAS)
        # instead of acking ones the new primary never sees. The replica runs without it, so once
        # promoted and alone (its old primary killed) it still takes writes: with one replica that
        # is the choice between losing writes and stopping; production runs two (docs/cluster.md).
        aof = ("--appendonly", "yes", "--appendfsync", "everysec")
        fence = ("--min-replicas-to-write", "1", "--min-replicas-max-lag", "5")
        self.data[primary] = _server(primary, self.workdir / str(primary), *aof, *fence)
        self.data[replica] = _server(
            replica, self.workdir / str(replica), *aof, "--replicaof", "127.0.0.1", str(primary)
        )
        for sp in self.sentinel_ports:
            d = self.workdir / f"sentinel-{sp}"
            d.mkdir(parents=True)
            conf = d / "sentinel.conf"
            conf.write_text(
                f"port {sp}\nbind 127.0.0.1\ndir {d}\n"
                f"sentinel monitor {self.master} 127.0.0.1 {primary} 2\n"
                f"sentinel down-after-milliseconds {self.master} 1000\n"
                f"sentinel failover-timeout {self.master} 5000\n"
                f"sentinel parallel-syncs {self.master} 1\n"
            )
            proc = start_owned([redis_server_binary(), str(conf), "--sentinel"],
                               stdout=open(d / "sentinel.log", "wb"), stderr=subprocess.STDOUT)  # fmt: skip
            wait_port("127.0.0.1", sp, proc=proc)
            self.sentinels.append(proc)
        end = time.monotonic() + timeout
        while time.monotonic() < end:  # every sentinel sees the replica and the other sentinels
            ok = True
            for sp in self.sentinel_ports:
                m = redis.Redis(port=sp).sentinel_master(self.master)
                ok &= int(m.get("num-slaves", 0)) >= 1 and int(m.get("num-other-sentinels", 0)) >= 2
            if ok:
                return self
            time.sleep(0.2)
        raise TimeoutError(f"sentinels not converged after {timeout}s; logs in {self.workdir}")

    def primary_port(self) -> int:
        host, port = redis.Redis(port=self.sentinel_ports[0]).sentinel_get_master_addr_by_name(self.master)
        return int(port)

    def failover(self) -> int:
        """SENTINEL FAILOVER; returns the old primary's port (still running, now to be replaced)."""
        old = self.primary_port()
        redis.Redis(port=self.sentinel_ports[0]).execute_command("SENTINEL", "FAILOVER", self.master)
        return old

    def kill9(self, port: int) -> None:
        proc = self.data.pop(port)
        proc.kill()
        proc.wait(10)

    def stop(self) -> None:
        for proc in [*self.sentinels, *self.data.values()]:
            stop_process(proc, timeout=10)
        self.sentinels.clear()
        self.data.clear()
