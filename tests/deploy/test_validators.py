"""The offline validators pass on our files and reject deliberately broken ones, so a green
check means something: compose-spec schema, `docker-compose config`, `kubernetes-validate
--strict`, KEDA's CRD schemas, `kubectl kustomize`."""

from __future__ import annotations

import copy
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.deploy.artefacts import (
    BASE,
    COMPOSE,
    OVERLAY,
    REPO,
    assert_ok,
    assert_rejected,
    compose,
    container,
    keda_schema,
    tool,  # fmt: skip
    validate,
)


def test_compose_matches_the_compose_spec() -> None:
    tool(validate.check_jsonschema)
    assert_ok([validate.compose_schema(COMPOSE)])


def test_compose_resolves_with_docker_compose_config() -> None:
    tool(validate.docker_compose)
    assert_ok([validate.compose_config(COMPOSE)])


def test_overlay_validates_against_kubernetes_and_keda_schemas(rendered: list[dict]) -> None:
    keda_schema()
    tool(validate.kubernetes_validate)
    tool(validate.check_jsonschema)
    results = validate.validate_objects(rendered, "overlay")
    assert_ok(results)
    kinds = {o["kind"] for o in rendered}
    assert {"ScaledObject", "TriggerAuthentication", "Deployment", "StatefulSet"} <= kinds


def test_base_renders_and_validates_on_its_own() -> None:
    keda_schema()
    tool(validate.kubectl)
    tool(validate.kubernetes_validate)
    tool(validate.check_jsonschema)
    assert_ok(validate.check_kustomization(BASE))


def test_validate_script_exits_zero() -> None:
    keda_schema()
    tool(validate.kubectl)
    tool(validate.docker_compose)
    tool(validate.kubernetes_validate)
    proc = subprocess.run(["sh", str(REPO / "deploy" / "validate.sh")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "FAIL" not in proc.stdout


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
        lambda d: d["services"]["flower"]["depends_on"].update({"redis-typo": {"condition": "service_healthy"}})
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
    keda_schema()
    tool(validate.check_jsonschema)

    def bad(so: dict) -> None:
        trig = so["spec"]["triggers"][0]
        trig["authRef"] = trig.pop("authenticationRef")

    objs = _mutated(rendered, "ScaledObject", "panel-worker-llm-economy", bad)
    assert "authRef" in assert_rejected(validate.validate_objects(objs, "t"))


def test_scaledobject_with_a_numeric_list_length_is_rejected(rendered: list[dict]) -> None:
    """Trigger metadata is a map of strings: an unquoted number is a real, common mistake."""
    keda_schema()
    tool(validate.check_jsonschema)

    def bad(so: dict) -> None:
        so["spec"]["triggers"][1]["metadata"]["listLength"] = 64

    assert_rejected(validate.validate_objects(_mutated(rendered, "ScaledObject", "panel-worker-control", bad), "t"))


def test_scaledobject_with_a_misspelt_scaling_modifier_is_rejected(rendered: list[dict]) -> None:
    keda_schema()
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
