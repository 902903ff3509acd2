"""The one JSON codec on the wire: orjson, registered with kombu for producers and workers alike."""

from __future__ import annotations

from typing import Any

import orjson
from kombu.serialization import register

CONTENT_TYPE = "application/x-orjson"
NAME = "orjson"


def dumps(obj: Any) -> bytes:
    return orjson.dumps(obj, option=orjson.OPT_NON_STR_KEYS)


def loads(data: bytes | str) -> Any:
    return orjson.loads(data)


def text(raw: bytes | str) -> str:
    """A Redis reply as text: our clients return bytes, which redis-py types as bytes | str."""
    return raw.decode() if isinstance(raw, bytes) else raw


def register_codec() -> None:
    """Idempotent: kombu keeps the last registration under the name."""
    register(NAME, dumps, loads, content_type=CONTENT_TYPE, content_encoding="binary")  # type: ignore[no-untyped-call]


register_codec()
