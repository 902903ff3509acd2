"""Deterministic answers for prompts no replay row covers: the same model, prompt and skill give the
same reply in every process and run, and models of equal skill agree as often as real ones would.

The rule, all hashes being SHA-256 of the parts (never Python's salted `hash()`), read as a
fraction u(...) in [0, 1):
  1. The prompt's answer space: option letters if the last user message lists options A and B
     at least (`A) ..`, `A. ..`, `A: ..` at a line start, `A) ..` or `(A) ..` mid-line); else
     the integers 0..99.
  2. The "true" answer is the space's element at u("truth", prompt) (prompt = its message sha).
  3. A model gives the true answer when u("skill", model, prompt) < skill; else a wrong one,
     chosen among the others by u("wrong", model, prompt). So two wrong models may still agree.
  4. Format: JSON mode (response_format json_object, or the word JSON in the prompt) →
     `{"reasoning": "...", "answer": "<x>"}`; options → the bare letter; else a short sentence
     and a final line `ANSWER: <x>`.
"""

from __future__ import annotations

import hashlib
import re

import orjson

from sim.prompt import Prompt

_OPTION_AT_LINE_START = re.compile(r"(?m)^\s*\(?([A-J])[).:]\s")
_OPTION_INLINE = re.compile(r"(?:^|\s)\(?([A-J])\)\s")  # "A) x B) y" and "(A) x (B) y" mid-line
_ASKS_FOR_JSON = re.compile(r"\bJSON\b", re.IGNORECASE)


def unit(*parts: str) -> float:
    """A stable fraction in [0, 1) from the parts."""
    digest = hashlib.sha256("\x1f".join(parts).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def options(text: str) -> list[str]:
    found = set(_OPTION_AT_LINE_START.findall(text)) | set(_OPTION_INLINE.findall(text))
    # Options start at A; a lone "I) think" or "C) 2024" in prose is not a list of choices.
    return sorted(found) if {"A", "B"} <= found else []


def wants_json(prompt: Prompt, json_mode: bool) -> bool:
    return json_mode or bool(_ASKS_FOR_JSON.search(prompt.text))


def rule_answer(model: str, prompt: Prompt, skill: float) -> str:
    """The answer value (a letter or an integer string) the model gives, before formatting."""
    space = options(prompt.last_user) or [str(n) for n in range(100)]
    truth = space[int(unit("truth", prompt.sha) * len(space))]
    if unit("skill", model, prompt.sha) < skill:
        return truth
    wrong = [a for a in space if a != truth]
    return wrong[int(unit("wrong", model, prompt.sha) * len(wrong))]


def rule_reply(model: str, prompt: Prompt, skill: float, json_mode: bool) -> str:
    value = rule_answer(model, prompt, skill)
    if wants_json(prompt, json_mode):
        return orjson.dumps({"reasoning": f"{model} worked it through.", "answer": value}).decode()
    if options(prompt.last_user):
        return value
    return f"Having considered the question, the answer is {value}.\nANSWER: {value}"
