"""YAML policy files read with line numbers, so a bad value is reported as file:line field."""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from workers.errors import PolicyError

Loc = tuple[str | int, ...]
M = TypeVar("M", bound=BaseModel)


def _walk(node: yaml.Node, loc: Loc, lines: dict[Loc, int]) -> None:
    lines[loc] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            lines[loc + (k.value,)] = k.start_mark.line + 1
            _walk(v, loc + (k.value,), lines)
    elif isinstance(node, yaml.SequenceNode):
        for i, v in enumerate(node.value):
            _walk(v, loc + (i,), lines)


def load(path: Path) -> tuple[Any, dict[Loc, int]]:
    """Parse a YAML file; return the data and a map from key path to line number."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise PolicyError(str(path), None, "(file)", f"cannot read: {e.strerror}") from None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        raise PolicyError(str(path), mark.line + 1 if mark else None, "(syntax)", str(e).splitlines()[0]) from None
    lines: dict[Loc, int] = {}
    if node is not None:
        _walk(node, (), lines)
    return data, lines


def line_of(lines: dict[Loc, int], loc: Loc) -> int | None:
    """The line of the deepest known prefix of `loc`."""
    for n in range(len(loc), -1, -1):
        if loc[:n] in lines:
            return lines[loc[:n]]
    return None


def validate(model: type[M], data: Any, path: Path, lines: dict[Loc, int], base: Loc = ()) -> M:
    try:
        return model.model_validate(data)
    except ValidationError as e:
        # a misspelt key also makes its right spelling "missing": report the misspelling
        err = sorted(e.errors(), key=lambda x: x["type"] != "extra_forbidden")[0]
        loc = base + tuple(err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key; check its spelling"
        raise PolicyError(str(path), line_of(lines, loc), ".".join(map(str, loc)) or "(top)", msg) from None
