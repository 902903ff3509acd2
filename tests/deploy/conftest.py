"""Fixtures over the rendered example overlay (kubectl kustomize, no cluster needed)."""

from __future__ import annotations

import pytest
import yaml

from tests.deploy.artefacts import OVERLAY, tool, validate


@pytest.fixture(scope="module")
def rendered() -> list[dict]:
    tool(validate.kubectl)
    return validate.split_objects(validate.kustomize_build(OVERLAY))


@pytest.fixture(scope="module")
def overlay_namespace() -> str:
    return yaml.safe_load((OVERLAY / "kustomization.yaml").read_text())["namespace"]
