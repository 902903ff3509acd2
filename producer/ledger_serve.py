"""`panel ledger --html FILE` and `panel ledger --serve PORT`: the ledger page written to a file,
or served from a small Starlette app (`/`, `/receipts/{job_id}`) that reads Redis per request."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

from producer.client import PanelClient
from producer.ledger_page import Entry, read_labels, render_page


def ledger_app(load: Callable[[], list[Entry]], labels: Callable[[], dict[str, bool]]) -> object:
    """An ASGI app; a gateway may mount it, or call render_page itself."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import HTMLResponse, PlainTextResponse, Response
    from starlette.routing import Route

    async def page(request: Request) -> Response:
        return HTMLResponse(render_page(load(), labels()))

    async def receipt(request: Request) -> Response:
        job_id = request.path_params["job_id"]
        found = [(ts, r) for ts, r in load() if r["job_id"] == job_id]
        if not found:
            return PlainTextResponse(f"no receipt for job {job_id!r} in the ledger", status_code=404)
        return HTMLResponse(render_page(found, labels(), title=f"receipt of job {job_id}"))

    return Starlette(routes=[Route("/", page), Route("/receipts/{job_id}", receipt)])


def ledger_cmd(client: PanelClient, html: str | None, serve: int | None, labels_file: str | None) -> int:
    from producer import labels as fed_back

    from_file = read_labels(Path(labels_file)) if labels_file else {}

    def labels() -> dict[str, bool]:  # fed back with `panel label` (kept in Redis), a file's on top
        return {**fed_back.get_all(client.redis), **from_file}

    if html:
        entries = client.ledger_entries()
        Path(html).write_text(render_page(entries, labels()))
        print(f"wrote {html}: {len(entries)} receipts", file=sys.stderr)
    if serve is not None:
        import uvicorn

        app = ledger_app(client.ledger_entries, labels)
        print(f"ledger page on http://127.0.0.1:{serve}/ (Ctrl-C stops)", file=sys.stderr, flush=True)
        uvicorn.run(app, host="127.0.0.1", port=serve, log_level="warning", access_log=False)  # type: ignore[arg-type]
    return 0
