"""The simulator's routes: OpenAI chat and batch under `/v1`, Anthropic Messages and message batches
at the root, the admin API under `/_sim`. One `Simulator` holds all state, on `app.state.sim`.
"""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.routing import Route

from sim import admin, anthropic_api, batch_anthropic, batch_openai, openai_api
from sim.batch import BatchStore
from sim.calls import Simulator


def create_app(sim: Simulator) -> Starlette:
    routes = [
        Route("/v1/chat/completions", openai_api.chat_completions, methods=["POST"]),
        Route("/v1/messages", anthropic_api.messages, methods=["POST"]),
        Route("/v1/files", batch_openai.upload_file, methods=["POST"]),
        Route("/v1/files/{file_id}/content", batch_openai.file_content, methods=["GET"]),
        Route("/v1/batches", batch_openai.create_batch, methods=["POST"]),
        Route("/v1/batches/{batch_id}", batch_openai.get_batch, methods=["GET"]),
        Route("/v1/batches/{batch_id}/cancel", batch_openai.cancel_batch, methods=["POST"]),
        Route("/v1/messages/batches", batch_anthropic.create_batch, methods=["POST"]),
        Route("/v1/messages/batches/{batch_id}", batch_anthropic.get_batch, methods=["GET"]),
        Route("/v1/messages/batches/{batch_id}/cancel", batch_anthropic.cancel_batch, methods=["POST"]),
        Route("/v1/messages/batches/{batch_id}/results", batch_anthropic.batch_results, methods=["GET"],
              name="anthropic_batch_results"),
        Route("/_sim/health", admin.health, methods=["GET"]),
        Route("/_sim/config", admin.config, methods=["POST"]),
        Route("/_sim/config", admin.get_config, methods=["GET"]),
        Route("/_sim/reset", admin.reset, methods=["POST"]),
        Route("/_sim/stats", admin.stats, methods=["GET"]),
        Route("/_sim/requests", admin.requests, methods=["GET"]),
    ]
    app = Starlette(routes=routes)
    app.state.sim = sim
    app.state.batches = BatchStore(sim)
    return app
