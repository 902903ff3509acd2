"""Arbiter prompts answered from replay: the judge returns the verdict its recorded answer implies.

A replayed panel that disagrees asks its arbiter model to judge. No replay row holds that prompt
(it quotes the members' answers), so without this module the rule path would answer with a bare
letter that is no verdict at all. The prompt is recognised by its shape (the panel's arbiter
contract, `workers/panel/arbiter.py`): a system message opening with `ARBITER_OPENING`, and a user
message holding `<task>...</task>` (each task message rendered `[role]\\ncontent`, joined by a
blank line) and `<member_answers>[{"member": id, "answer": text}, ...]</member_answers>`.

The verdict, deterministically:
  1. The task is looked up among the replay rows (by the same rendering of each row's messages).
     Each candidate's answer value is the recorded `answer` of the recorded `text` it equals, else
     extracted from its text by the row's `kind` (a letter; the number after the last `####`,
     else the last number).
  2. If the arbiter model has a recorded answer for that question, that is what it would choose:
     `chosen_members` are the candidates whose value equals it (compared by kind: numbers
     numerically, letters case-free); when no candidate has it, `chosen_members` is empty and
     `final_answer` is the model's own recorded answer (the prompt allows "write a better one").
  3. Otherwise (task not in the replay, or the model not recorded on it): the plurality value among
     the candidates wins; a tie is broken by `unit("arbiter", model, prompt sha)` over the tied
     values in sorted order, so the same model and prompt always give the same verdict.
The verdict names candidates by the ids the prompt gave them and never quotes their text (the
fleet's contract: a long answer cannot cut a verdict short).
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING

import orjson

from sim.prompt import Prompt
from sim.rules import unit

if TYPE_CHECKING:
    from sim.replay import ReplayIndex

ARBITER_OPENING = "You are the arbiter of a panel of models."
_TASK = re.compile(r"<task>\n(.*)\n</task>", re.DOTALL)
_ANSWERS = re.compile(r"<member_answers>\n(.*)\n</member_answers>", re.DOTALL)
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")
_LETTER = re.compile(r"(?m)(?:(?i:answer)\s*(?:is|:)?\s*\(?|\(|^\s*)([A-J])\b")


def render_task(messages: list[tuple[str, str]]) -> str:
    """A task as the arbiter prompt quotes it; the replay index keys rows by this same text."""
    return "\n\n".join(f"[{role}]\n{content}" for role, content in messages)


@dataclass(frozen=True)
class Candidate:
    member: str
    text: str


@dataclass(frozen=True)
class ArbiterRequest:
    task: str
    candidates: list[Candidate]

    @classmethod
    def parse(cls, prompt: Prompt) -> ArbiterRequest | None:
        """The request if the prompt is an arbiter prompt, else None (any other prompt)."""
        system = next((c for r, c in prompt.messages if r == "system"), "")
        if not system.startswith(ARBITER_OPENING):
            return None
        user = prompt.last_user
        task, answers = _TASK.search(user), _ANSWERS.search(user)
        if task is None or answers is None:
            return None
        try:
            items = orjson.loads(answers.group(1))
            candidates = [Candidate(str(a["member"]), str(a["answer"])) for a in items]
        except (orjson.JSONDecodeError, TypeError, KeyError):
            return None
        return cls(task.group(1), candidates) if candidates else None


@dataclass(frozen=True)
class Question:
    """What the arbiter needs from one replay row: its kind, each model's recorded answer value,
    and the value behind each recorded text (so a candidate's text maps to its value)."""

    kind: str
    answers: dict[str, str | None]
    value_of_text: dict[str, str | None]


def answer_value(kind: str, text: str) -> str | None:
    """A candidate's answer value when its text is not a recorded one (the data README's rules)."""
    stripped = text.strip()
    if kind == "choice":
        if re.fullmatch(r"[A-Ja-j]", stripped):
            return stripped.upper()
        found = _LETTER.findall(stripped)
        return found[-1].upper() if found else None
    if kind == "number":
        part = text.rsplit("####", 1)[1] if "####" in text else text
        numbers = _NUMBER.findall(part.replace("$", "")) or _NUMBER.findall(text.replace("$", ""))
        if not numbers:
            return None
        return (numbers[0] if "####" in text else numbers[-1]).replace(",", "")
    return " ".join(stripped.split()).casefold() or None


def same(kind: str, a: str | None, b: str | None) -> bool:
    if a is None or b is None:
        return False
    if kind == "number":
        try:
            return abs(float(a) - float(b)) <= 1e-6 * max(1.0, abs(float(b)))
        except ValueError:
            return False
    return " ".join(a.split()).casefold() == " ".join(b.split()).casefold()


def verdict(model: str, prompt: Prompt, request: ArbiterRequest, replay: ReplayIndex) -> tuple[str, float | None]:
    """(verdict JSON text, the model's recorded latency on the question or None), by the rules above."""
    question = replay.question(request.task)
    kind = question.kind if question else "text"
    values = [(c, question.value_of_text.get(c.text) if question and c.text in question.value_of_text
               else answer_value(kind, c.text)) for c in request.candidates]  # fmt: skip
    own = question.answers.get(model) if question else None
    if own is not None:
        chosen = [c for c, v in values if same(kind, v, own)]
        final, final_value = (chosen[0].text if chosen else own), own
        why = f"{model} answers {own} on this question" + ("" if chosen else "; no member gave it")
    else:
        final, chosen, final_value = plurality(kind, values, model, prompt)
        why = "no recorded answer of this model here; the members' plurality answer is taken"
    others = sorted({canonical(kind, v) for _, v in values if v is not None and not same(kind, v, final_value)})
    body: dict[str, object] = {"chosen_members": [c.member for c in chosen],
                               "disagreements": [f"members also answered {v!r}" for v in others],
                               "rationale": why + "."}  # fmt: skip
    if not chosen:
        body["final_answer"] = final
    return orjson.dumps(body).decode(), replay.latency(model, request.task)


def plurality(kind: str, values: list[tuple[Candidate, str | None]], model: str,
              prompt: Prompt) -> tuple[str, list[Candidate], str | None]:  # fmt: skip
    """(final text, chosen candidates, their value): the most common value, ties by a stable hash."""
    counts = Counter(canonical(kind, v) for _, v in values if v is not None)
    if not counts:  # no value read from any candidate: the first one shown, by id
        return values[0][0].text, [values[0][0]], None
    top = max(counts.values())
    tied = sorted(v for v, n in counts.items() if n == top)
    pick = tied[int(unit("arbiter", model, prompt.sha) * len(tied))]
    chosen = [c for c, v in values if v is not None and canonical(kind, v) == pick]
    return chosen[0].text, chosen, pick


def canonical(kind: str, value: str) -> str:
    """One spelling per value, so 16 and 16.0 count as one answer in a plurality."""
    if kind == "number":
        try:
            return format(Decimal(value).normalize(), "f")
        except InvalidOperation:
            return value
    return " ".join(value.split()).casefold()
