"""A prompt as both APIs send it, normalised to one key: the (role, content) pairs in order, with
Anthropic's top-level `system` turned back into a leading system message.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Any

import orjson


class PromptError(ValueError):
    """The request's messages are not the API's shape (the route answers 400)."""


def _text(content: Any, where: str) -> str:
    if isinstance(content, str):
        return content
    # Both APIs accept a list of content blocks; only text blocks carry prompt text here.
    if isinstance(content, list):
        parts = []
        for block in content:
            if not isinstance(block, dict) or block.get("type") != "text" or not isinstance(block.get("text"), str):
                raise PromptError(f"{where}: only text content blocks are supported")
            parts.append(block["text"])
        return "".join(parts)
    raise PromptError(f"{where}: content must be a string or a list of text blocks")


@dataclass(frozen=True)
class Prompt:
    messages: tuple[tuple[str, str], ...]

    @classmethod
    def from_wire(cls, messages: Any, system: Any = None) -> Prompt:
        if not isinstance(messages, list) or not messages:
            raise PromptError("messages: must be a non-empty list")
        pairs: list[tuple[str, str]] = []
        if system is not None:
            pairs.append(("system", _text(system, "system")))
        for i, m in enumerate(messages):
            if not isinstance(m, dict) or not isinstance(m.get("role"), str) or "content" not in m:
                raise PromptError(f"messages[{i}]: needs 'role' and 'content'")
            pairs.append((m["role"], _text(m["content"], f"messages[{i}].content")))
        return cls(tuple(pairs))

    @property
    def sha(self) -> str:
        """Stable across processes and runs (never Python's salted `hash()`)."""
        return hashlib.sha256(orjson.dumps([list(p) for p in self.messages])).hexdigest()

    @property
    def text(self) -> str:
        return "\n".join(content for _, content in self.messages)

    @property
    def last_user(self) -> str:
        return next((c for r, c in reversed(self.messages) if r == "user"), self.text)


def estimate_tokens(text: str) -> int:
    """Four characters a token: the usual rough rule, used where nothing was recorded."""
    return max(1, math.ceil(len(text) / 4))
