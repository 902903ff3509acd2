"""`panel`: submit jobs, read results and receipts, summarise the ledger, run the local demo.

Errors are one line (no traceback) and exit 2 for bad input, 1 for a failed job or timeout.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import orjson

from producer.errors import PanelError


def _client(args: argparse.Namespace) -> Any:
    from producer.client import PanelClient

    return PanelClient(args.redis_url)


def _print_json(obj: Any) -> None:
    sys.stdout.write(orjson.dumps(obj, option=orjson.OPT_INDENT_2).decode() + "\n")


def cmd_submit(args: argparse.Namespace) -> int:
    if args.file:
        job: dict[str, Any] = orjson.loads(Path(args.file).read_bytes())
    else:
        job = {"task_class": args.task_class, "prompt": args.prompt}
        if args.flag:
            job["flags"] = args.flag
        for k in ("lane", "mode", "idempotency_key", "tenant"):
            if getattr(args, k):
                job[k] = getattr(args, k)
    job_id = _client(args).submit(job)
    print(job_id)
    return 0


def cmd_submit_many(args: argparse.Namespace) -> int:
    client = _client(args)
    src = sys.stdin.buffer if args.file == "-" else open(args.file, "rb")

    def progress(ok: int, bad: int) -> None:
        if sys.stderr.isatty():
            sys.stderr.write(f"\rsubmitted {ok}, rejected {bad}")
            sys.stderr.flush()

    with src:
        report = client.submit_many(src, progress)
    if sys.stderr.isatty():
        sys.stderr.write("\n")
    for line, job_id in report.submitted:
        print(f"{line}\t{job_id}")
    for err in report.errors:
        print(f"rejected: {err}", file=sys.stderr)
    print(f"submitted {len(report.submitted)}, rejected {len(report.errors)} of {report.total} lines", file=sys.stderr)
    return 2 if report.errors else 0


def cmd_status(args: argparse.Namespace) -> int:
    client = _client(args)
    if args.providers:
        raw = client.redis.get("pf:providers")
        if raw is None:
            print("no provider snapshot yet (workers publish one every sweep)", file=sys.stderr)
            return 1
        rows = orjson.loads(raw)
        print(f"{'provider:model':40} {'breaker':10} {'req/min left':>12} {'tok/min left':>12}")
        for key, row in sorted(rows.items()):
            print(f"{key:40} {row.get('state', '?'):10} {row.get('requests', 0):12.0f} {row.get('tokens', 0):12.0f}")
        return 0
    from producer import keys

    status = client.status(args.job_id)
    error = client.redis.hget(keys.job(args.job_id), "error") if status == "failed" else None
    print(f"{status}: {error.decode()}" if error else status)  # e.g. "failed: dead-letter: ..."
    return 0


def cmd_result(args: argparse.Namespace) -> int:
    res = _client(args).result(args.job_id)
    if res is None:
        print("not done yet", file=sys.stderr)
        return 1
    _print_json(res.model_dump(mode="json"))
    return 0 if res.status == "decided" else 1


def cmd_wait(args: argparse.Namespace) -> int:
    res = _client(args).wait(args.job_id, timeout=args.timeout)
    _print_json(res.model_dump(mode="json"))
    return 0 if res.status == "decided" else 1


def cmd_ledger(args: argparse.Namespace) -> int:
    from producer.ledger_view import summarise, table

    receipts = _client(args).ledger()
    print(table(summarise(receipts)))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from producer.demo import run_demo

    return run_demo(Path(args.examples), keep=args.keep)


def cmd_eval(args: argparse.Namespace) -> int:
    from evaluation.main import evaluate

    try:
        evaluate(Path(args.file), args.policy, Path(args.out), latency_scale=args.latency_scale, limit=args.limit,
                 repeat=args.repeat)  # fmt: skip
    except ValueError as e:
        print(f"panel eval: {e}", file=sys.stderr)
        return 2
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="panel", description="panel-fleet: LLM panels as queued jobs")
    p.add_argument("--redis-url", default=None, help="default: $PANEL_REDIS_URL or redis://127.0.0.1:6379/0")
    sub = p.add_subparsers(dest="cmd", required=True)

    s = sub.add_parser("submit", help="submit one job; prints its id")
    s.add_argument("--file", help="a JSON file holding one Job")
    s.add_argument("--task-class")
    s.add_argument("--prompt")
    s.add_argument("--flag", action="append")
    s.add_argument("--lane", choices=["single", "panel"])
    s.add_argument("--mode", choices=["realtime", "batch"])
    s.add_argument("--idempotency-key")
    s.add_argument("--tenant")
    s.set_defaults(func=cmd_submit)

    s = sub.add_parser("submit-many", help="submit a JSONL file (- for stdin); bad lines reported, good ones run")
    s.add_argument("file")
    s.set_defaults(func=cmd_submit_many)

    s = sub.add_parser("status", help="a job's status, or --providers for breakers and limiter headroom")
    s.add_argument("job_id", nargs="?")
    s.add_argument("--providers", action="store_true")
    s.set_defaults(func=cmd_status)

    for name, fn, text in (("result", cmd_result, "a job's result and receipt (JSON)"),
                           ("wait", cmd_wait, "wait for a job, then print its result")):  # fmt: skip
        s = sub.add_parser(name, help=text)
        s.add_argument("job_id")
        s.add_argument("--timeout", type=float, default=300.0)
        s.set_defaults(func=fn)

    s = sub.add_parser("ledger", help="per task class: jobs, escalation, arbiter, changed answers, cost, latency")
    s.set_defaults(func=cmd_ledger)

    s = sub.add_parser("eval", help="replay a recorded-answers file through the fleet under policies; table, JSON, PNG")
    s.add_argument("file", help="a replay JSONL(.gz) file (shared/data/replay format)")
    s.add_argument("--policy", action="append", required=True, help="policies/eval/NAME or a YAML path; repeatable")
    s.add_argument("--out", default="eval-out", help="folder for the JSON and PNG")
    s.add_argument("--latency-scale", type=float, default=1.0, help="multiply recorded latencies (0.1: 10x faster)")
    s.add_argument("--limit", type=int, default=None, help="only the first N questions")
    s.add_argument("--repeat", type=int, default=1,
                   help="submit every question N times, shuffled (a policy with cache_ttl_s serves repeats from its cache)")
    s.set_defaults(func=cmd_eval)

    s = sub.add_parser("demo", help="start redis, the simulator and workers; run examples/; stop all")
    s.add_argument("--examples", default=str(Path(__file__).resolve().parent.parent / "examples"))
    s.add_argument("--keep", action="store_true", help="leave the fleet running (Ctrl-C stops it)")
    s.set_defaults(func=cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.cmd == "status" and not args.providers and not args.job_id:
        print("panel status: give a job id or --providers", file=sys.stderr)
        return 2
    try:
        return int(args.func(args))
    except PanelError as e:
        print(f"panel {args.cmd}: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"panel {args.cmd}: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
