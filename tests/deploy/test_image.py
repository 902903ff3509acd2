"""The image, minus Docker: what the Dockerfile copies exists and survives .dockerignore, the
project builds from exactly that context, and the entrypoint and heartbeat scripts behave."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

from tests.deploy.artefacts import REPO


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
