"""Deployment artefacts: the offline validators pass on ours and reject broken ones, and the
rendered manifests keep the properties the fleet relies on (see k8s/README.md for the why).

Tools: deploy/requirements-validate.txt (pip), deploy/apt-validate.txt (apt), kubectl. A test
whose tool is missing is skipped with the install command in its reason.
"""

from __future__ import annotations

import ast
import copy
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
OVERLAY = REPO / "k8s" / "overlays" / "example"
BASE = REPO / "k8s" / "base"
COMPOSE = REPO / "docker-compose.yml"

_spec = importlib.util.spec_from_file_location("panel_deploy_validate", REPO / "deploy" / "validate.py")
assert _spec and _spec.loader
validate = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = validate
_spec.loader.exec_module(validate)

# The deployment contract: queue -> threads per worker process. Cross-checked against
# workers/app.py's QUEUES below, so a new queue cannot ship without its Deployment.
CONCURRENCY = {"control": 16, "llm.economy": 64, "llm.workhorse": 64, "llm.frontier": 32, "llm.batch": 8}
SCALE_TO_ZERO = {"llm.batch", "llm.frontier"}
LONGEST_CALL_S = 120
METRICS_PORT = 9808


def tool(fn: Any) -> Any:
    """Call a validate.* tool lookup; skip the test (with the install hint) if it is missing."""
    try:
        return fn()
    except validate.ToolMissing as e:
        pytest.skip(f"validation tool not installed here: {e}")


def assert_ok(results: list[Any]) -> None:
    bad = [str(r) for r in results if not r.ok]
    assert not bad, "\n".join(bad)


def assert_rejected(results: list[Any]) -> str:
    bad = [r for r in results if not r.ok]
    assert bad, "a deliberately broken input passed validation:\n" + "\n".join(str(r) for r in results)
    return "\n".join(r.output for r in bad)


# --- fixtures --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def rendered() -> list[dict]:
    tool(validate.kubectl)
    return validate.split_objects(validate.kustomize_build(OVERLAY))


@pytest.fixture(scope="module")
def overlay_namespace() -> str:
    return yaml.safe_load((OVERLAY / "kustomization.yaml").read_text())["namespace"]


def by_kind(objects: list[dict], kind: str) -> dict[str, dict]:
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == kind}


def workers(objects: list[dict]) -> dict[str, dict]:
    """queue -> worker Deployment."""
    out = {}
    for d in by_kind(objects, "Deployment").values():
        labels = d["metadata"].get("labels", {})
        if labels.get("app.kubernetes.io/component") == "worker":
            out[labels["panel-fleet/queue"]] = d
    return out


def container(deploy: dict, name: str | None = None) -> dict:
    cs = deploy["spec"]["template"]["spec"]["containers"]
    return next(c for c in cs if name is None or c["name"] == name)


def env_of(c: dict) -> dict[str, dict]:
    return {e["name"]: e for e in c.get("env", [])}


def config_map(objects: list[dict]) -> dict[str, str]:
    (cm,) = [o for o in objects if o["kind"] == "ConfigMap" and o["metadata"]["name"].startswith("panel-config")]
    return cm["data"]


def compose() -> dict:
    # PyYAML resolves the anchors and `<<` merge keys the file uses.
    return yaml.safe_load(COMPOSE.read_text())


def interpolate_defaults(value: str) -> str:
    """Compose interpolation with an empty environment: ${X:-d} -> d, ${X} -> ''."""
    return re.sub(r"\$\{(\w+)(?::?-([^}]*))?\}", lambda m: m.group(2) or "", value)


# --- the validators pass on our files ---------------------------------------------------------


def test_compose_matches_the_compose_spec() -> None:
    tool(validate.check_jsonschema)
    assert_ok([validate.compose_schema(COMPOSE)])


def test_compose_resolves_with_docker_compose_config() -> None:
    tool(validate.docker_compose)
    assert_ok([validate.compose_config(COMPOSE)])


def test_overlay_validates_against_kubernetes_and_keda_schemas(rendered: list[dict]) -> None:
    tool(validate.kubernetes_validate)
    tool(validate.check_jsonschema)
    results = validate.validate_objects(rendered, "overlay")
    assert_ok(results)
    kinds = {o["kind"] for o in rendered}
    assert {"ScaledObject", "TriggerAuthentication", "Deployment", "StatefulSet"} <= kinds


