"""`python -m sim` / `panel-sim`: serve the provider simulator on one port until interrupted.

Prints `sim listening on http://HOST:PORT` once the socket accepts connections.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import uvicorn
import yaml

from sim.app import create_app
from sim.calls import build
from sim.keyless import Keyless
from sim.knobs import ConfigError
from sim.prompt_cache import DEFAULT_MIN_TOKENS, DEFAULT_TTL_S, PromptCache


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="panel-sim", description="OpenAI + Anthropic provider simulator (loopback only by default)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8900)
    p.add_argument("--replay", type=Path, action="append", default=[], help="replay JSONL (.gz ok); repeatable")
    p.add_argument("--models", type=Path, help="model registry (policies/models.yaml) for aliases")
    p.add_argument("--config", type=Path, help="knobs as YAML or JSON: {default: {...}, models: {name: {...}}}")
    p.add_argument("--seed", type=int, default=0, help="seed of the fault and jitter draws")
    p.add_argument("--latency-ms", type=float, help="default fixed latency of every model")
    p.add_argument("--keyless", action="store_true",
                   help="answer requests that carry no API key (compose's default); without it: 401 as a provider")
    p.add_argument("--prompt-cache-ttl-s", type=float, default=DEFAULT_TTL_S, help="how long a cached prompt prefix lives")
    p.add_argument("--prompt-cache-min-tokens", type=int, default=DEFAULT_MIN_TOKENS,
                   help="shortest prefix the providers cache (1024 on OpenAI and Anthropic)")
    return p.parse_args(argv)


def load_config(path: Path | None) -> dict[str, Any]:
    if path is None:
        return {}
    text = path.read_text()
    doc = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    if doc is not None and not isinstance(doc, dict):
        raise ConfigError(f"{path}: must be a mapping")
    return doc or {}


async def serve(args: argparse.Namespace) -> None:
    sim = build(replay_files=args.replay, models_yaml=args.models, config=load_config(args.config),
                seed=args.seed, latency_ms=args.latency_ms,
                prompt_cache=PromptCache(args.prompt_cache_ttl_s, args.prompt_cache_min_tokens))  # fmt: skip
    # Prompts must never reach a log: no access log, warnings and errors only.
    app = create_app(sim)
    config = uvicorn.Config(Keyless(app) if args.keyless else app, host=args.host, port=args.port, log_level="warning",
                            access_log=False, timeout_graceful_shutdown=1, backlog=4096)  # fmt: skip
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started and not task.done():
        await asyncio.sleep(0.01)
    if server.started:
        print(f"sim listening on http://{args.host}:{args.port}", flush=True)
    await task


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        asyncio.run(serve(args))
    except (ConfigError, ValueError, OSError) as e:
        print(f"panel-sim: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
