"""YAML policy files read with line numbers, so a bad value is reported as file:line field."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from workers.errors import PolicyError

Loc = tuple[str | int, ...]
M = TypeVar("M", bound=BaseModel)


def _walk(node: yaml.Node, loc: Loc, lines: dict[Loc, int], path: Path) -> None:
    lines[loc] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for k, v in node.value:
            # YAML keeps the last of two equal keys without a word: the first one would be ignored
            if k.value in seen and k.tag != "tag:yaml.org,2002:merge":
                field = ".".join(map(str, loc + (k.value,)))
                raise PolicyError(str(path), k.start_mark.line + 1, field, "duplicate key; YAML would keep only the last, remove one")
            seen.add(k.value)
            lines[loc + (k.value,)] = k.start_mark.line + 1
            _walk(v, loc + (k.value,), lines, path)
    elif isinstance(node, yaml.SequenceNode):
        for i, v in enumerate(node.value):
            _walk(v, loc + (i,), lines, path)


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
        _walk(node, (), lines, path)
    return data, lines


def line_of(lines: dict[Loc, int], loc: Loc) -> int | None:
    """The line of the deepest known prefix of `loc`."""
    for n in range(len(loc), -1, -1):
        if loc[:n] in lines:
            return lines[loc[:n]]
    return None


def _non_finite(data: Any, loc: Loc = ()) -> Loc | None:
    """Where `data` holds .inf or .nan (a deadline or price no one meant), if anywhere."""
    if isinstance(data, float) and not math.isfinite(data):
        return loc
    items = data.items() if isinstance(data, dict) else enumerate(data) if isinstance(data, list) else ()
    for k, v in items:
        if (found := _non_finite(v, loc + (k,))) is not None:
            return found
    return None


def validate(model: type[M], data: Any, path: Path, lines: dict[Loc, int], base: Loc = ()) -> M:
    """`data` as `model`, strictly: a value of the wrong type is an error, never coerced (YAML's
    `yes` is not a quorum of 1, a quoted "0.5" is not a price), and so is .inf or .nan."""
    if (bad := _non_finite(data)) is not None:
        loc = base + bad
        raise PolicyError(str(path), line_of(lines, loc), ".".join(map(str, loc)), "not a finite number")
    try:
        return model.model_validate(data, strict=True)
    except ValidationError as e:
        # a misspelt key also makes its right spelling "missing": report the misspelling
        err = sorted(e.errors(), key=lambda x: x["type"] != "extra_forbidden")[0]
        loc = base + tuple(err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key; check its spelling"
        raise PolicyError(str(path), line_of(lines, loc), ".".join(map(str, loc)) or "(top)", msg) from None
