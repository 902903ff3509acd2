"""Agreement rules: turn a member's free text into a vote key, so agreeing answers tally together.

    rule = make_rule(AgreementSpec(rule="choice"))
    rule.key("After weighing it, the answer is (B).", [])   # -> "B"

A key of None means "no usable answer" (the member's vote counts as cast but tallies nothing).
Rules are pluggable: `RULES[name] = factory`. Edge: `numeric` buckets by tolerance, so two values
straddling a bucket edge by less than the tolerance still differ; `set` and `similar` cluster
against the keys already voted, so concurrent first votes may open two clusters.

Free text: `extract_answer` finds the answer inside a long reply (a declared JSON field such as
`answer`, a "final answer:" / "the answer is" / "####" line) and `similar` joins an existing key
whose rapidfuzz token-set ratio with it is >= `threshold` (calibrated on recorded replies:
`python3 -m evaluation.freetext`, bench/RESULTS.md).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from decimal import Decimal, InvalidOperation
from typing import Any, Protocol

import orjson

from workers.policy import AgreementSpec

_ANSWER_LINE = re.compile(r"(?im)^\s*(?:final\s+)?answer\s*[:=]\s*(.+?)\s*$")
_ANSWER_IS = re.compile(r"(?i)\b(?:final answer|the answer)\s*(?:is|:)\s*[:\-]?\s*(.+?)\s*(?:$|\n|\.(?:\s|$))")
_HASHES = re.compile(r"####\s*(.+?)\s*$", re.M)
ANSWER_FIELDS = ("answer", "final_answer")


class Rule(Protocol):
    name: str
    # does `key` match against the keys already voted? Only then does a member read them first
    reads_existing: bool

    def key(self, text: str, existing: list[str]) -> str | None: ...


def answer_part(text: str) -> str:
    """The text of the last `ANSWER:` line if any, else the whole text."""
    found = _ANSWER_LINE.findall(text)
    return found[-1] if found else text


def json_answer(text: str, fields: tuple[str, ...] = ANSWER_FIELDS) -> str | None:
    """The declared answer field of the reply's JSON object (ZeroEval asks for
    {"reasoning": ..., "answer": ...}), as text; None without one."""
    if "{" not in text:
        return None
    obj = parse_json_object(text)
    for f in fields:
        if obj is not None and obj.get(f) is not None and not isinstance(obj[f], (dict, list)):
            return str(obj[f]).strip()
    return None


def extract_answer(text: str, fields: tuple[str, ...] = ANSWER_FIELDS) -> str:
    """The answer inside a reply, first found of: the declared JSON field, the last `####` line,
    the last "final answer:"/"answer:" line, the last "the answer is ..." sentence; else the whole
    text."""
    declared = json_answer(text, fields)
    if declared is not None:
        return declared
    for pattern in (_HASHES, _ANSWER_LINE, _ANSWER_IS):
        found = pattern.findall(text)
        if found:
            return str(found[-1]).strip()
    return text


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
        declared = json_answer(text)
        if declared is not None:  # the JSON answer field: its first number ("2:00 pm" is 2, not 00)
            numbers = self._NUMBER.findall(declared.replace("$", ""))
            if not numbers:
                return None
            raw = numbers[0]
        else:
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


class Similar:
    """Free text: the extracted answer, normalised; joins an existing key whose token-set ratio
    (rapidfuzz, 0-1: word order and repeated words ignored, a subset scores 1) is >= threshold."""

    name = "similar"
    reads_existing = True

    def __init__(self, threshold: float = 0.9, fields: tuple[str, ...] = ANSWER_FIELDS):
        self.threshold = threshold
        self.fields = fields

    @staticmethod
    def normalise(answer: str) -> str:
        """Case, punctuation and number spelling (1,200.50 / 1200.5) made alike."""
        text = re.sub(r"(?<=\d),(?=\d{3})", "", answer)
        text = re.sub(r"(\d+\.\d*?)0+\b", r"\1", text)
        text = re.sub(r"(\d+)\.(?!\d)", r"\1", text)
        return re.sub(r"\s+", " ", re.sub(r"[^\w\s.%/-]", " ", text)).strip().strip(".").casefold()

    def key(self, text: str, existing: list[str]) -> str | None:
        from rapidfuzz import fuzz

        mine = self.normalise(extract_answer(text, self.fields))
        if not mine:
            return None
        best, best_score = None, 0.0
        for k in dict.fromkeys(existing):
            score = fuzz.token_set_ratio(mine, k) / 100
            if score >= self.threshold and score > best_score:
                best, best_score = k, score
        return best or mine


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
    "set": lambda s, schema: JaccardSet(0.6 if s.threshold is None else s.threshold),
    "similar": lambda s, schema: Similar(
        0.9 if s.threshold is None else s.threshold, tuple(s.answer_fields) if s.answer_fields else ANSWER_FIELDS
    ),
}


def make_rule(spec: AgreementSpec, response_schema: dict[str, Any] | None = None) -> Rule:
    return RULES[spec.rule](spec, response_schema)
