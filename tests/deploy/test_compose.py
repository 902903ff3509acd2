"""docker-compose.yml: a worker service per queue beside Redis, Flower and the simulator (no beat:
the control workers run the periodic duties); keyless by default; every variable documented in
.env.example."""

from __future__ import annotations

import re

from tests.deploy.artefacts import COMPOSE, CONCURRENCY, REPO, compose, interpolate_defaults


def test_compose_has_a_worker_per_queue_and_the_supporting_services() -> None:
    services = compose()["services"]
    assert {"redis", "flower", "sim"} <= set(services)
    seen = {}
    for svc in services.values():
        cmd = svc.get("command", [])
        if cmd[:4] == ["celery", "-A", "workers.app", "worker"]:
            flags = dict(zip(cmd, cmd[1:], strict=False))
            seen[flags["-Q"]] = int(flags["--concurrency"])
            assert flags["--pool"] == "threads" and flags["-n"] == f"{flags['-Q']}@%h"
            assert svc["depends_on"]["redis"]["condition"] == "service_healthy"
            test = " ".join(svc["healthcheck"]["test"])
            assert "panel-heartbeat-ok" in test and "inspect" not in test
    assert seen == CONCURRENCY


def test_compose_runs_no_beat_the_control_workers_tick_themselves() -> None:
    """The sweep and the batch ticks run in the control workers (workers/duties.py): nothing runs
    `celery beat`, alone or embedded with -B, so no service must be kept to exactly one replica."""
    services = compose()["services"]
    assert "beat" not in services
    for name, svc in services.items():
        cmd = svc.get("command", [])
        assert "beat" not in cmd and "-B" not in cmd and "--beat" not in cmd, name


def test_compose_up_works_keyless() -> None:
    """With no environment at all, every provider URL resolves to the simulator, and the
    simulator is in the default set of services (no profile to remember)."""
    services = compose()["services"]
    assert "profiles" not in services["sim"]
    for name, svc in services.items():
        env = svc.get("environment") or {}
        for var in ("OPENAI_BASE_URL", "FIREWORKS_BASE_URL", "ANTHROPIC_BASE_URL"):
            if var in env:
                assert interpolate_defaults(env[var]).startswith("http://sim:8900"), (name, var)


def test_compose_redis_and_flower_settings() -> None:
    services = compose()["services"]
    cmd = " ".join(services["redis"]["command"])
    assert "--appendonly yes" in cmd and "--maxmemory-policy noeviction" in cmd
    assert '--requirepass "$$REDIS_PASSWORD"' in cmd
    assert services["redis"]["environment"]["REDIS_PASSWORD"].startswith("${REDIS_PASSWORD")
    assert services["flower"]["environment"]["FLOWER_BASIC_AUTH"].startswith("${FLOWER_BASIC_AUTH")
    # Published ports are bound to loopback: the local defaults are not secrets.
    for name in ("redis", "flower"):
        for port in services[name].get("ports", []):
            assert str(port).startswith("127.0.0.1:"), (name, port)


def test_env_example_documents_every_compose_variable() -> None:
    used = set(re.findall(r"\$\{(\w+)", COMPOSE.read_text()))
    documented = set(re.findall(r"^#?\s*(\w+)=", (REPO / ".env.example").read_text(), re.M))
    assert used <= documented, sorted(used - documented)


def test_compose_runs_the_gateway_on_loopback_with_a_healthcheck() -> None:
    gw = compose()["services"]["gateway"]
    assert gw["command"][:2] == ["panel", "serve"]
    assert all(str(p).startswith("127.0.0.1:") for p in gw["ports"])
    assert "/healthz" in " ".join(gw["healthcheck"]["test"])
    assert gw["depends_on"]["redis"]["condition"] == "service_healthy"
    assert not any("API_KEY" in k for k in gw["environment"]), "the gateway calls no provider"
