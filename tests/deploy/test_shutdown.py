"""How a worker is stopped, the same in Compose and Kubernetes: SIGTERM, which Celery turns into a
warm shutdown (stop consuming, finish running calls), bounded by a grace period above the longest
call; Celery's soft shutdown stays below the grace period.

What these settings do was measured on real workers (tests/ops/test_sigterm.py): SIGTERM lets a
call in flight finish; SIGKILL after the grace period leaves the message unacked and another
worker runs the call again. `worker_soft_shutdown_timeout` applies only to a *cold* shutdown
(SIGQUIT, or SIGTERM remapped by REMAP_SIGTERM=SIGQUIT), and there the threads pool cannot cancel
a running call (Celery raises NotImplementedError from TaskPool.terminate_job), so SIGTERM must
stay warm.
"""

from __future__ import annotations

import re

from tests.deploy.artefacts import (
    CONCURRENCY,
    LONGEST_CALL_S,
    REPO,
    compose,
    config_map,
    container,
    env_of,
    interpolate_defaults,  # fmt: skip
    workers,
)


def compose_workers() -> dict[str, dict]:
    """queue -> compose worker service."""
    out = {}
    for svc in compose()["services"].values():
        cmd = svc.get("command", [])
        if cmd[:4] == ["celery", "-A", "workers.app", "worker"]:
            out[dict(zip(cmd, cmd[1:], strict=False))["-Q"]] = svc
    return out


def seconds(duration: str) -> int:
    m = re.fullmatch(r"(\d+)s", duration)
    assert m, f"stop_grace_period {duration!r}: write whole seconds, e.g. 180s"
    return int(m.group(1))


def test_grace_period_covers_the_longest_call_and_the_soft_shutdown(rendered: list[dict]) -> None:
    for queue, d in workers(rendered).items():
        grace = d["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        soft = float(env_of(container(d, "worker"))["PANEL_SOFT_SHUTDOWN_S"]["value"])
        assert grace > LONGEST_CALL_S, queue
        assert 0 < soft < grace, queue


def test_compose_grace_period_covers_the_longest_call_and_the_soft_shutdown() -> None:
    services = compose_workers()
    assert set(services) == set(CONCURRENCY)
    for queue, svc in services.items():
        grace = seconds(svc["stop_grace_period"])
        soft = float(interpolate_defaults(str(svc["environment"]["PANEL_SOFT_SHUTDOWN_S"])))
        assert grace > LONGEST_CALL_S, queue
        assert 0 < soft < grace, queue


def test_compose_and_kubernetes_stop_each_worker_alike(rendered: list[dict]) -> None:
    k8s = workers(rendered)
    for queue, svc in compose_workers().items():
        pod = k8s[queue]["spec"]["template"]["spec"]
        k8s_env = env_of(container(k8s[queue], "worker"))
        assert seconds(svc["stop_grace_period"]) == pod["terminationGracePeriodSeconds"], queue
        compose_soft = float(interpolate_defaults(str(svc["environment"]["PANEL_SOFT_SHUTDOWN_S"])))
        assert compose_soft == float(k8s_env["PANEL_SOFT_SHUTDOWN_S"]["value"]), queue


def test_sigterm_stays_celerys_warm_shutdown_everywhere(rendered: list[dict]) -> None:
    """REMAP_SIGTERM=SIGQUIT would turn SIGTERM into a cold shutdown, which on the threads pool
    crashes instead of cancelling; a different stop signal would skip the warm shutdown."""
    for queue, svc in compose_workers().items():
        assert "REMAP_SIGTERM" not in (svc.get("environment") or {}), queue
        assert svc.get("stop_signal", "SIGTERM") == "SIGTERM", queue
    for queue, d in workers(rendered).items():
        c = container(d, "worker")
        assert "REMAP_SIGTERM" not in env_of(c), queue
        assert "lifecycle" not in c, f"{queue}: a preStop hook would spend the grace period before SIGTERM"
    for o in rendered:
        if o["kind"] == "ConfigMap":
            assert "REMAP_SIGTERM" not in o.get("data", {}), o["metadata"]["name"]
    for path in ("Dockerfile", "deploy/docker/panel-entrypoint", ".env.example"):
        assert not re.search(r"^\s*(ENV\s+)?REMAP_SIGTERM", (REPO / path).read_text(), re.M), path
    assert not re.search(r"^STOPSIGNAL", (REPO / "Dockerfile").read_text(), re.M)
    assert "exec " in (REPO / "deploy" / "docker" / "panel-entrypoint").read_text(), "Celery must be PID 1"


def test_no_deployment_raises_the_call_timeout_past_the_grace_period(rendered: list[dict]) -> None:
    """LONGEST_CALL_S is the workers' default call timeout; an override must still fit the grace."""
    from_config_map = config_map(rendered).get("PANEL_CALL_TIMEOUT_S")
    for queue, d in workers(rendered).items():
        value = env_of(container(d, "worker")).get("PANEL_CALL_TIMEOUT_S", {}).get("value", from_config_map)
        if value is not None:
            assert float(value) < d["spec"]["template"]["spec"]["terminationGracePeriodSeconds"], queue
    for queue, svc in compose_workers().items():
        value = (svc.get("environment") or {}).get("PANEL_CALL_TIMEOUT_S")
        if value is not None:
            assert float(interpolate_defaults(str(value))) < seconds(svc["stop_grace_period"]), queue
