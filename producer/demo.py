"""`panel demo`: the main job on the embedded default. Starts a local redis-server, the simulator
and real worker processes, submits examples/jobs.jsonl, prints each result and a receipt summary,
and stops everything it started.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from producer.client import PanelClient
from producer.fleet import Fleet
from producer.ledger_view import summarise, table


def run_demo(examples: Path, keep: bool = False) -> int:
    jobs = examples / "jobs.jsonl"
    sim_config = examples / "sim.yaml"
    fleet = Fleet(sim_args=["--config", str(sim_config)] if sim_config.exists() else [])
    print(f"starting redis-server, the simulator and {len(fleet.workers)} worker processes (logs: {fleet.log_dir})")
    t0 = time.monotonic()
    ok = False
    fleet.start()
    try:
        print(f"fleet ready in {time.monotonic() - t0:.1f}s; submitting {jobs}")
        client = PanelClient(fleet.redis_url)
        with open(jobs, "rb") as f:
            report = client.submit_many(f)
        for err in report.errors:
            print(f"  rejected {err}")
        print(f"{len(report.submitted)} jobs submitted, {len(report.errors)} lines rejected\n")
        header = f"{'job':10} {'task class':18} {'lanes':14} {'decision':9} {'calls':>5} {'cost $':>10} {'ms':>6}  answer"
        print(header)
        print("-" * len(header))
        failed = 0
        for _line, job_id in report.submitted:
            res = client.wait(job_id, timeout=120)
            r = res.receipt
            if r is None:
                failed += 1
                print(f"{job_id[:10]:10} failed: {res.error}")
                continue
            lanes = ">".join(step.lane for step in r.lanes)
            made = sum(1 for c in r.calls if c.status in ("answered", "failed", "late"))
            answer = (res.answer or res.error or "").replace("\n", " ")[:48]
            print(f"{job_id[:10]:10} {r.task_class:18} {lanes:14} {r.decision:9} {made:5d} "
                  f"{r.total_cost_usd:10.6f} {r.latency_ms:6.0f}  {answer}")  # fmt: skip
            if r.triggers:
                print(f"{'':10} triggers: {', '.join(r.triggers)}")
            if r.disagreement:
                print(f"{'':10} disagreement: {r.disagreement[:100]}")
            failed += res.status != "decided"
        print("\nreceipt summary (panel ledger):")
        print(table(summarise(client.ledger())))
        stats = fleet.sim("/_sim/stats")
        totals = stats.get("totals")
        requests = totals.get("requests", "?") if isinstance(totals, dict) else "?"
        print(f"\nsimulator saw {requests} provider requests")
        ok = not failed
        if keep:
            print(f"\nfleet running: PANEL_REDIS_URL={fleet.redis_url}  (Ctrl-C to stop)")
            while True:
                time.sleep(3600)
        return 1 if failed else 0
    except KeyboardInterrupt:
        ok = True  # stopped on purpose: nothing to look into
        return 130
    finally:
        fleet.stop(keep_logs=not ok)  # logs stay (and are named) only when something failed
        if not ok:
            print(f"worker logs kept in {fleet.log_dir}", file=sys.stderr)
        print("stopped redis-server, simulator and workers", file=sys.stderr)
