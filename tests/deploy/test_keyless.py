"""Keyless compose works: the compose file's own command lines and environment, run as processes
against the compose simulator (no Docker daemon here), decide a panel job and a batch job with
every provider key empty. And every process that calls a provider gets the keys in compose and k8s.

Only what cannot exist outside Docker is changed: service host names become 127.0.0.1 ports,
`celery`/`python` become this interpreter, each worker's metrics port is 0 (five processes share
one host here) and file paths go to a temp dir.
"""

from __future__ import annotations

import shlex
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from producer.client import PanelClient
from producer.embedded import free_port, redis_server_binary, start_owned, stop_process, wait_port
from tests.deploy.artefacts import REPO, compose, container, interpolate_defaults, workers

KEYS = ("OPENAI_API_KEY", "FIREWORKS_API_KEY", "ANTHROPIC_API_KEY")
BASE_URLS = ("OPENAI_BASE_URL", "FIREWORKS_BASE_URL", "ANTHROPIC_BASE_URL")


def worker_services(doc: dict) -> dict[str, dict]:
    return {name: svc for name, svc in doc["services"].items() if name.startswith("worker-")}


def test_every_compose_worker_gets_the_provider_keys_and_urls_and_the_sim_takes_none() -> None:
    doc = compose()
    services = worker_services(doc)
    assert "worker-control" in services  # the batch lane's flush and poll call providers from control
    for name, svc in services.items():
        env = svc["environment"]
        assert set(KEYS + BASE_URLS) <= set(env), f"{name} lacks provider variables"
        assert all(interpolate_defaults(str(env[k])) == "" for k in KEYS), f"{name}: a key default in the file"
    assert "--keyless" in doc["services"]["sim"]["command"]
    for svc in ("flower", "gateway"):  # they never call a model, so they get no key
        assert not set(KEYS) & set(doc["services"][svc]["environment"])


def test_every_k8s_worker_deployment_including_control_gets_the_provider_keys(rendered: list[dict]) -> None:
    found = workers(rendered)
    assert "control" in found
    for queue, deploy in found.items():
        refs = [e["secretRef"]["name"] for e in container(deploy, "worker").get("envFrom", []) if "secretRef" in e]
        assert any(r.startswith("panel-provider-keys") for r in refs), f"{queue}: no provider keys"


def _localise(value: str, redis_port: int, sim_port: int) -> str:
    return value.replace("@redis:6379", f"@127.0.0.1:{redis_port}").replace("http://sim:8900", f"http://127.0.0.1:{sim_port}")


def _argv(command: list[str]) -> list[str]:
    head = {"celery": [sys.executable, "-m", "celery"], "python": [sys.executable]}[command[0]]
    return head + command[1:]


@pytest.fixture(scope="module")
def compose_fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    doc = compose()
    tmp = tmp_path_factory.mktemp("compose")
    rport, sport = free_port(), free_port()
    procs: list[subprocess.Popen[bytes]] = []
    base_env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp), "PYTHONPATH": str(REPO), "LANG": "C.UTF-8"}
    try:
        # Redis with the compose command's flags (password from its default)
        shell = doc["services"]["redis"]["command"][-1]
        password = interpolate_defaults(doc["services"]["redis"]["environment"]["REDIS_PASSWORD"])
        flags = shlex.split(shell.replace('"$$REDIS_PASSWORD"', password))[2:]  # drop `exec redis-server`
        flags = [f if f != "/data" else str(tmp) for f in flags]
        procs.append(start_owned([redis_server_binary(), *flags, "--port", str(rport), "--bind", "127.0.0.1"],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))  # fmt: skip
        wait_port("127.0.0.1", rport)
        sim_cmd = [c if c != "8900" else str(sport) for c in doc["services"]["sim"]["command"]]
        sim_cmd = [c if c != "0.0.0.0" else "127.0.0.1" for c in sim_cmd]
        sim = start_owned(_argv(sim_cmd), cwd=REPO, env=base_env, stdout=open(tmp / "sim.log", "wb"),
                          stderr=subprocess.STDOUT)  # fmt: skip
        procs.append(sim)
        wait_port("127.0.0.1", sport, timeout=30, proc=sim)
        for name, svc in worker_services(doc).items():  # no beat: worker-control flushes and polls the batch
            env = {k: _localise(interpolate_defaults(str(v)), rport, sport) for k, v in svc["environment"].items()}
            env |= {"PANEL_METRICS_PORT": "0", "PANEL_HEARTBEAT_FILE": str(tmp / f"{name}.heartbeat")}
            cmd = [c.replace("/tmp/", f"{tmp}/") for c in svc["command"]]
            procs.append(start_owned(_argv(cmd), cwd=REPO, env=base_env | env, stdout=open(tmp / f"{name}.log", "wb"),
                                     stderr=subprocess.STDOUT))  # fmt: skip
        url = _localise(interpolate_defaults(doc["x-panel-env"]["PANEL_REDIS_URL"]), rport, sport)
        r = redis.Redis.from_url(url)
        end = time.monotonic() + 180
        # compose logs at WARNING (no "ready." line): each worker's heartbeat file says it started
        while not all((tmp / f"{n}.heartbeat").exists() for n in worker_services(doc)):
            assert time.monotonic() < end, f"compose workers not ready; logs in {tmp}"
            assert all(p.poll() is None for p in procs), f"a compose process exited; logs in {tmp}"
            time.sleep(0.3)
        r.close()
        yield url, tmp
    finally:
        for p in reversed(procs):
            stop_process(p, timeout=20)


def test_keyless_compose_processes_decide_a_panel_job_and_a_batch_job(compose_fleet: tuple[str, Path]) -> None:
    url, logs = compose_fleet
    client = PanelClient(url)
    panel = client.submit({"task_class": "code_review", "lane": "panel",
                           "prompt": "Review this diff; answer APPROVE or REQUEST_CHANGES.\n+ALTER TABLE users DROP COLUMN x"})  # fmt: skip
    batch = client.submit({"task_class": "code_review", "mode": "batch",
                           "prompt": "Review this diff; answer APPROVE or REQUEST_CHANGES.\n+print('hi')"})  # fmt: skip
    for job_id, lane in ((panel, "panel"), (batch, "batch")):
        res = client.wait(job_id, timeout=240)
        assert res.status == "decided", f"{lane}: {res.error}; logs in {logs}"
        assert res.receipt is not None and lane in [s.lane for s in res.receipt.lanes]
        answered = [c for c in res.receipt.calls if c.status == "answered"]
        if lane == "panel":  # members answered, keyless, through the simulator
            assert len(answered) >= 2, res.receipt.calls
        else:  # flushed and polled by the control worker through the batch API, keyless
            assert any(c.batch for c in answered), res.receipt.calls
    client.close()
