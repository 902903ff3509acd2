"""The admin API under `/_sim/`: health, runtime knob merges, reset, exact stats and the request log."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from sim.calls import Simulator
from sim.knobs import ConfigError
from sim.serve import json_response


def _sim(request: Request) -> Simulator:
    sim: Simulator = request.app.state.sim
    return sim


async def health(request: Request) -> Response:
    return json_response({"ok": True, "replay_rows": len(_sim(request).answerer.replay)})


async def config(request: Request) -> Response:
    """Merge `{"models": {name: {...}}, "default": {...}}` over the current knobs."""
    sim = _sim(request)
    try:
        body: Any = orjson.loads(await request.body() or b"{}")
        if not isinstance(body, dict):
            raise ConfigError("config: must be a JSON object")
        sim.knobs.merge(body)
    except (orjson.JSONDecodeError, ConfigError) as e:
        return json_response({"error": str(e)}, 400)
    return json_response(sim.knobs.snapshot())


async def get_config(request: Request) -> Response:
    return json_response(_sim(request).knobs.snapshot())


async def reset(request: Request) -> Response:
    _sim(request).reset()
    return json_response({"ok": True})


async def stats(request: Request) -> Response:
    return json_response(_sim(request).stats.snapshot())


async def requests(request: Request) -> Response:
    model = request.query_params.get("model")
    try:
        limit = int(request.query_params.get("limit", "10000"))
    except ValueError:
        return json_response({"error": "limit: must be an integer"}, 400)
    if model is not None:
        model = _sim(request).aliases.resolve(model)
    return json_response({"requests": _sim(request).stats.requests(model, limit)})
