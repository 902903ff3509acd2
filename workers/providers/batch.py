"""What both batch APIs share: one status vocabulary, one result shape, one client protocol, and
the splitting of many requests into the files or bodies a provider's limits allow.

    [status] = await client.submit([("p1-m1", request), ...])
    ...                                             # poll: batches finish in minutes to 24 h
    status = await client.status(status.id)
    if status.finished:
        for custom_id, outcome in await client.results(status): ...  # Completion | ProviderError
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal, Protocol

from workers.providers.base import ChatRequest, Completion, InputRejected, ProviderError

BatchState = Literal["pending", "done", "failed", "expired", "cancelled"]
# One line of a finished batch; results come in any order, so the custom id is the only key.
BatchResult = tuple[str, Completion | ProviderError]


@dataclass(frozen=True)
class BatchStatus:
    """A batch as either API reports it, its status normalised to `state`. Expired and cancelled
    batches still have results for the lines that ran: fetch them for every finished state."""

    id: str
    state: BatchState
    raw_status: str
    counts: dict[str, int] = field(default_factory=dict)
    created_at: float | None = None  # epoch seconds
    ended_at: float | None = None
    message: str | None = None  # why a batch failed, when the provider says
    output_file_id: str | None = None  # OpenAI
    error_file_id: str | None = None  # OpenAI
    results_url: str | None = None  # Anthropic

    @property
    def finished(self) -> bool:
        return self.state != "pending"

    @property
    def elapsed_ms(self) -> float:
        """Submission to end: the latency each line of the batch is charged in a receipt."""
        if self.created_at is None or self.ended_at is None:
            return 0.0
        return max(0.0, (self.ended_at - self.created_at) * 1000)


class BatchClient(Protocol):
    name: str

    async def submit(self, items: Sequence[tuple[str, ChatRequest]]) -> list[BatchStatus]: ...

    async def status(self, batch_id: str) -> BatchStatus: ...

    async def results(self, status: BatchStatus) -> list[BatchResult]: ...

    async def cancel(self, batch_id: str) -> BatchStatus: ...

    async def aclose(self) -> None: ...


def split(
    provider: str, encoded: Iterable[tuple[str, bytes]], *, max_items: int, max_bytes: int, overhead: int
) -> list[list[bytes]]:
    """Pack encoded requests, in order, into groups of at most `max_items` and `max_bytes`
    (counting `overhead` bytes per item for separators). Raises InputRejected for duplicate
    custom ids (both APIs refuse them) or one request larger than a whole group may be."""
    groups: list[list[bytes]] = []
    size = 0
    seen: set[str] = set()
    for custom_id, item in encoded:
        if custom_id in seen:
            raise InputRejected(provider, f"custom_id {custom_id!r} appears twice; each line needs its own")
        seen.add(custom_id)
        cost = len(item) + overhead
        if cost > max_bytes:
            raise InputRejected(
                provider, f"custom_id {custom_id!r}: {cost} bytes, over the {max_bytes}-byte batch limit"
            )
        if not groups or len(groups[-1]) >= max_items or size + cost > max_bytes:
            groups.append([])
            size = 0
        groups[-1].append(item)
        size += cost
    return groups


def epoch(value: object) -> float | None:
    """Epoch seconds from either API's timestamps: OpenAI's integers, Anthropic's RFC 3339."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value).timestamp()
        except ValueError:
            return None
    return None


def counts(value: object) -> dict[str, int]:
    if not isinstance(value, dict):
        return {}
    return {str(k): v for k, v in value.items() if isinstance(v, int) and not isinstance(v, bool)}
