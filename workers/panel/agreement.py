"""Agreement rules: turn a member's free text into a vote key, so agreeing answers tally together.

    rule = make_rule(AgreementSpec(rule="choice"))
    rule.key("After weighing it, the answer is (B).", [])   # -> "B"

A key of None means "no usable answer" (the member's vote counts as cast but tallies nothing).
Rules are pluggable: `RULES[name] = factory`. Edge: `numeric` buckets by tolerance, so two values
straddling a bucket edge by less than the tolerance still differ; `set` clusters by Jaccard
against the keys already voted, so concurrent first votes may open two clusters.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from decimal import Decimal, InvalidOperation
from typing import Any, Protocol

import orjson

from workers.policy import AgreementSpec

_ANSWER_LINE = re.compile(r"(?im)^\s*(?:final\s+)?answer\s*[:=]\s*(.+?)\s*$")


class Rule(Protocol):
    name: str
    # does `key` match against the keys already voted? Only then does a member read them first
    reads_existing: bool

    def key(self, text: str, existing: list[str]) -> str | None: ...


def answer_part(text: str) -> str:
    """The text of the last `ANSWER:` line if any, else the whole text."""
    found = _ANSWER_LINE.findall(text)
    return found[-1] if found else text


class Exact:
    """Case-, whitespace- and trailing-punctuation-insensitive equality of the answer part."""

    name = "exact"
    reads_existing = False

    def key(self, text: str, existing: list[str]) -> str | None:
        norm = re.sub(r"\s+", " ", answer_part(text)).strip().strip(".!\"'`").strip().lower()
        return norm or None


class Choice:
    """An option label: a letter (A-J) by default, or one of `options` (e.g. APPROVE)."""

    name = "choice"
    reads_existing = False
    _LETTER_PATTERNS = [
        re.compile(r"(?i)answer\s*(?:is|:)?\s*\(?([A-J])\)?(?![A-Za-z])"),
        re.compile(r"\(([A-J])\)"),
        re.compile(r"(?m)^\s*([A-J])[).:]?\s*$"),
        re.compile(r"(?m)^\s*([A-J])[).:]\s"),
    ]

    def __init__(self, options: list[str] | None = None):
        self.options = [o.upper() for o in options] if options else None

    def key(self, text: str, existing: list[str]) -> str | None:
        part = answer_part(text).strip()
        if self.options:
            upper = part.upper().replace(" ", "_")
            hits = [(upper.rfind(o), o) for o in self.options if o in upper]
            return max(hits)[1] if hits else None
        if re.fullmatch(r"[A-Ja-j]", part):
            return part.upper()
        for pattern in self._LETTER_PATTERNS:
            found = pattern.findall(text)
            if found:
                return str(found[-1]).upper()
        return None


class Numeric:
    """A number (the one after the last `####` or `ANSWER:`, else the last in the text), bucketed
    by `tolerance` so 16, 16.0 and $16 agree."""

    name = "numeric"
    reads_existing = False
    _NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")

    def __init__(self, tolerance: float = 1e-6):
        self.tolerance = Decimal(str(tolerance)) if tolerance > 0 else None

    def key(self, text: str, existing: list[str]) -> str | None:
        part = text.rsplit("####", 1)[1] if "####" in text else answer_part(text)
        numbers = self._NUMBER.findall(part.replace("$", "")) or self._NUMBER.findall(text.replace("$", ""))
        if not numbers:
            return None
        raw = numbers[0] if "####" in text or _ANSWER_LINE.search(text) else numbers[-1]
        try:
            value = Decimal(raw.replace(",", ""))
        except InvalidOperation:
            return None
        if self.tolerance:
            value = (value / self.tolerance).to_integral_value() * self.tolerance
        return format(value.normalize(), "f")


class JsonFields:
    """Canonical JSON of the answer's object (only the schema's fields when a schema is given);
    strings compared trimmed and case-folded."""

    name = "json"
    reads_existing = False

    def __init__(self, fields: list[str] | None = None):
        self.fields = fields

    def key(self, text: str, existing: list[str]) -> str | None:
        obj = parse_json_object(text)
        if obj is None:
            return None
        if self.fields:
            obj = {k: obj.get(k) for k in self.fields}
        return orjson.dumps(_canonical(obj), option=orjson.OPT_SORT_KEYS).decode()


class JaccardSet:
    """A set of findings (one per line or comma); joins an existing key whose Jaccard ≥ threshold."""

    name = "set"
    reads_existing = True

    def __init__(self, threshold: float = 0.6):
        self.threshold = threshold

    @staticmethod
    def items(text: str) -> frozenset[str]:
        parts = re.split(r"[\n,;]+", answer_part(text))
        return frozenset(p.strip(" -*•.\t").lower() for p in parts if p.strip(" -*•.\t"))

    def key(self, text: str, existing: list[str]) -> str | None:
        mine = self.items(text)
        if not mine:
            return None
        best, best_j = None, 0.0
        for k in dict.fromkeys(existing):
            theirs = frozenset(orjson.loads(k))
            j = len(mine & theirs) / len(mine | theirs)
            if j >= self.threshold and j > best_j:
                best, best_j = k, j
        return best or orjson.dumps(sorted(mine)).decode()


def parse_json_object(text: str) -> dict[str, Any] | None:
    """The first JSON object in the text (models wrap JSON in prose or code fences)."""
    start = text.find("{")
    while start != -1:
        depth = 0
        for i in range(start, len(text)):
            if text[i] == "{":
                depth += 1
            elif text[i] == "}":
                depth -= 1
                if depth == 0:
                    try:
                        obj = orjson.loads(text[start : i + 1])
                    except orjson.JSONDecodeError:
                        break
                    return obj if isinstance(obj, dict) else None
        start = text.find("{", start + 1)
    return None


def _canonical(v: Any) -> Any:
    if isinstance(v, str):
        return re.sub(r"\s+", " ", v).strip().casefold()
    if isinstance(v, dict):
        return {k: _canonical(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_canonical(x) for x in v]
    return v


RULES: dict[str, Callable[[AgreementSpec, dict[str, Any] | None], Rule]] = {
    "exact": lambda s, schema: Exact(),
    "choice": lambda s, schema: Choice(s.options),
    "numeric": lambda s, schema: Numeric(s.tolerance),
    "json": lambda s, schema: JsonFields(sorted((schema or {}).get("properties", {})) or None),
    "set": lambda s, schema: JaccardSet(s.threshold),
}


def make_rule(spec: AgreementSpec, response_schema: dict[str, Any] | None = None) -> Rule:
    return RULES[spec.rule](spec, response_schema)
