#!/usr/bin/env python3
"""Offline validation of panel-fleet's deployment artefacts: no Docker engine, no cluster.

    python3 deploy/validate.py                  # everything, from the repo root or anywhere
    python3 deploy/validate.py --only compose   # or: k8s

Checks, each by an independent tool so that one tool's blind spot is another's catch:

compose  docker-compose.yml
         1. check-jsonschema --builtin-schema vendor.compose-spec  (the Compose Specification's
            schema: unknown keys, wrong types)
         2. docker-compose config -q  (Debian's Compose 1.29: resolves anchors, interpolation and
            references, e.g. a `depends_on` naming no service, which the schema cannot see)
k8s      kubectl kustomize <overlay>, then each rendered object by kind:
         - Kubernetes' own kinds: kubernetes-validate --strict (unknown fields are errors), for
           each version in K8S_VERSIONS
         - ScaledObject: check-jsonschema against KEDA's CRD schema (../shared/schemas)
         - TriggerAuthentication: check-jsonschema against deploy/schemas (see its $comment)
         - any other kind fails: nothing rendered goes unchecked.

Exit status 0 only if every check passed. A missing tool is a failure that names the package to
install (deploy/requirements-validate.txt, deploy/apt-validate.txt), never a silent pass.
The functions are also used by tests/deploy, including on deliberately broken inputs.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
# The oldest Kubernetes we support and the newest the validator knows: an object must be valid
# on both (a field removed or added between them shows up here).
K8S_VERSIONS = ("1.30.0", "1.37.0")
# ../shared beside the clone (PANEL_SHARED_DIR elsewhere, e.g. from a git worktree), or PANEL_KEDA_SCHEMA
KEDA_SCALEDOBJECT_SCHEMA = Path(
    os.environ.get("PANEL_KEDA_SCHEMA")
    or Path(os.environ.get("PANEL_SHARED_DIR") or REPO.parent / "shared") / "schemas" / "keda-scaledobject.schema.json"
)
KEDA_TRIGGERAUTH_SCHEMA = REPO / "deploy" / "schemas" / "keda-triggerauthentication.schema.json"
KEDA_KINDS = {"ScaledObject": KEDA_SCALEDOBJECT_SCHEMA, "TriggerAuthentication": KEDA_TRIGGERAUTH_SCHEMA}


class ToolMissing(RuntimeError):
    """A validation tool is not installed; the message says which package provides it."""


@dataclass
class Result:
    name: str
    ok: bool
    output: str

    def __str__(self) -> str:
        head = f"{'PASS' if self.ok else 'FAIL'}  {self.name}"
        return head if self.ok or not self.output.strip() else f"{head}\n{_indent(self.output)}"


def _indent(text: str) -> str:
    return "\n".join("      " + line for line in text.strip().splitlines())


def _run(argv: list[str], cwd: Path | None = None, env: dict[str, str] | None = None) -> tuple[int, str]:
    proc = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    return proc.returncode, (proc.stdout + proc.stderr)


def _python_tool(module: str, package: str) -> list[str]:
    """Run a pip-installed tool as `python -m module`, so it works even where pip's scripts
    directory is not on PATH."""
    try:
        __import__(module)
    except ImportError:
        raise ToolMissing(f"python module {module!r} missing: pip install {package}") from None
    return [sys.executable, "-m", module]


def _binary(name: str, hint: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise ToolMissing(f"{name} not on PATH: {hint}")
    return path


def check_jsonschema() -> list[str]:
    return _python_tool("check_jsonschema", "check-jsonschema")


def kubernetes_validate() -> list[str]:
    return _python_tool("kubernetes_validate", "kubernetes-validate")


def docker_compose() -> str:
    return _binary("docker-compose", "apt-get install -y docker-compose (Debian's Compose 1.29)")


def kubectl() -> str:
    return _binary("kubectl", "install kubectl (it renders kustomize without a cluster)")


# --- compose ---------------------------------------------------------------------------------


def compose_schema(compose_file: Path) -> Result:
    code, out = _run([*check_jsonschema(), "--builtin-schema", "vendor.compose-spec", str(compose_file)])
    return Result(f"compose-spec schema: {compose_file.name}", code == 0, out)


def compose_config(compose_file: Path) -> Result:
    """`docker-compose config -q` in a clean environment, so that values on this machine (a
    developer's COMPOSE_PROFILES or a real key) cannot change the verdict: the file must resolve
    on its defaults alone, which is also what makes a keyless `docker compose up` work.

    Compose 1.29 is older than the file format we write, yet parses all of it (profiles,
    depends_on conditions, extension fields, merge keys). Should a future valid key be one it
    does not know, the compose-spec schema check above stays authoritative for the format and
    this check should be narrowed to reference resolution, not dropped."""
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "LC_ALL")}
    code, out = _run(
        [docker_compose(), "--project-directory", str(compose_file.parent), "-f", str(compose_file), "config", "-q"],
        cwd=compose_file.parent,
        env=env,
    )
    return Result(f"docker-compose config: {compose_file.name}", code == 0, out)


# --- kubernetes ------------------------------------------------------------------------------


def kustomize_build(directory: Path) -> str:
    code, out = _run([kubectl(), "kustomize", str(directory)])
    if code != 0:
        raise ValueError(f"kubectl kustomize {directory} failed:\n{out}")
    return out


def split_objects(rendered: str) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(rendered) if doc]


def validate_objects(objects: list[dict], label: str) -> list[Result]:
    """Route each rendered object to the validator that knows its kind."""
    results: list[Result] = []
    core: list[dict] = []
    keda: dict[str, list[dict]] = {}
    unknown: list[str] = []
    for obj in objects:
        kind, api = obj.get("kind"), str(obj.get("apiVersion", ""))
        if kind in KEDA_KINDS and api.startswith("keda.sh/"):
            keda.setdefault(kind, []).append(obj)
        elif "." in api.split("/")[0] and not api.split("/")[0].endswith(".k8s.io"):
            unknown.append(f"{kind} ({api}) {obj.get('metadata', {}).get('name')}")
        else:
            core.append(obj)
    if unknown:
        results.append(Result(f"{label}: kinds with a schema", False, "no validator for: " + ", ".join(unknown)))

    with tempfile.TemporaryDirectory(prefix="panel-validate-") as tmp:
        tmpdir = Path(tmp)
        if core:
            core_file = tmpdir / "core.yaml"
            core_file.write_text(yaml.safe_dump_all(core, sort_keys=False))
            for version in K8S_VERSIONS:
                code, out = _run([*kubernetes_validate(), "--strict", "--quiet", "-k", version, str(core_file)])
                # A kind kubernetes-validate has no schema for is only a warning there; here it
                # fails, or a typo in apiVersion would pass unchecked.
                ok = code == 0 and "Couldn't find schema" not in out
                results.append(
                    Result(f"{label}: {len(core)} objects, kubernetes-validate --strict -k {version}", ok, out)
                )
        for kind, objs in sorted(keda.items()):
            schema = KEDA_KINDS[kind]
            if not schema.is_file():
                results.append(Result(f"{label}: {kind}", False, f"schema not found: {schema} (set PANEL_KEDA_SCHEMA)"))
                continue
            files = []
            for i, obj in enumerate(objs):
                f = tmpdir / f"{kind}-{i}-{obj.get('metadata', {}).get('name', 'unnamed')}.yaml"
                f.write_text(yaml.safe_dump(obj, sort_keys=False))
                files.append(str(f))
            code, out = _run([*check_jsonschema(), "--schemafile", str(schema), *files])
            results.append(Result(f"{label}: {len(objs)} {kind}, check-jsonschema {schema.name}", code == 0, out))
    return results


def check_kustomization(directory: Path) -> list[Result]:
    label = f"kustomize {directory.relative_to(REPO) if directory.is_relative_to(REPO) else directory}"
    try:
        objects = split_objects(kustomize_build(directory))
    except ValueError as e:
        return [Result(label, False, str(e))]
    return [Result(f"{label}: renders {len(objects)} objects", True, ""), *validate_objects(objects, label)]


# --- main ------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", choices=("compose", "k8s"), help="run one group of checks")
    parser.add_argument("--compose-file", type=Path, default=REPO / "docker-compose.yml")
    parser.add_argument(
        "--overlay",
        type=Path,
        action="append",
        help="kustomize directory to check (repeatable; default: every k8s/overlays/*)",
    )
    args = parser.parse_args(argv)

    results: list[Result] = []
    try:
        if args.only in (None, "compose"):
            results += [compose_schema(args.compose_file), compose_config(args.compose_file)]
        if args.only in (None, "k8s"):
            overlays = args.overlay or sorted(p for p in (REPO / "k8s" / "overlays").iterdir() if p.is_dir())
            for overlay in overlays:
                results += check_kustomization(overlay.resolve())
    except ToolMissing as e:
        results.append(Result("tools", False, str(e)))

    for r in results:
        print(r)
    failed = sum(not r.ok for r in results)
    print(f"deploy/validate.py: {len(results) - failed} of {len(results)} checks passed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
