"""`panel`: run a local fleet, submit jobs, read results and receipts, the ledger and its page.

Errors are one line (no traceback) naming the fix. Exit codes are in EXIT_CODES (shown by --help).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path
from typing import Any

import orjson

from producer import keys
from producer.errors import JobTimeout, NoWorker, PanelError

EXIT_CODES = """exit codes:
  0  done (every job decided)
  1  a job failed, is not done yet, or `wait` timed out
  2  bad input: usage, an invalid job, an unknown job id or task class
  3  the fleet is unreachable: Redis down, or no worker consumes the job's queue
"""
EXIT_FAILED, EXIT_INPUT, EXIT_UNREACHABLE = 1, 2, 3


def _client(args: argparse.Namespace) -> Any:
    from producer.client import PanelClient

    return PanelClient(args.redis_url)


def _print_json(obj: Any) -> None:
    sys.stdout.write(orjson.dumps(obj, option=orjson.OPT_INDENT_2).decode() + "\n")


def cmd_submit(args: argparse.Namespace) -> int:
    if args.file:
        job: dict[str, Any] = orjson.loads(Path(args.file).read_bytes())
    else:
        prompt = args.prompt
        if args.prompt_file:
            prompt = (sys.stdin.read() if args.prompt_file == "-" else Path(args.prompt_file).read_text())
        job = {"task_class": args.task_class, "prompt": prompt}
        if args.flag:
            job["flags"] = args.flag
        for k in ("lane", "mode", "idempotency_key", "tenant"):
            if getattr(args, k):
                job[k] = getattr(args, k)
    client = _client(args)
    job_id = client.submit(job)
    print(job_id)
    if not client.redis.exists(keys.task_classes()):
        print("panel submit: queued, but no worker has started against this Redis yet; `panel up` starts a fleet",
              file=sys.stderr)  # fmt: skip
    return 0


def cmd_submit_many(args: argparse.Namespace) -> int:
    from producer.progress import progress

    client = _client(args)
    total = None if args.file == "-" else sum(1 for line in open(args.file, "rb") if line.strip())
    src = sys.stdin.buffer if args.file == "-" else open(args.file, "rb")
    with src, progress("submitting", total) as tick:
        report = client.submit_many(src, lambda ok, bad: tick(ok + bad, f"{bad} rejected" if bad else ""))
    for line, job_id in report.submitted:
        print(f"{line}\t{job_id}")
    for err in report.errors:
        print(f"rejected: {err}", file=sys.stderr)
    print(f"submitted {len(report.submitted)}, rejected {len(report.errors)} of {report.total} lines", file=sys.stderr)
    return EXIT_INPUT if report.errors else 0


def cmd_status(args: argparse.Namespace) -> int:
    client = _client(args)
    if args.providers:
        raw = client.redis.get(keys.PROVIDERS_SNAPSHOT)
        if raw is None:
            print("no provider snapshot yet (workers publish one every sweep)", file=sys.stderr)
            return 1
        rows = orjson.loads(raw)
        print(f"{'provider:model':40} {'breaker':10} {'req/min left':>12} {'tok/min left':>12}")
        for key, row in sorted(rows.items()):
            print(f"{key:40} {row.get('state', '?'):10} {row.get('requests', 0):12.0f} {row.get('tokens', 0):12.0f}")
        return 0
    status = client.status(args.job_id)
    reason = None
    if status == "failed":  # the reason: the job's error (dead-letter), else the result's
        raw = client.redis.hget(keys.job(args.job_id), "error")
        res = None if raw else client.result(args.job_id)
        reason = raw.decode() if raw else (res.error if res else None)
    print(f"{status}: {reason}" if reason else status)  # e.g. "failed: no member answered (m0: HTTP 401 ...)"
    return 0 if status != "failed" else EXIT_FAILED


def cmd_result(args: argparse.Namespace) -> int:
    res = _client(args).result(args.job_id)
    if res is None:
        print("not done yet", file=sys.stderr)
        return 1
    _print_json(res.model_dump(mode="json"))
    return 0 if res.status == "decided" else 1


def cmd_wait(args: argparse.Namespace) -> int:
    from producer.waiting import wait_cmd

    return wait_cmd(_client(args), args.job_ids, args.timeout)


def cmd_ledger(args: argparse.Namespace) -> int:
    from producer import labels
    from producer.ledger_view import stage_rates, summarise, table

    client = _client(args)
    if args.html or args.serve is not None:
        from producer.ledger_serve import ledger_cmd

        return ledger_cmd(client, args.html, args.serve, args.labels)
    receipts = client.ledger()
    print(table(summarise(receipts)))
    stages = stage_rates(receipts)
    if stages:
        print("\n" + "\n".join(stages))
    fed_back = labels.get_all(client.redis)
    if fed_back:
        print("\n".join(labels.summary(receipts, fed_back)))
    return 0


def cmd_label(args: argparse.Namespace) -> int:
    from producer import labels

    client = _client(args)
    if args.export:
        if not args.task_class:
            raise labels.LabelError("--export needs --task-class (one class's jobs make one replay file)")
        for said in labels.export_file(client.redis, client.ledger(), args.task_class, args.kind, Path(args.export)):
            print(said, file=sys.stderr)
    elif args.file:
        print(f"stored {labels.put_file(client.redis, Path(args.file))} labels", file=sys.stderr)
    elif args.job_id and args.label:
        labels.put(client.redis, args.job_id, args.label, args.answer)
    else:
        raise labels.LabelError("give JOB correct|wrong, --file labels.jsonl, or --export FILE --task-class NAME")
    return 0


def cmd_up(args: argparse.Namespace) -> int:
    from producer.up import UpOptions, run_up

    return run_up(UpOptions(redis_url=args.redis_url, redis_port=args.redis_port, workers=args.workers, concurrency=args.concurrency,
                            simulator=args.simulator, flower=args.flower, flower_port=args.flower_port))  # fmt: skip


def cmd_demo(args: argparse.Namespace) -> int:
    from producer.demo import run_demo

    return run_demo(Path(args.examples), keep=args.keep)


def cmd_eval(args: argparse.Namespace) -> int:
    from evaluation.main import evaluate

    try:
        evaluate(Path(args.file), args.policy, Path(args.out), latency_scale=args.latency_scale, limit=args.limit,
                 repeat=args.repeat, offline=args.offline)  # fmt: skip
    except ValueError as e:
        print(f"panel eval: {e}", file=sys.stderr)
        return EXIT_INPUT
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from gateway.serve import serve  # lazily: `producer` does not import `gateway` at load
    from gateway.settings import GatewaySettings

    settings = GatewaySettings.from_env().model_copy(update={"host": args.host, "port": args.port})
    serve(settings, args.redis_url, args.log_level)
    return 0


def cmd_keys(args: argparse.Namespace) -> int:
    from gateway.tenants import Keys

    keys_ = Keys(_client(args).redis)
    if args.action == "create":
        k = keys_.create(args.tenant, budget_usd=args.budget_usd, rate_per_s=args.rate, rate_burst=args.burst)
        print(k.api_key)  # the only time the key is shown: only its hash is stored
        print(f"key id {k.id} for tenant {k.tenant}; callback signing secret: {k.callback_secret}", file=sys.stderr)
    elif args.action == "revoke":
        print(f"revoked key {args.tenant} of tenant {keys_.revoke(args.tenant)}", file=sys.stderr)
    else:
        for row in keys_.list():
            print(f"{row['id']}\t{row['tenant']}\t{'revoked' if row['revoked'] else 'active'}")
    return 0


def cmd_tune(args: argparse.Namespace) -> int:
    from evaluation.replay import ReplayFormatError
    from evaluation.tune import Rule, parse_budget
    from evaluation.tune_cli import main as tune_main

    command = "panel tune " + " ".join(sys.argv[2:]) if sys.argv[1:2] == ["tune"] else f"panel tune {args.file}"
    try:
        given = {"tolerance": args.tolerance, "max_stages": args.max_stages, "inner_folds": args.inner_folds,
                 "min_support": args.min_support, "rate_step": args.rate_step, "last": args.last, "z": args.z, "margin": args.margin,
                 "confirms": True if args.confirm else None, "pick": args.pick}
        rule = Rule(**{k: v for k, v in given.items() if v is not None})  # unset: the default rule's constants
        if args.budget is not None:
            rule = dataclasses.replace(rule, budget=parse_budget(args.budget))
        return tune_main(Path(args.file), args.folds, args.seed, Path(args.write) if args.write else None,
                         args.task_class, rule, command)  # fmt: skip
    except (ValueError, ReplayFormatError) as e:
        print(f"panel tune: {e}", file=sys.stderr)
        return 2


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="panel", description="panel-fleet: LLM panels as queued jobs",
                                epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--redis-url", default=None, help="default: $PANEL_REDIS_URL or redis://127.0.0.1:6379/0")
    sub = p.add_subparsers(dest="cmd", required=True)

    def parser(name: str, text: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=text, description=text, epilog=EXIT_CODES,
                              formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip

    s = parser("up", "run a local fleet until Ctrl-C: redis (embedded unless PANEL_REDIS_URL), the simulator "
                     "(unless a provider key is set), control + tier workers; live status")  # fmt: skip
    s.add_argument("--redis-port", type=int, default=6379,
                   help="the embedded Redis's port (default 6379; any free one when taken)")
    s.add_argument("--workers", type=int, default=0, help="tier worker processes (default: one per core)")
    s.add_argument("--concurrency", type=int, default=0,
                   help="calls in flight per tier process (threads; default: 128 split across the processes)")
    s.add_argument("--simulator", action=argparse.BooleanOptionalAction, default=None,
                   help="use the simulator (default: yes unless OPENAI/ANTHROPIC/FIREWORKS_API_KEY is set)")
    s.add_argument("--flower", action="store_true", help="also run Flower (task monitor) on 127.0.0.1")
    s.add_argument("--flower-port", type=int, default=5555, help="Flower's port (default 5555)")
    s.set_defaults(func=cmd_up)

    s = parser("submit", "submit one job; prints its id")
    s.add_argument("--file", help="a JSON file holding one Job (fields: producer/contract.py, class Job)")
    s.add_argument("--task-class", help="a class of policies/tasks.yaml, e.g. code_review, extraction")
    s.add_argument("--prompt", help="the prompt text")
    s.add_argument("--prompt-file", help="read the prompt from this file (- for stdin), e.g. `git show | ...`")
    s.add_argument("--flag", action="append", help="a job flag a trigger may match (repeatable), e.g. migration")
    s.add_argument("--lane", choices=["single", "panel", "cascade"], help="force the starting lane (default: the policy's)")
    s.add_argument("--mode", choices=["realtime", "batch"], help="batch: the providers' batch APIs at batch prices")
    s.add_argument("--idempotency-key", help="a resubmission with the same key returns the first job's id")
    s.add_argument("--tenant", help="the tenant whose budget pays (default: default)")
    s.set_defaults(func=cmd_submit)

    s = parser("submit-many", "submit a JSONL file (- for stdin); bad lines reported, good ones run")
    s.add_argument("file", help="one Job per line (JSON), or - for stdin")
    s.set_defaults(func=cmd_submit_many)

    s = parser("status", "a job's status (with the reason when it failed), or --providers")
    s.add_argument("job_id", nargs="?", help="the id `panel submit` printed")
    s.add_argument("--providers", action="store_true", help="breaker state and limiter headroom per provider:model")
    s.set_defaults(func=cmd_status)

    s = parser("result", "a job's result and receipt (JSON); exit 1 if not done yet")
    s.add_argument("job_id", help="the id `panel submit` printed")
    s.set_defaults(func=cmd_result)

    s = parser("wait", "wait for jobs, then print each result (one id: indented JSON; several: one JSON per line)")
    s.add_argument("job_ids", nargs="+", metavar="JOB_ID", help="one or more ids `panel submit` printed")
    s.add_argument("--timeout", type=float, default=300.0, help="seconds for all of them (default 300); exit 1 after")
    s.set_defaults(func=cmd_wait)

    s = parser("ledger", "per task class: jobs, escalation, arbiter, changed answers, cost, latency; per cascade stage: reached, accepted")
    s.add_argument("--html", metavar="FILE", help="write the ledger page (plots, receipts by job id) to FILE")
    s.add_argument("--serve", type=int, metavar="PORT", help="serve the ledger page on 127.0.0.1:PORT until Ctrl-C")
    s.add_argument("--labels", metavar="FILE", help='JSONL {"job_id": ..., "correct": true|false} (or "label": "correct"|"wrong") besides `panel label`s: labelled accuracy')
    s.set_defaults(func=cmd_ledger)

    s = parser("label", "feed back whether a decided job's answer was right (kept beside the ledger)")
    s.add_argument("job_id", nargs="?", help="the job whose answer is labelled")
    s.add_argument("label", nargs="?", choices=["correct", "wrong"], help="correct or wrong")
    s.add_argument("--answer", help="the right answer (with `wrong`): the other models' answers are scored against it")
    s.add_argument("--file", help='a JSONL of {"job_id": ..., "label": "correct"|"wrong"[, "answer": "C"]}')
    s.add_argument("--export", help="write one task class's labelled jobs as a replay file (for panel tune)")
    s.add_argument("--task-class", help="--export: the class whose labelled jobs are written")
    s.add_argument("--kind", choices=["choice", "number", "label", "text"],
                   help="the exported rows' kind, which sets the agreement rule panel tune writes (default: from the answers)")
    s.set_defaults(func=cmd_label)

    s = parser("eval", "replay a recorded-answers file through the fleet under policies; table, JSON, PNG")
    s.add_argument("file", help="a replay JSONL(.gz) file (shared/data/replay format)")
    s.add_argument("--policy", action="append", required=True, help="policies/eval/NAME or a YAML path; repeatable")
    s.add_argument("--out", default="eval-out", help="folder for the JSON and PNG")
    s.add_argument("--latency-scale", type=float, default=1.0, help="multiply recorded latencies (0.1: 10x faster)")
    s.add_argument("--limit", type=int, default=None, help="only the first N questions")
    s.add_argument("--repeat", type=int, default=1,
                   help="submit every question N times, shuffled (a policy with cache_ttl_s serves repeats from its cache)")
    s.add_argument("--offline", action="store_true", help="replay the policies on the recorded rows, no fleet "
                   "(a cascade policy, e.g. a file `panel tune --write` wrote, runs on the fleet's cascade lane otherwise)")  # fmt: skip
    s.set_defaults(func=cmd_eval)

    s = parser("serve", "the HTTP gateway: jobs API, OpenAI-compatible chat and Batch API (gateway/)")
    s.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    s.add_argument("--port", type=int, default=8080, help="port (default 8080)")
    s.add_argument("--log-level", default="info", help="uvicorn's log level (default info)")
    s.set_defaults(func=cmd_serve)

    s = parser("keys", "gateway API keys: create TENANT | revoke KEY_ID | list")
    s.add_argument("action", choices=["create", "revoke", "list"], help="create, revoke or list keys")
    s.add_argument("tenant", nargs="?", help="create: the tenant; revoke: the key id (or the key)")
    s.add_argument("--budget-usd", type=float, help="create: the tenant's budget per UTC day")
    s.add_argument("--rate", type=float, help="create: the tenant's requests/s (fleet-wide)")
    s.add_argument("--burst", type=float, help="create: requests the tenant may send at once")
    s.set_defaults(func=cmd_keys)

    s = parser("tune", "choose a cascade/panel from recorded outcomes by k-fold cross-validation")
    s.add_argument("file", help="a replay JSONL(.gz) file (shared/data/replay format)")
    s.add_argument("--folds", type=int, default=5, help="cross-validation folds (default 5)")
    s.add_argument("--seed", type=int, default=0, help="fold assignment")
    s.add_argument("--write", help="write the chosen tasks.yaml entry to this YAML file")
    s.add_argument("--task-class", default="tuned", help="the task class name in the written entry")
    # every rule flag defaults to evaluation.tune.Rule()'s constant (chosen by evaluation.transfer; bench/RESULTS.md)
    s.add_argument("--tolerance", type=float, help="training accuracy a policy may give up vs the strongest model")
    s.add_argument("--max-stages", type=int, choices=[1, 2, 3], help="most cascade stages considered")
    s.add_argument("--inner-folds", type=int, help=">= 2: choose on scores cross-validated inside each training fold")
    s.add_argument("--min-support", type=int, help="a confidence gate's accept region holds at least this many training rows")
    s.add_argument("--rate-step", type=float, help="gates' accept rates step, 2*step, ..., 1-step (0.05: 19 thresholds per model)")
    s.add_argument("--last", choices=["strongest", "tied"], help="cascades end in the strongest model, or also the cheapest tied with it")
    s.add_argument("--z", type=float, help="> 0: require the paired lower bound diff - z*se vs the strongest >= -margin")
    s.add_argument("--margin", type=float, help="with --z: the share of the strongest model's accuracy a policy may lose on that lower bound (0.01)")
    s.add_argument("--confirm", action="store_true", help="also search gate -> a model confirming its answer (agrees_previous) -> last")
    s.add_argument("--pick", choices=["cheapest", "max_lcb"], help="among eligible policies: the cheapest, or the best paired lower bound")
    s.add_argument("--budget", help="a share of the strongest model's cost (default 0.40): the most accurate eligible policy that cheap; off: the cheapest eligible")
    s.set_defaults(func=cmd_tune)

    s = parser("demo", "start redis, the simulator and workers; run examples/; stop all")
    s.add_argument("--examples", default=str(Path(__file__).resolve().parent.parent / "examples"),
                   help="a folder with jobs.jsonl (and optionally sim.yaml)")
    s.add_argument("--keep", action="store_true", help="leave the fleet running (Ctrl-C stops it); see `panel up`")
    s.set_defaults(func=cmd_demo)

    from producer import capacity  # the model: producer/capacity.py

    text = "what a target load needs (processes, Redis, provider keys) from a measured profile; docs/capacity.md"
    capacity.add_parser(sub, help=text, description=text, epilog=EXIT_CODES,
                        formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.cmd == "keys" and args.action != "list" and not args.tenant:
        print(f"panel keys {args.action}: give a {'tenant' if args.action == 'create' else 'key id'}", file=sys.stderr)
        return EXIT_INPUT
    if args.cmd == "status" and not args.providers and not args.job_id:
        print("panel status: give a job id or --providers", file=sys.stderr)
        return EXIT_INPUT
    if args.cmd == "submit" and not args.file and not (args.task_class and (args.prompt or args.prompt_file)):
        print("panel submit: give --file JOB.json, or --task-class with --prompt or --prompt-file", file=sys.stderr)
        return EXIT_INPUT
    import redis

    try:
        return int(args.func(args))
    except JobTimeout as e:
        print(f"panel {args.cmd}: {e}", file=sys.stderr)
        return EXIT_FAILED
    except NoWorker as e:
        print(f"panel {args.cmd}: {e}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except PanelError as e:
        print(f"panel {args.cmd}: {e}", file=sys.stderr)
        return EXIT_INPUT
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as e:
        url = args.redis_url or os.environ.get("PANEL_REDIS_URL") or "redis://127.0.0.1:6379/0"
        print(f"panel {args.cmd}: cannot reach Redis at {_safe(url)} ({str(e).splitlines()[0][:120]}); "
              "start a fleet with `panel up`, or point PANEL_REDIS_URL / --redis-url at a running Redis",
              file=sys.stderr)  # fmt: skip
        return EXIT_UNREACHABLE
    except OSError as e:
        print(f"panel {args.cmd}: {e}", file=sys.stderr)
        return EXIT_INPUT


def _safe(url: str) -> str:
    """The URL without its password (redis://:secret@host -> redis://:***@host)."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    if parts.password:
        return url.replace(f":{parts.password}@", ":***@")
    return url


if __name__ == "__main__":
    sys.exit(main())
