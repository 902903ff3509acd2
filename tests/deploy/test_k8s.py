"""The rendered Kubernetes manifests keep the properties the fleet relies on (k8s/README.md says
why): a worker Deployment per queue, KEDA on every priority list, heartbeat probes, PDBs, no
beat (the control pods tick), non-root pods, a persistent Redis, and overlays a user will write."""

from __future__ import annotations

import ast
import shutil
from pathlib import Path

from tests.deploy.artefacts import (
    CONCURRENCY,
    METRICS_PORT,
    REPO,
    SCALE_TO_ZERO,
    by_kind,
    config_map,
    container,
    env_of,  # fmt: skip
    pod_specs,
    tool,
    validate,
    workers,
)


def test_queues_match_the_celery_app() -> None:
    tree = ast.parse((REPO / "workers" / "app.py").read_text())
    queues = next(
        ast.literal_eval(n.value)
        for n in tree.body
        if isinstance(n, ast.Assign) and any(getattr(t, "id", None) == "QUEUES" for t in n.targets)
    )
    assert set(queues) == set(CONCURRENCY)


def test_a_worker_deployment_per_queue_with_its_pool(rendered: list[dict]) -> None:
    ws = workers(rendered)
    assert set(ws) == set(CONCURRENCY)
    for queue, d in ws.items():
        args = container(d, "worker")["args"]
        flags = dict(zip(args, args[1:], strict=False))
        assert args[:4] == ["celery", "-A", "workers.app", "worker"]
        assert flags["-Q"] == queue
        assert flags["-n"] == f"{queue}@%h"
        assert flags["--pool"] == "threads"
        assert int(flags["--concurrency"]) == CONCURRENCY[queue]
        assert {"--without-mingle", "--without-gossip", "-E"} <= set(args)
        # KEDA owns the replica count; a replicas field would reset it on every apply.
        assert "replicas" not in d["spec"], queue


def _priority_lists(queue: str) -> set[str]:
    """The Redis lists kombu uses for `queue`, from the transport options the code ships."""
    from producer.settings import Settings

    opts = Settings().transport_options()
    sep = opts["sep"]
    return {queue if step == 0 else f"{queue}{sep}{step}" for step in opts["priority_steps"]}


def test_keda_watches_every_priority_list_and_sums_them(rendered: list[dict]) -> None:
    ws = workers(rendered)
    sos = {so["spec"]["scaleTargetRef"]["name"]: so for so in by_kind(rendered, "ScaledObject").values()}
    auths = by_kind(rendered, "TriggerAuthentication")
    cm = config_map(rendered)
    for queue, d in ws.items():
        so = sos.pop(d["metadata"]["name"])
        triggers = so["spec"]["triggers"]
        assert {t["type"] for t in triggers} == {"redis"}
        assert {t["metadata"]["listName"] for t in triggers} == _priority_lists(queue), queue
        names = [t["name"] for t in triggers]
        assert len(set(names)) == len(names) == len(triggers)

        # The formula adds every trigger exactly once (KEDA alone would take their max).
        mods = so["spec"]["advanced"]["scalingModifiers"]
        terms = [t.strip() for t in mods["formula"].split("+")]
        assert sorted(terms) == sorted(names), mods["formula"]
        assert float(mods["target"]) > 0
        assert mods.get("metricType", "AverageValue") == "AverageValue"

        c = container(d, so["spec"]["scaleTargetRef"].get("envSourceContainerName"))
        url = env_of(c)["PANEL_REDIS_URL"]["value"]
        for t in triggers:
            md = t["metadata"]
            # KEDA reads the same Redis and database as the workers.
            assert md["addressFromEnv"] == "PANEL_REDIS_ADDRESS" and "PANEL_REDIS_ADDRESS" in cm
            assert "$(PANEL_REDIS_ADDRESS)" in url
            assert url.endswith("/" + md["databaseIndex"])
            assert int(md["listLength"]) > 0
            # ...with the password from the same Secret key.
            auth = auths[t["authenticationRef"]["name"]]
            (ref,) = [r for r in auth["spec"]["secretTargetRef"] if r["parameter"] == "password"]
            worker_ref = env_of(c)["REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"]
            assert (ref["name"], ref["key"]) == (worker_ref["name"], worker_ref["key"])

        expected_min = 0 if queue in SCALE_TO_ZERO else 1
        assert so["spec"]["minReplicaCount"] == expected_min, queue
        assert so["spec"]["maxReplicaCount"] >= max(1, expected_min)
    assert not sos, f"ScaledObjects without a worker Deployment: {sorted(sos)}"


