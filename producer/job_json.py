"""A job's JSON read with orjson, minus orjson's two surprises, each reported on the field it hit:

- an integer literal beyond 64 bits is silently read as a float (`2**70` comes back inexact), so a
  caller's order number would change in flight: refused, naming the field;
- `NaN`, `Infinity` and a number too large for a double are refused as "not JSON" with only a
  character offset: the error now names the field the literal belongs to.

    >>> load(b'{"metadata": {"order": 123456789012345678901234567890}}')  # ContractError: metadata.order: ...
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Iterator
from typing import Any

import orjson

from producer.errors import ContractError

# What orjson keeps exact: signed 64-bit below zero, unsigned 64-bit above.
INT_MIN, INT_MAX = -(2**63), 2**64 - 1

# A JSON string (skipped whole, so digits inside prompts never count) or an integer literal.
_TOKEN = re.compile(rb'"(?:[^"\\]|\\.)*"|-?\d+(?![\d.eE])')
_LONG_INT = re.compile(rb"\d{19}")
_NON_FINITE = re.compile(rb"-?(?:NaN|Infinity|\d[\d.eE+-]*)")
_KEY_BEFORE = re.compile(rb'"((?:[^"\\]|\\.)*)"\s*:\s*$')


def load(raw: bytes | str) -> Any:
    """`raw` parsed by orjson; ContractError naming the field for the literals described above."""
    data = raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else raw
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        raise ContractError([_decode_problem(data, e)]) from None
    if _LONG_INT.search(data):  # cheap pre-check: only a 19+ digit run can overflow 64 bits
        for big in _big_integers(data):
            path = _path_of(value, float(big)) or "(line)"
            raise ContractError([(path, f"integer {big} does not fit in 64 bits and would lose digits; "
                                        "send it as a string")])  # fmt: skip
    return value


def jsonl(lines: Iterable[bytes]) -> Iterator[tuple[int, Any]]:
    """Each non-blank line of a JSONL stream with its 1-based number: the value `load` reads, or
    the ContractError saying why there is none (not UTF-8, not JSON, a NaN or a 65-bit integer).
    The one line reader of `PanelClient.submit_many` and the gateway's `POST /v1/jobs:batch`."""
    for n, raw in enumerate(lines, start=1):
        text = raw.strip()
        if not text:
            continue
        try:
            text.decode("utf-8")
            yield n, load(text)
        except UnicodeDecodeError as e:
            yield n, ContractError([("(line)", f"not UTF-8 at byte {e.start}; re-encode the file as UTF-8")])
        except ContractError as e:
            yield n, e


def _big_integers(data: bytes) -> list[int]:
    out = []
    for m in _TOKEN.finditer(data):
        tok = m.group()
        if tok[:1] != b'"' and len(tok) >= 19:
            n = int(tok)
            if not INT_MIN <= n <= INT_MAX:
                out.append(n)
    return out


def _path_of(value: Any, target: float, prefix: str = "") -> str | None:
    """Dotted path of the first float equal to `target` (where orjson put the big integer)."""
    if isinstance(value, float) and value == target:
        return prefix or "(line)"
    if isinstance(value, dict):
        for k, v in value.items():
            found = _path_of(v, target, f"{prefix}.{k}" if prefix else str(k))
            if found:
                return found
    if isinstance(value, list):
        for i, v in enumerate(value):
            found = _path_of(v, target, f"{prefix}.{i}" if prefix else str(i))
            if found:
                return found
    return None


def _decode_problem(data: bytes, err: orjson.JSONDecodeError) -> tuple[str, str]:
    """(field, message): a non-finite number named by its key, anything else "not JSON"."""
    start = err.pos - 1 if data[err.pos - 1 : err.pos] == b"-" else err.pos  # `-Infinity` fails after its sign
    literal = _NON_FINITE.match(data, start)
    key = _KEY_BEFORE.search(data[:start])
    if literal and key and _non_finite(literal.group()):
        name = _path_at(data, start) or key.group(1).decode("utf-8", "replace")
        return name, (f"{literal.group().decode()} is not a finite number (JSON has no NaN or Infinity); "
                      "give a finite number")  # fmt: skip
    return "(line)", f"not JSON: {err}"


_STRING_OR_PUNCT = re.compile(rb'"((?:[^"\\]|\\.)*)"|[{}\[\],:]')


def _path_at(data: bytes, pos: int) -> str:
    """The dotted path of the value starting at `pos` (`body.temperature`, `messages.2.content`),
    read from the text before it: orjson refused the document, so there is no value to walk."""
    stack: list[list[object]] = []  # per open container: [kind, key or index, expecting a key]
    for m in _STRING_OR_PUNCT.finditer(data, 0, pos):
        tok = m.group()
        if tok == b"{":
            stack.append(["o", None, True])
        elif tok == b"[":
            stack.append(["a", 0, False])
        elif tok in (b"}", b"]"):
            if stack:
                stack.pop()
        elif tok == b",":
            if stack and stack[-1][0] == "a":
                stack[-1][1] = int(stack[-1][1]) + 1  # type: ignore[call-overload]
            elif stack:
                stack[-1][2] = True
        elif tok == b":":
            if stack:
                stack[-1][2] = False
        elif stack and stack[-1][0] == "o" and stack[-1][2]:
            stack[-1][1] = m.group(1).decode("utf-8", "replace")
    return ".".join(str(level[1]) for level in stack if level[1] is not None)


def _non_finite(literal: bytes) -> bool:
    if literal.lstrip(b"-") in (b"NaN", b"Infinity"):
        return True
    try:
        return math.isinf(float(literal))
    except ValueError:
        return False
