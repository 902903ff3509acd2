"""The deployment artefacts and how tests read them: paths, the offline validators
(deploy/validate.py), the deployment contract (queues, concurrency, ports, timeouts) and lookups
over rendered Kubernetes objects and the compose file.

Tools: deploy/requirements-validate.txt (pip), deploy/apt-validate.txt (apt), kubectl. A test
whose tool is missing is skipped with the install command in its reason.
"""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from producer.settings import Settings

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
# workers/app.py's QUEUES, so a new queue cannot ship without its Deployment.
CONCURRENCY = {"control": 16, "llm.economy": 64, "llm.workhorse": 64, "llm.frontier": 32, "llm.batch": 8}
SCALE_TO_ZERO = {"llm.batch", "llm.frontier"}
# The longest provider call: the per-call timeout the workers enforce (PANEL_CALL_TIMEOUT_S).
LONGEST_CALL_S = Settings().call_timeout_s
METRICS_PORT = 9808


def tool(fn: Any) -> Any:
    """Call a validate.* tool lookup; skip the test (with the install hint) if it is missing."""
    try:
        return fn()
    except validate.ToolMissing as e:
        pytest.skip(f"validation tool not installed here: {e}")


def keda_schema() -> None:
    """Skip (with the reason) when KEDA's ScaledObject schema is absent: it lives in ../shared,
    which a user's clone does not have; without it these checks would fail, or pass vacuously."""
    if not validate.KEDA_SCALEDOBJECT_SCHEMA.exists():
        pytest.skip(f"KEDA's ScaledObject schema not found at {validate.KEDA_SCALEDOBJECT_SCHEMA} "
                    "(../shared is absent in a user's clone; set PANEL_SHARED_DIR or PANEL_KEDA_SCHEMA)")  # fmt: skip


def assert_ok(results: list[Any]) -> None:
    bad = [str(r) for r in results if not r.ok]
    assert not bad, "\n".join(bad)


def assert_rejected(results: list[Any]) -> str:
    bad = [r for r in results if not r.ok]
    assert bad, "a deliberately broken input passed validation:\n" + "\n".join(str(r) for r in results)
    return "\n".join(r.output for r in bad)


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


def pod_specs(objects: list[dict]) -> list[tuple[str, dict]]:
    return [
        (f"{o['kind']}/{o['metadata']['name']}", o["spec"]["template"]["spec"])
        for o in objects
        if o["kind"] in ("Deployment", "StatefulSet")
    ]