def test_keda_reaches_redis_by_its_fully_qualified_name(rendered: list[dict], overlay_namespace: str) -> None:
    """The KEDA operator runs in its own namespace: a short service name would not resolve there."""
    host = config_map(rendered)["PANEL_REDIS_ADDRESS"].rsplit(":", 1)[0]
    assert host.endswith(f".{overlay_namespace}.svc.cluster.local"), host


def test_no_probe_uses_celery_inspect_ping(rendered: list[dict]) -> None:
    for where, spec in pod_specs(rendered):
        for c in spec["containers"]:
            for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
                cmd = " ".join(c.get(probe, {}).get("exec", {}).get("command", []))
                assert not ("inspect" in cmd and "ping" in cmd), f"{where} {probe}: {cmd}"


def test_workers_have_heartbeat_probes_and_metrics(rendered: list[dict]) -> None:
    for queue, d in workers(rendered).items():
        c = container(d, "worker")
        for probe in ("livenessProbe", "startupProbe", "readinessProbe"):
            assert c[probe]["exec"]["command"][0] == "panel-heartbeat-ok", (queue, probe)
        live_age = int(c["livenessProbe"]["exec"]["command"][1])
        assert live_age >= 30, "the bootstep touches every 5 s: leave room for a busy timer"
        # Startup gets generous time (import, policies, Redis possibly starting too).
        s = c["startupProbe"]
        assert s["periodSeconds"] * s["failureThreshold"] >= 120
        ports = {p["name"]: p["containerPort"] for p in c["ports"]}
        assert ports["metrics"] == METRICS_PORT
        ann = d["spec"]["template"]["metadata"]["annotations"]
        assert ann["prometheus.io/scrape"] == "true" and ann["prometheus.io/port"] == str(METRICS_PORT)
        assert config_map(rendered)["PANEL_METRICS_PORT"] == str(METRICS_PORT)
        # The heartbeat file lives on the writable /tmp volume.
        assert any(m["mountPath"] == "/tmp" for m in c["volumeMounts"])
        assert c["resources"]["requests"] and c["resources"]["limits"]


def test_every_worker_has_a_pod_disruption_budget_that_matches_it(rendered: list[dict]) -> None:
    pdbs = list(by_kind(rendered, "PodDisruptionBudget").values())
    for queue, d in workers(rendered).items():
        labels = d["spec"]["template"]["metadata"]["labels"]
        matching = [p for p in pdbs if p["spec"]["selector"]["matchLabels"].items() <= labels.items()]
        assert len(matching) == 1, queue
        # maxUnavailable lets a drain proceed even for a one-pod (or zero-pod) queue.
        assert matching[0]["spec"].get("maxUnavailable") == 1, queue


def test_no_beat_the_control_pods_run_the_periodic_duties(rendered: list[dict]) -> None:
    """The sweep and the batch ticks run in the control pods (workers/duties.py): no Deployment runs
    `celery beat`, alone or embedded with -B, so none must be kept to exactly one replica."""
    deployments = by_kind(rendered, "Deployment")
    assert "panel-beat" not in deployments
    for name, d in deployments.items():
        for c in d["spec"]["template"]["spec"]["containers"]:
            args = c.get("args", [])
            assert "beat" not in args and "-B" not in args and "--beat" not in args, name
    control = container(workers(rendered)["control"], "worker")["args"]
    assert control[:4] == ["celery", "-A", "workers.app", "worker"] and "control" in control


def test_everything_runs_non_root(rendered: list[dict]) -> None:
    for where, spec in pod_specs(rendered):
        assert spec["securityContext"]["runAsNonRoot"] is True, where
        assert spec["securityContext"].get("runAsUser", 0) != 0, where
        assert spec.get("automountServiceAccountToken") is False, where
        for c in spec["containers"]:
            assert c["securityContext"]["allowPrivilegeEscalation"] is False, where
            assert c["securityContext"]["capabilities"]["drop"] == ["ALL"], where


