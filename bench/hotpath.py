"""The hot path at the floor: a member call in the fleet against a bare Celery task and the ideal,
side by side in one run on one machine.

    python3 -m bench.hotpath                          # short: ~2 min
    python3 -m bench.hotpath --duration 60 --rates 20,30,45,60

Prints, for the ideal (one asyncio process, httpx), a bare Celery task (bench/bare_task.py: same
broker, pool, Celery settings and HTTP library, no panel logic), the floor of the fleet's shape
(bench/floor_task.py: the bare task plus a control hop that publishes the three members, one
admission script before each call and one landing script after it that decides at quorum 2; no
panel-fleet code) and the fleet (agreeing 3-member panels, quorum 2, the slow member cancelled):
1. CPU ms per member call by process at `--rate` panels/s, and the fleet / bare-task ratio; for
   each form of the floor (`FLOORS`: with the control hop or the producer publishing the members;
   three publishes or one batch; sync httpx or one asyncio loop thread; Celery's defaults or the
   fleet's settings; and the fleet's choices all together) its processes' CPU (`--floor-processes`
   member processes), floor / bare task (Celery's defaults; with the fleet's settings, also the bare
   task with them) and fleet / floor. Whether the fleet's target against the bare task can be met
   by any code with this shape is floor / bare; what the fleet's own code adds is fleet / floor;
2. Redis round trips per member call, from the server's `total_reads_processed` (one per request
   a client sends; a pipeline or a script is one), split by connection from the kernel's count of
   data segments each connection sent the server (`ss -ti`: the same count, per socket): Celery's
   (kombu: unnamed connections), ours (connections named pf-*), the producer's (pf-producer: the
   benchmark's PanelClient), the benchmark's own (bench-*: the bare task's and the floor's done
   counters too), the floor's state (floor-state); then the commands by MONITOR, where MULTI..EXEC
   counts as one round trip, every other command as one (a pipeline's too: MONITOR does not show
   where a pipeline ends) and commands run by Lua as none;
3. decision latency at `--rate` panels/s against the ideal's (p50, p99), and the floor's (from the
   send to the decision's write);
4. the highest of `--rates` at which the fleet's p99 stays within 100 ms of the ideal's.
The machine is shared: the load average is printed, and every figure is a ratio to a path
measured in the same minute.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path

import redis
import yaml

from bench.floor_run import FLOORS, floor_decisions, run_floor, start_floor_workers
from bench.overhead import MEMBERS, cpu_seconds, ideal_panel, pct
from bench.roundtrips import Monitor, by_client, client_names, reads, segments_in, split
from bench.tracing import tree
from producer.client import PanelClient
from producer.embedded import child_env, stop_process
from producer.fleet import Fleet, default_workers

P99_MARGIN_MS = 100.0
SWEEP_S = 1.0  # Settings.sweep_interval_s's default, what compose and k8s run
IDLE_S = 10.0  # seconds of no work over which each process's idle CPU is measured


def own_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def run_ideal(base: str, panels: int, rate: float) -> list[float]:
    async def go() -> list[float]:
        import httpx

        async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=2000)) as client:
            jobs = []
            for _ in range(panels):
                jobs.append(asyncio.create_task(ideal_panel(client, base, f"ideal {uuid.uuid4().hex} A) x B) y")))
                await asyncio.sleep(1 / rate)
            return list(await asyncio.gather(*jobs))

    return asyncio.run(go())


BARE = {  # queue -> how its worker runs Celery (bench/bare_task.py)
    "bench.bare": "Celery's defaults",
    "bench.bare.fleet": "the fleet's Celery settings: event batches, kombu client, deferred acks (BARE_AS=fleet)",
}


def run_bare(fleet: Fleet, r: redis.Redis, panels: int, rate: float, queue: str = "bench.bare") -> None:
    from bench import bare_task

    bare_task.app.conf.broker_url = fleet.redis_url
    r.delete("bench:bare:done")
    for _ in range(panels):
        t = time.perf_counter()
        prompt = f"bare {uuid.uuid4().hex} A) x B) y"
        for m in MEMBERS:
            bare_task.bare.apply_async(args=[fleet.sim_url, m, prompt], queue=queue)
        time.sleep(max(0.0, 1 / rate - (time.perf_counter() - t)))
    end = time.time() + 120
    while int(r.get("bench:bare:done") or 0) < panels * len(MEMBERS) and time.time() < end:
        time.sleep(0.1)


def run_fleet(client: PanelClient, panels: int, rate: float) -> tuple[list[float], int]:
    ids = []
    for _ in range(panels):
        t = time.perf_counter()
        ids.append(client.submit({"task_class": "multiple_choice", "lane": "panel", "prompt": f"fleet {uuid.uuid4().hex} A) x B) y"}))
        time.sleep(max(0.0, 1 / rate - (time.perf_counter() - t)))
    out, undecided = [], 0
    for jid in ids:
        res = client.wait(jid, timeout=120)
        if res.receipt is None or res.status != "decided":
            undecided += 1
            continue
        out.append(res.receipt.latency_ms / 1000)
    return out, undecided


def tree_cpu(pid: int) -> float:
    """CPU seconds of a process and its children (a child's time, a quarantine child's say, is not
    in /proc/PID/stat until it is reaped)."""
    return sum(cpu_seconds(p) for p in tree(pid))


def measured(pids: dict[str, int], step: object, calls: int) -> dict[str, float]:
    """CPU ms per member call of each process (with its children) while `step()` runs."""
    before = {k: tree_cpu(p) for k, p in pids.items()}
    own = own_cpu()
    step()  # type: ignore[operator]
    cpu = {k: (tree_cpu(p) - before[k]) * 1000 / calls for k, p in pids.items()}
    cpu["bench (producer)"] = (own_cpu() - own) * 1000 / calls
    return cpu


def bench_policies() -> Path:
    """The shipped policies with limits far above the load: measure overhead, not the limiter."""
    tmp = Path(tempfile.mkdtemp(prefix="bench-policies-"))
    shipped = Path(__file__).resolve().parent.parent / "policies"
    reg = yaml.safe_load((shipped / "models.yaml").read_text())
    for m in reg["models"].values():
        m["rpm"], m["tpm"] = 1_000_000, 1_000_000_000
    (tmp / "models.yaml").write_text(yaml.safe_dump(reg))
    shutil.copy(shipped / "tasks.yaml", tmp / "tasks.yaml")
    return tmp


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rate", type=float, default=10.0, help="panels/s for CPU, round trips and latency")
    ap.add_argument("--duration", type=float, default=8.0, help="seconds per measured step (60 for the full run)")
    ap.add_argument("--rates", default="20,30,45", help="panels/s tried for the highest sustained rate")
    ap.add_argument("--threads", type=int, default=128, help="threads in each bare worker")
    ap.add_argument("--tier-processes", type=int, default=0, help="fleet tier processes (default: one per core)")
    ap.add_argument("--hold", type=float, default=0.0, help="seconds per sustained-rate step (default: --duration)")
    ap.add_argument("--floor-processes", type=int, default=1,
                    help="floor member processes, the threads split between them (default: 1, as the bare task)")
    args = ap.parse_args()
    hold = args.hold or args.duration
    # the deployed sweep interval (producer/settings.py), not the test fleet's 0.5 s
    fleet = Fleet(env={"PANEL_POLICIES": str(bench_policies()), "PANEL_SWEEP_INTERVAL_S": str(SWEEP_S)},
                  workers=default_workers(args.tier_processes or None))
    fleet.start()
    bares: dict[str, subprocess.Popen[bytes]] = {}
    floors: dict[bool, dict[str, subprocess.Popen[bytes]]] = {}  # fleet settings? -> role -> process (bench/floor_run.py)
    try:
        fleet.sim("/_sim/config", {"models": {m: {"latency_ms": ms, "answer": "B"} for m, ms in MEMBERS.items()}})
        for i, queue in enumerate(BARE):
            events = {"BARE_AS": "fleet"} if queue.endswith(".fleet") else {}
            bares[queue] = subprocess.Popen(
                [sys.executable, "-m", "celery", "-A", "bench.bare_task", "worker", "-Q", queue, "--pool", "threads",
                 "-c", str(args.threads), "--without-mingle", "--without-gossip", "-E", "--loglevel", "INFO",
                 "-n", f"bare{i}@%h"], env=child_env({"PANEL_REDIS_URL": fleet.redis_url, **events}),
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        member_threads = max(16, args.threads // args.floor_processes)
        floors = start_floor_workers(fleet.redis_url, member_threads, args.floor_processes)
        r = redis.Redis.from_url(fleet.redis_url, client_name="bench-main")
        client = PanelClient(fleet.redis_url)
        time.sleep(4)
        for queue in BARE:
            run_bare(fleet, r, 5, 5, queue)  # warm-up: imports, connections, the sim's caches
        for form in FLOORS:
            run_floor(fleet, r, 5, 5, form)  # and the scripts loaded
        run_fleet(client, 5, 5)
        n = max(10, int(args.rate * args.duration))
        calls = n * len(MEMBERS)
        workers = {name: p.pid for name, p in fleet.procs.items()}
        assert fleet.redis is not None
        shared = {"redis": fleet.redis.proc.pid}
        print(f"machine: {os.cpu_count()} cores; load average at start {os.getloadavg()}")
        print(f"command: python3 -m bench.hotpath --rate {args.rate:g} --duration {args.duration:g} --rates {args.rates}"
              f"{f' --tier-processes {args.tier_processes}' if args.tier_processes else ''}{f' --hold {hold:g}' if args.hold else ''}"
              f"{f' --floor-processes {args.floor_processes}' if args.floor_processes != 1 else ''}")
        print(f"fleet processes: {', '.join(workers)}; members (latency ms) {MEMBERS}; {n} panels = {calls} member calls per path\n")

        time.sleep(1)
        idle_pids = {**workers, **{f"bare ({how.split(':')[0]})": bares[q].pid for q, how in BARE.items()},
                     **{f"{role}{' (fleet settings)' if as_fleet else ''}": p.pid
                        for as_fleet, procs in floors.items() for role, p in procs.items()}, **shared}  # fmt: skip
        idle0, t0 = {k: tree_cpu(p) for k, p in idle_pids.items()}, time.monotonic()
        time.sleep(IDLE_S)
        idle = {k: (tree_cpu(p) - idle0[k]) * 1000 / (time.monotonic() - t0) for k, p in idle_pids.items()}
        print(f"0. Idle CPU ms per second, no job for {IDLE_S:g} s (timers, the sweep every {SWEEP_S:g} s, batch ticks, "
              "heartbeats, BRPOP timeouts):\n   " + ", ".join(f"{k} {v:.1f}" for k, v in idle.items()) + "\n")

        holder: dict[str, object] = {}
        cpu_ideal = measured({}, lambda: holder.update(ideal=run_ideal(fleet.sim_url, n, args.rate)), calls)
        cpu_bare, rt_bare, split_bare = {}, {}, {}
        port = int(fleet.redis_url.rsplit(":", 1)[1].split("/")[0])
        for queue in BARE:
            rt0, seg0 = reads(r), segments_in(port)
            cpu_bare[queue] = measured({"bare worker": bares[queue].pid, **shared},
                                       lambda q=queue: run_bare(fleet, r, n, args.rate, q), calls)  # fmt: skip
            rt_bare[queue] = (reads(r) - rt0) / calls
            split_bare[queue] = by_client(seg0, segments_in(port), client_names(r))
        cpu_floor, rt_floor, split_floor, sent_floor = {}, {}, {}, {}
        for form in FLOORS:
            procs = {role: p.pid for role, p in floors[form.fleet].items() if form.hop or role != "floor control"}
            rt0, seg0 = reads(r), segments_in(port)
            cpu_floor[form] = measured({**procs, **shared},
                                       lambda f=form: sent_floor.update({f: run_floor(fleet, r, n, args.rate, f)}), calls)  # fmt: skip
            rt_floor[form] = (reads(r) - rt0) / calls
            split_floor[form] = by_client(seg0, segments_in(port), client_names(r))
        decided_floor = {form: floor_decisions(r, sent) for form, sent in sent_floor.items()}
        rt0, seg0 = reads(r), segments_in(port)
        cpu_fleet = measured({**workers, **shared}, lambda: holder.update(fleet=run_fleet(client, n, args.rate)), calls)
        rt_fleet = (reads(r) - rt0) / calls
        split_fleet = by_client(seg0, segments_in(port), client_names(r))
        ideal: list[float] = holder["ideal"]  # type: ignore[assignment]
        fl, undecided = holder["fleet"]  # type: ignore[misc]

        print("1. CPU ms per member call, by process (bare task: Celery's defaults; bare fleet: the fleet's settings)")
        paths = (("ideal", cpu_ideal), ("bare task", cpu_bare["bench.bare"]),
                 ("bare fleet", cpu_bare["bench.bare.fleet"]), ("fleet", cpu_fleet))  # fmt: skip
        for name, cpu in paths:
            print(f"   {name:10} " + ", ".join(f"{k} {v:.2f}" for k, v in cpu.items()))
        w_fleet, a_fleet = sum(v for k, v in cpu_fleet.items() if k in workers), sum(cpu_fleet.values())
        for queue, how in BARE.items():
            w_bare, a_bare = cpu_bare[queue]["bare worker"], sum(cpu_bare[queue].values())
            print(f"   against the bare task with {how}:\n"
                  f"      workers: fleet {w_fleet:.2f} / bare {w_bare:.2f} = {w_fleet / w_bare:.2f}x;  all processes: "
                  f"fleet {a_fleet:.2f} / bare {a_bare:.2f} = {a_fleet / a_bare:.2f}x;  ideal {sum(cpu_ideal.values()):.2f}")
        print(f"   the floor: the fleet's shape with no panel-fleet code (bench/floor_task.py: admission and landing "
              f"scripts, decision once at quorum 2, no cancellation), its control process of 16 threads, "
              f"{args.floor_processes} member process(es) of {member_threads} threads; against the bare task (Celery's "
              "defaults, the issue's reference; a floor with the fleet's settings also against the bare task with "
              "them), and the fleet against it:")
        for form in FLOORS:
            cpu = cpu_floor[form]
            w_floor, a_floor = sum(v for k, v in cpu.items() if k.startswith("floor")), sum(cpu.values())
            against = [("bare", cpu_bare["bench.bare"])] + ([("bare fleet", cpu_bare["bench.bare.fleet"])] if form.fleet else [])
            print(f"   {form.label}\n      " + ", ".join(f"{k} {v:.2f}" for k, v in cpu.items()) + "\n"
                  "      workers: " + "; ".join(f"floor {w_floor:.2f} / {name} {b['bare worker']:.2f} = "
                                               f"{w_floor / b['bare worker']:.2f}x" for name, b in against)
                  + f";  fleet {w_fleet:.2f} / floor {w_floor:.2f} = {w_fleet / w_floor:.2f}x;  all processes: "
                  + ", ".join(f"floor / {name} {a_floor / sum(b.values()):.2f}x" for name, b in against)
                  + f", fleet / floor {a_fleet / a_floor:.2f}x")

        print("\n2. Redis round trips per member call (server total_reads_processed)")
        print(f"   bare task {rt_bare['bench.bare']:.1f} (as the fleet: {rt_bare['bench.bare.fleet']:.1f});  "
              f"fleet {rt_fleet:.1f}")
        for form in FLOORS:
            print(f"   {form.label}: {rt_floor[form]:.1f}")
        print("   by connection (the server's data segments in, `ss -ti`; producer: the benchmark's PanelClient, "
              "its Celery publishes in Celery's):")
        for name, sp in (("bare task", split_bare["bench.bare"]), ("bare fleet", split_bare["bench.bare.fleet"]),
                         ("fleet", split_fleet)):  # fmt: skip
            print(f"   {name:10} " + ", ".join(f"{k} {sp[k] / calls:.1f}" for k in ("celery", "ours", "producer", "bench"))
                  + f"; all {sum(sp.values()) / calls:.1f}")
        print("   the floor's (floor: its state connection, floor-state; bench: its done counter, bench-floor, "
              "as the bare task's; ours: the idle fleet's meanwhile):")
        for form in FLOORS:
            sp = split_floor[form]
            print(f"   {form.label}\n      "
                  + ", ".join(f"{k} {sp[k] / calls:.1f}" for k in ("celery", "floor", "bench", "ours"))
                  + f"; all {sum(sp.values()) / calls:.1f}")
        k = max(10, n // 4)
        monitored: list[tuple[str, dict[str, Counter[str]]]] = []
        for name, queue in (("bare task", "bench.bare"), ("bare fleet", "bench.bare.fleet")):
            with Monitor(fleet.redis_url) as mon_b:
                run_bare(fleet, r, k, args.rate, queue)
            monitored.append((name, split(mon_b.lines, client_names(r))))
        for i, form in enumerate(FLOORS):
            with Monitor(fleet.redis_url) as mon_fl:
                run_floor(fleet, r, k, args.rate, form)
            monitored.append((f"floor {i + 1}", split(mon_fl.lines, client_names(r))))
        with Monitor(fleet.redis_url) as mon_f:
            run_fleet(client, k, args.rate)
        monitored.append(("fleet", split(mon_f.lines, client_names(r))))
        print("   (MONITOR: floor N is the Nth floor form above, in that order)")
        c = k * len(MEMBERS)
        for name, s in monitored:
            state = "floor" if name.startswith("floor") else "ours"  # Lua's commands are the floor's there
            print(f"   {name:10} (MONITOR, {k} panels) Celery {s['celery']['round_trips'] / c:.1f} round trips "
                  f"({s['celery']['commands'] / c:.1f} commands); {state} {s[state]['round_trips'] / c:.1f} round trips "
                  f"({s[state]['commands'] / c:.1f} commands, {s['lua']['commands'] / c:.1f} more inside Lua"
                  f"{', the idle fleet’s among them' if state == 'floor' else ''}); "
                  f"benchmark's own {s['bench']['round_trips'] / c:.1f}"
                  + (f"; the idle fleet's {s['ours']['round_trips'] / c:.1f}" if state == "floor" else ""))
            for kind in ("celery", state):
                top = [(cmd, v) for cmd, v in s[kind].most_common() if cmd not in ("commands", "round_trips")]
                print(f"   {'':10} {kind} commands per call: " + ", ".join(f"{cmd} {v / c:.2f}" for cmd, v in top[:16]))

        print(f"\n3. Decision latency at {args.rate:g} panels/s ({len(fl)} decided, {undecided} not)")
        i50, i99, f50, f99 = pct(ideal, 0.5), pct(ideal, 0.99), pct(fl, 0.5), pct(fl, 0.99)
        print(f"   ideal p50 {i50 * 1000:.0f} ms p99 {i99 * 1000:.0f} ms; fleet p50 {f50 * 1000:.0f} ms p99 {f99 * 1000:.0f} ms"
              f"  -> +{(f50 - i50) * 1000:.0f} / +{(f99 - i99) * 1000:.0f} ms")
        for form in FLOORS:
            got, lost = decided_floor[form]
            print(f"   {form.label}: p50 {pct(got, 0.5) * 1000 if got else 0:.0f} ms p99 "
                  f"{pct(got, 0.99) * 1000 if got else 0:.0f} ms ({len(got)} decided, {lost} not; from the send to "
                  "the decision's write)")

        print(f"\n4. Highest sustained rate with fleet p99 <= ideal p99 + {P99_MARGIN_MS:.0f} ms ({hold:g} s each)")
        best = 0.0
        for rate in [float(x) for x in args.rates.split(",")]:
            m = max(10, int(rate * hold))
            idl = run_ideal(fleet.sim_url, m, rate)
            load = os.getloadavg()[0]
            got, lost = run_fleet(client, m, rate)
            ok = bool(got) and not lost and (pct(got, 0.99) - pct(idl, 0.99)) * 1000 <= P99_MARGIN_MS
            print(f"   {rate:5.0f}/s: ideal p99 {pct(idl, 0.99) * 1000:.0f} ms, fleet p50 {pct(got, 0.5) * 1000 if got else 0:.0f} "
                  f"p99 {pct(got, 0.99) * 1000 if got else 0:.0f} ms, {lost} undecided, load {load:.1f}: {'ok' if ok else 'over'}")  # fmt: skip
            if not ok:
                break
            best = rate
        print(f"   highest sustained: {best:g} panels/s;  load average at end {os.getloadavg()}")
    finally:
        for proc in bares.values():
            stop_process(proc)
        for procs in floors.values():
            for proc in procs.values():
                stop_process(proc)
        fleet.stop()


if __name__ == "__main__":
    main()
    sys.stdout.flush()
    os._exit(0)