def test_base_renders_and_validates_on_its_own() -> None:
    tool(validate.kubectl)
    tool(validate.kubernetes_validate)
    tool(validate.check_jsonschema)
    assert_ok(validate.check_kustomization(BASE))


def test_validate_script_exits_zero() -> None:
    tool(validate.kubectl)
    tool(validate.docker_compose)
    tool(validate.kubernetes_validate)
    proc = subprocess.run(["sh", str(REPO / "deploy" / "validate.sh")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "FAIL" not in proc.stdout


# --- ...and reject broken ones (so they can fail) --------------------------------------------


@pytest.fixture
def broken_compose(tmp_path: Path):
    def make(mutate) -> Path:  # type: ignore[no-untyped-def]
        data = compose()
        mutate(data)
        # The copy keeps the original's directory semantics (build context '.').
        shutil.copytree(REPO / "deploy" / "docker", tmp_path / "deploy" / "docker")
        (tmp_path / "Dockerfile").write_text("FROM scratch\n")
        path = tmp_path / "docker-compose.yml"
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        return path

    return make


def test_compose_unknown_service_key_is_rejected_by_both_checks(broken_compose) -> None:  # type: ignore[no-untyped-def]
    tool(validate.check_jsonschema)
    tool(validate.docker_compose)
    path = broken_compose(lambda d: d["services"]["worker-control"].update(restart_polcy="always"))
    assert "restart_polcy" in assert_rejected([validate.compose_schema(path)])
    assert "restart_polcy" in assert_rejected([validate.compose_config(path)])


def test_compose_dependency_on_a_missing_service_is_caught_by_config(broken_compose) -> None:  # type: ignore[no-untyped-def]
    """The schema cannot see references; this is why both checks run."""
    tool(validate.docker_compose)
    path = broken_compose(
        lambda d: d["services"]["beat"]["depends_on"].update({"redis-typo": {"condition": "service_healthy"}})
    )
    assert "redis-typo" in assert_rejected([validate.compose_config(path)])


def _mutated(rendered: list[dict], kind: str, name: str, mutate) -> list[dict]:  # type: ignore[no-untyped-def]
    objs = copy.deepcopy(rendered)
    target = next(o for o in objs if o["kind"] == kind and o["metadata"]["name"] == name)
    mutate(target)
    return objs


def test_deployment_with_a_wrong_type_is_rejected(rendered: list[dict]) -> None:
    tool(validate.kubernetes_validate)

    def bad(d: dict) -> None:
        d["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] = "three minutes"

    out = assert_rejected(validate.validate_objects(_mutated(rendered, "Deployment", "panel-worker-control", bad), "t"))
    assert "terminationGracePeriodSeconds" in out


def test_deployment_with_an_unknown_field_is_rejected_in_strict_mode(rendered: list[dict]) -> None:
    tool(validate.kubernetes_validate)

    def bad(d: dict) -> None:
        container(d)["livenesProbe"] = container(d)["livenessProbe"]  # the typo a reviewer misses

    out = assert_rejected(validate.validate_objects(_mutated(rendered, "Deployment", "panel-flower", bad), "t"))
    assert "livenesProbe" in out


def test_unknown_api_version_of_a_core_kind_is_rejected(rendered: list[dict]) -> None:
    tool(validate.kubernetes_validate)
    objs = _mutated(rendered, "PodDisruptionBudget", "panel-worker-control", lambda p: p.update(apiVersion="policy/v2"))
    assert_rejected(validate.validate_objects(objs, "t"))


def test_scaledobject_with_a_bad_trigger_field_is_rejected(rendered: list[dict]) -> None:
    tool(validate.check_jsonschema)

    def bad(so: dict) -> None:
        trig = so["spec"]["triggers"][0]
        trig["authRef"] = trig.pop("authenticationRef")

    objs = _mutated(rendered, "ScaledObject", "panel-worker-llm-economy", bad)
    assert "authRef" in assert_rejected(validate.validate_objects(objs, "t"))


def test_scaledobject_with_a_numeric_list_length_is_rejected(rendered: list[dict]) -> None:
    """Trigger metadata is a map of strings: an unquoted number is a real, common mistake."""
    tool(validate.check_jsonschema)

    def bad(so: dict) -> None:
        so["spec"]["triggers"][1]["metadata"]["listLength"] = 64

    assert_rejected(validate.validate_objects(_mutated(rendered, "ScaledObject", "panel-worker-control", bad), "t"))


def test_scaledobject_with_a_misspelt_scaling_modifier_is_rejected(rendered: list[dict]) -> None:
    tool(validate.check_jsonschema)

    def bad(so: dict) -> None:
        mods = so["spec"]["advanced"]["scalingModifiers"]
        mods["formulas"] = mods.pop("formula")

    assert_rejected(validate.validate_objects(_mutated(rendered, "ScaledObject", "panel-worker-llm-batch", bad), "t"))


def test_triggerauthentication_without_a_key_is_rejected(rendered: list[dict]) -> None:
    tool(validate.check_jsonschema)
    objs = _mutated(
        rendered, "TriggerAuthentication", "panel-redis-auth", lambda t: t["spec"]["secretTargetRef"][0].pop("key")
    )
    assert_rejected(validate.validate_objects(objs, "t"))


def test_a_kind_without_a_schema_is_rejected_not_skipped(rendered: list[dict]) -> None:
    tool(validate.kubernetes_validate)
    monitor = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "ServiceMonitor",
        "metadata": {"name": "panel"},
        "spec": {"selector": {}},
    }
    assert "ServiceMonitor" in assert_rejected(validate.validate_objects([*rendered, monitor], "t"))


def test_a_broken_kustomization_is_rejected(tmp_path: Path) -> None:
    tool(validate.kubectl)
    shutil.copytree(OVERLAY, tmp_path / "overlays" / "example")
    # `../../base` from the copy points at tmp_path/base: make it a broken base.
    (tmp_path / "base").mkdir()
    (tmp_path / "base" / "kustomization.yaml").write_text("resources:\n  - missing.yaml\n")
    results = validate.check_kustomization(tmp_path / "overlays" / "example")
    assert "missing.yaml" in assert_rejected(results)


# --- structure of the rendered manifests -----------------------------------------------------


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


def test_grace_period_covers_the_longest_call_and_the_soft_shutdown(rendered: list[dict]) -> None:
    for queue, d in workers(rendered).items():
        grace = d["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        soft = float(env_of(container(d, "worker"))["PANEL_SOFT_SHUTDOWN_S"]["value"])
        assert grace > LONGEST_CALL_S, queue
        assert 0 < soft < grace, queue


def _all_pod_specs(objects: list[dict]) -> list[tuple[str, dict]]:
    return [
        (f"{o['kind']}/{o['metadata']['name']}", o["spec"]["template"]["spec"])
        for o in objects
        if o["kind"] in ("Deployment", "StatefulSet")
    ]


def test_no_probe_uses_celery_inspect_ping(rendered: list[dict]) -> None:
    for where, spec in _all_pod_specs(rendered):
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


def test_beat_is_a_single_recreated_pod(rendered: list[dict]) -> None:
    beat = by_kind(rendered, "Deployment")["panel-beat"]
    assert beat["spec"]["replicas"] == 1
    assert beat["spec"]["strategy"]["type"] == "Recreate"
    assert container(beat)["args"][:4] == ["celery", "-A", "workers.app", "beat"]


def test_everything_runs_non_root(rendered: list[dict]) -> None:
    for where, spec in _all_pod_specs(rendered):
        assert spec["securityContext"]["runAsNonRoot"] is True, where
        assert spec["securityContext"].get("runAsUser", 0) != 0, where
        assert spec.get("automountServiceAccountToken") is False, where
        for c in spec["containers"]:
            assert c["securityContext"]["allowPrivilegeEscalation"] is False, where
            assert c["securityContext"]["capabilities"]["drop"] == ["ALL"], where


_SECRETISH = re.compile(r"KEY|PASSWORD|PASSWD|SECRET|TOKEN|AUTH", re.I)


def test_no_secret_value_is_inline(rendered: list[dict]) -> None:
    secret_values = {
        v
        for s in by_kind(rendered, "Secret").values()
        for v in {**s.get("stringData", {}), **s.get("data", {})}.values()
    }
    assert secret_values
    for o in rendered:
        if o["kind"] == "Secret":
            continue
        text = yaml.safe_dump(o)
        for v in secret_values:
            assert v not in text, f"a Secret's value appears in {o['kind']}/{o['metadata']['name']}"
    for where, spec in _all_pod_specs(rendered):
        for c in spec["containers"]:
            for e in c.get("env", []):
                if _SECRETISH.search(e["name"]):
                    assert "secretKeyRef" in e.get("valueFrom", {}), f"{where}: {e['name']} must come from a Secret"
                if "value" in e and "@" in e["value"]:
                    # a URL with credentials: only references, e.g. $(REDIS_PASSWORD)
                    assert re.search(r"://[^@]*\$\(\w+\)@", e["value"]), f"{where}: {e['name']}"
    for key in config_map(rendered):
        assert not _SECRETISH.search(key), f"ConfigMap key {key} looks like a secret"


def test_flower_requires_auth(rendered: list[dict]) -> None:
    flower = by_kind(rendered, "Deployment")["panel-flower"]
    c = container(flower, "flower")
    auth = env_of(c)["FLOWER_BASIC_AUTH"]
    assert "secretKeyRef" in auth["valueFrom"]
    assert auth["valueFrom"]["secretKeyRef"].get("optional") is not True, "Flower must not start without auth"
    assert "FLOWER_UNAUTHENTICATED_API" not in env_of(c)
    assert not any(a.startswith("--basic-auth=") and "$(" not in a for a in c["args"])
    assert by_kind(rendered, "Service")["panel-flower"]["spec"]["type"] == "ClusterIP"


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


# --- docker-compose structure ----------------------------------------------------------------


def test_compose_has_a_worker_per_queue_and_the_supporting_services() -> None:
    services = compose()["services"]
    assert {"redis", "beat", "flower", "sim"} <= set(services)
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
            grace = svc["stop_grace_period"]
            assert grace.endswith("s") and int(grace[:-1]) > LONGEST_CALL_S
            soft = float(interpolate_defaults(str(svc["environment"]["PANEL_SOFT_SHUTDOWN_S"])))
            assert soft < int(grace[:-1])
    assert seen == CONCURRENCY


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


_REAL_KEY = re.compile(r"(sk-(ant-)?[A-Za-z0-9_-]{20,}|fw_[A-Za-z0-9]{20,}|AKIA[0-9A-Z]{16})")


@pytest.mark.parametrize(
    "path", [".env.example", "docker-compose.yml", "k8s/overlays/example/secrets.example.yaml", "k8s/README.md"]
)
def test_no_real_keys_in_the_artefacts(path: str) -> None:
    text = (REPO / path).read_text()
    assert not _REAL_KEY.search(text), path


def test_env_example_documents_every_compose_variable() -> None:
    used = set(re.findall(r"\$\{(\w+)", COMPOSE.read_text()))
    documented = set(re.findall(r"^#?\s*(\w+)=", (REPO / ".env.example").read_text(), re.M))
    assert used <= documented, sorted(used - documented)


# --- the image -------------------------------------------------------------------------------


def _dockerignore_regex(pattern: str) -> re.Pattern[str]:
    """Docker's .dockerignore glob (Go filepath.Match plus `**`): `*` and `?` stop at '/'."""
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**", i):
            out += ".*"
            i += 2
            if pattern.startswith("/", i):  # `**/x` also matches `x` at the top
                out = out[:-2] + "(?:.*/)?"
                i += 1
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out + r"\Z")


def _dockerignore_allows(rel: str) -> bool:
    """Docker's rule (moby patternmatcher.MatchesOrParentMatches): a pattern matches a path if it
    matches the path or one of its parent folders; the last matching pattern wins; `!` re-includes."""
    patterns = [
        ln.strip() for ln in (REPO / ".dockerignore").read_text().splitlines() if ln.strip() and not ln.startswith("#")
    ]
    parts = rel.strip("/").split("/")
    candidates = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    allowed = True
    for pat in patterns:
        neg = pat.startswith("!")
        rx = _dockerignore_regex(pat.lstrip("!").strip("/"))
        if any(rx.match(c) for c in candidates):
            allowed = neg
    return allowed


def _dockerfile_copies() -> list[str]:
    srcs = []
    for line in (REPO / "Dockerfile").read_text().splitlines():
        words = line.split()
        if words[:1] == ["COPY"] and not any(w.startswith("--from") for w in words):
            srcs += [w for w in words[1:-1] if not w.startswith("--")]
    return srcs


def test_dockerfile_copies_exist_and_are_in_the_build_context() -> None:
    srcs = _dockerfile_copies()
    assert srcs
    for src in srcs:
        assert (REPO / src).exists(), src
        assert _dockerignore_allows(src), f"{src} is excluded by .dockerignore"
    assert not _dockerignore_allows(".env")
    assert not _dockerignore_allows(".git")
    assert not _dockerignore_allows("workers/__pycache__/app.cpython-311.pyc")


def test_every_package_of_the_project_goes_into_the_image() -> None:
    import tomllib

    py = tomllib.loads((REPO / "pyproject.toml").read_text())
    includes = [p.rstrip("*") for p in py["tool"]["setuptools"]["packages"]["find"]["include"]]
    copied = {s.rstrip("/") for s in _dockerfile_copies()}
    for pkg in includes:
        assert pkg in copied, f"package {pkg} is not copied into the build stage"
        assert _dockerignore_allows(pkg), pkg
    readme = py["project"].get("readme")
    if readme:
        assert readme in copied


def test_dockerfile_runs_as_a_numeric_non_root_user() -> None:
    text = (REPO / "Dockerfile").read_text()
    users = re.findall(r"^USER\s+(\S+)", text, re.M)
    assert users and users[-1].split(":")[0].isdigit() and users[-1].split(":")[0] != "0"
    assert re.search(r"^ARG PYTHON_IMAGE=python:3\.11-slim", text, re.M)
    assert re.search(r'^CMD \["panel", "--help"\]', text, re.M)
    assert "ENV" in text and "PANEL_POLICIES=/app/policies" in text
    assert (REPO / "policies" / "models.yaml").is_file()


def test_the_project_builds_from_the_docker_build_context(tmp_path: Path) -> None:
    """What the build stage does, minus Docker: a wheel from exactly the files it copies."""
    pytest.importorskip("setuptools")
    ctx = tmp_path / "ctx"
    for src in ("pyproject.toml", "README.md", "producer", "workers", "sim", "evaluation"):
        assert src in {s.rstrip("/") for s in _dockerfile_copies()}
        s = REPO / src
        if s.is_dir():
            shutil.copytree(s, ctx / src, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info"))
        else:
            ctx.mkdir(exist_ok=True)
            shutil.copy(s, ctx / src)
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path / "out"), str(ctx)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (wheel,) = (tmp_path / "out").glob("panel_fleet-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for pkg in ("producer/cli.py", "workers/app.py", "sim/__init__.py"):
        assert pkg in names, pkg


def test_heartbeat_check_script(tmp_path: Path) -> None:
    script = REPO / "deploy" / "docker" / "panel-heartbeat-ok"
    assert os.access(script, os.X_OK) and os.access(REPO / "deploy" / "docker" / "panel-entrypoint", os.X_OK)
    hb = tmp_path / "hb"
    env = {**os.environ, "PANEL_HEARTBEAT_FILE": str(hb)}

    def rc(*args: str) -> int:
        return subprocess.run(["sh", str(script), *args], env=env, capture_output=True).returncode

    assert rc() == 1  # no file yet: not started
    hb.touch()
    assert rc() == 0
    old = time.time() - 90
    os.utime(hb, (old, old))
    assert rc("60") == 1  # stale: the worker's timer stopped
    assert rc("120") == 0


def test_entrypoint_clears_a_stale_heartbeat_then_execs(tmp_path: Path) -> None:
    hb = tmp_path / "hb"
    hb.touch()
    env = {**os.environ, "PANEL_HEARTBEAT_FILE": str(hb)}
    proc = subprocess.run(
        [
            "sh",
            str(REPO / "deploy" / "docker" / "panel-entrypoint"),
            "sh",
            "-c",
            'test ! -e "$PANEL_HEARTBEAT_FILE" && echo $$',
        ],
        env=env,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert not hb.exists()


# --- overlays a user will write --------------------------------------------------------------


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


def test_provider_keys_reach_only_the_workers(rendered: list[dict]) -> None:
    """Beat and Flower never call a model: least privilege keeps the keys out of them."""
    for name, d in by_kind(rendered, "Deployment").items():
        is_worker = d["metadata"]["labels"].get("app.kubernetes.io/component") == "worker"
        refs = {
            ef.get("secretRef", {}).get("name")
            for c in d["spec"]["template"]["spec"]["containers"]
            for ef in c.get("envFrom", [])
        }
        assert ("panel-provider-keys" in refs) == is_worker, name
    for name, svc in compose()["services"].items():
        has_keys = any(k.endswith("_API_KEY") for k in (svc.get("environment") or {}))
        assert has_keys == name.startswith("worker-"), name
