"""Secrets stay in Secrets: no value inline in a rendered object or the compose file, Flower
behind auth, provider keys only where a model is called, no real key in any artefact."""

from __future__ import annotations

import re

import pytest
import yaml

from tests.deploy.artefacts import REPO, by_kind, compose, config_map, container, env_of, pod_specs

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
    for where, spec in pod_specs(rendered):
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


_REAL_KEY = re.compile(r"(sk-(ant-)?[A-Za-z0-9_-]{20,}|fw_[A-Za-z0-9]{20,}|AKIA[0-9A-Z]{16})")


@pytest.mark.parametrize(
    "path", [".env.example", "docker-compose.yml", "k8s/overlays/example/secrets.example.yaml", "k8s/README.md"]
)
def test_no_real_keys_in_the_artefacts(path: str) -> None:
    text = (REPO / path).read_text()
    assert not _REAL_KEY.search(text), path


def test_provider_keys_reach_only_the_workers(rendered: list[dict]) -> None:
    """Flower and the gateway never call a model: least privilege keeps the keys out of them."""
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