def test_redis_is_persistent_and_never_evicts(rendered: list[dict]) -> None:
    redis = by_kind(rendered, "StatefulSet")["panel-redis"]
    c = container(redis, "redis")
    cmd = " ".join(c["command"])
    assert "--appendonly yes" in cmd
    assert "--maxmemory-policy noeviction" in cmd
    assert '--requirepass "$REDIS_PASSWORD"' in cmd
    assert "secretKeyRef" in env_of(c)["REDIS_PASSWORD"]["valueFrom"]
    assert redis["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "data"
    assert any(m["name"] == "data" and m["mountPath"] == "/data" for m in c["volumeMounts"])


def test_one_image_runs_every_panel_role_and_the_overlay_pins_it(rendered: list[dict]) -> None:
    images = {
        c["image"]
        for o in by_kind(rendered, "Deployment").values()
        for c in o["spec"]["template"]["spec"]["containers"]
    }
    assert len(images) == 1, images
    (image,) = images
    assert not image.endswith(":latest") and ":" in image


def _overlay(tmp_path: Path, body: str) -> Path:
    """An overlay beside a copy of k8s/, as a user's own overlay would sit."""
    shutil.copytree(REPO / "k8s", tmp_path / "k8s", ignore=shutil.ignore_patterns("overlays"))
    d = tmp_path / "k8s" / "overlays" / "mine"
    d.mkdir(parents=True)
    (d / "kustomization.yaml").write_text(body)
    return d


def test_external_redis_component_removes_the_statefulset(tmp_path: Path) -> None:
    tool(validate.kubectl)
    d = _overlay(
        tmp_path,
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nnamespace: mine\n"
        "resources: [../../base]\ncomponents: [../../components/external-redis]\n"
        "configMapGenerator:\n  - name: panel-config\n    behavior: merge\n"
        "    literals: [PANEL_REDIS_ADDRESS=my-redis.example.internal:6379]\n",
    )
    objs = validate.split_objects(validate.kustomize_build(d))
    assert "panel-redis-headless" not in by_kind(objs, "Service")
    assert "panel-redis" not in by_kind(objs, "StatefulSet") and "panel-redis" not in by_kind(objs, "Service")
    assert config_map(objs)["PANEL_REDIS_ADDRESS"] == "my-redis.example.internal:6379"
    assert len(workers(objs)) == len(CONCURRENCY)


def test_a_name_prefix_renames_keda_references_too(tmp_path: Path) -> None:
    """k8s/base/kustomizeconfig.yaml teaches kustomize the references inside KEDA's kinds."""
    tool(validate.kubectl)
    d = _overlay(
        tmp_path,
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nnamePrefix: blue-\n"
        "resources: [../../base]\n",
    )
    objs = validate.split_objects(validate.kustomize_build(d))
    deployments = set(by_kind(objs, "Deployment"))
    auths = set(by_kind(objs, "TriggerAuthentication"))
    for so in by_kind(objs, "ScaledObject").values():
        assert so["spec"]["scaleTargetRef"]["name"] in deployments
        assert {t["authenticationRef"]["name"] for t in so["spec"]["triggers"]} <= auths


def test_the_gateway_is_a_probed_service_with_a_disruption_budget(rendered: list[dict]) -> None:
    d = by_kind(rendered, "Deployment")["panel-gateway"]
    c = container(d, "gateway")
    assert c["args"][:2] == ["panel", "serve"] and "0.0.0.0" in c["args"]
    assert d["spec"]["replicas"] >= 2, "stateless: two replicas so a drain or a crash keeps it up"
    for probe in ("readinessProbe", "livenessProbe"):
        assert c[probe]["httpGet"]["path"] == "/healthz"
    assert "PANEL_REDIS_URL" in env_of(c)
    assert not any("API_KEY" in e for e in env_of(c)), "the gateway calls no provider"
    ann = d["spec"]["template"]["metadata"]["annotations"]
    assert ann["prometheus.io/path"] == "/metrics" and ann["prometheus.io/port"] == "8080"
    svc = by_kind(rendered, "Service")["panel-gateway"]
    assert svc["spec"]["selector"].items() <= d["spec"]["template"]["metadata"]["labels"].items()
    pdbs = [p for p in by_kind(rendered, "PodDisruptionBudget").values()
            if p["spec"]["selector"]["matchLabels"].items() <= d["spec"]["template"]["metadata"]["labels"].items()]
    assert len(pdbs) == 1 and pdbs[0]["spec"]["maxUnavailable"] == 1
