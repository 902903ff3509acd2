"""The opt-in guarantees in one nightly-style run: every long drill the default suite leaves out
(or runs small), each with its figures printed, one after another on one machine.

    python3 -m tests.reliability.nightly                     # the whole night (~1.5-2 h on 2 cores)
    python3 -m tests.reliability.nightly --quick             # every drill at its small size (~10 min)
    python3 -m tests.reliability.nightly --only redis-drill  # one of them

Exit status: 0 when every step passed. Each step is a pytest run with its env, so any step can be
repeated alone with the command it prints.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Step:
    name: str
    tests: list[str]
    env: dict[str, str] = field(default_factory=dict)
    quick_env: dict[str, str] = field(default_factory=dict)


STEPS = [
    Step("crash-poison-late", ["tests/reliability/test_crash.py", "tests/reliability/test_poison.py",
                               "tests/reliability/test_late_members.py", "tests/reliability/test_redis_restart.py"],
         {"PANEL_RELIABILITY_FULL": "1"}, {"PANEL_RELIABILITY_FULL": "1"}),  # fmt: skip
    Step("watchdog-liveness", ["tests/reliability/test_watchdog.py", "tests/reliability/test_liveness.py"]),
    Step("redis-drill", ["tests/reliability/test_redis_drill.py"],
         {"PANEL_REDIS_DRILL_ROUNDS": "10", "PANEL_REDIS_DRILL_JOBS": "200"},
         {"PANEL_REDIS_DRILL_ROUNDS": "2", "PANEL_REDIS_DRILL_JOBS": "100"}),  # fmt: skip
    Step("ops-sigkill", ["tests/ops/test_sigterm.py"], {"PANEL_OPS_FULL": "1"}, {"PANEL_OPS_FULL": "1"}),
    Step("contract-props", ["tests/reliability/test_contract_props.py"],
         {"PANEL_RELIABILITY_FULL": "1", "PANEL_PROPS_SCALE": "10"}, {"PANEL_RELIABILITY_FULL": "1"}),  # fmt: skip
    Step("overload-default-deadlines", ["tests/reliability/test_overload.py"],
         {"PANEL_OVERLOAD_JOBS": "20000", "PANEL_OVERLOAD_DEFAULT_DEADLINES": "1"},
         {"PANEL_OVERLOAD_JOBS": "2000", "PANEL_OVERLOAD_DEFAULT_DEADLINES": "1"}),  # fmt: skip
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m tests.reliability.nightly", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="each drill at its small size")
    parser.add_argument("--only", choices=[s.name for s in STEPS], action="append", help="run only these steps")
    args = parser.parse_args(argv)
    results: list[tuple[str, int, float, str]] = []
    for step in STEPS:
        if args.only and step.name not in args.only:
            continue
        env = step.quick_env if args.quick else step.env
        shown = " ".join(f"{k}={v}" for k, v in env.items())
        cmd = [sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider", *step.tests]
        line = f"{shown} python3 -m pytest -q -s {' '.join(step.tests)}".strip()
        print(f"\n=== {step.name}: {line}", flush=True)
        t0 = time.monotonic()
        rc = subprocess.run(cmd, env={**os.environ, **env}).returncode
        results.append((step.name, rc, time.monotonic() - t0, line))
    print("\n=== nightly summary")
    for name, rc, took, _ in results:
        print(f"  {'PASS' if rc == 0 else 'FAIL'}  {name:28s} {took / 60:6.1f} min")
    return 0 if all(rc == 0 for _, rc, _, _ in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
