"""Run evaluation policies through a real local fleet (redis-server, simulator replaying the
file, Celery worker processes) and score what comes back.

Questions go in through a window of `in_flight` jobs at a time, so a receipt's latency (submit
to decision) is the panel's own and not the wait behind a whole file submitted at once. The
eval's registry lifts every model's rpm/tpm: the run measures policies, not provider quotas
(the limiter would otherwise pace a replay at the shipped production limits)."""

from __future__ import annotations

import csv
import random
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from evaluation.policy import CascadePolicy, EvalPolicy
from evaluation.reference import Score
from evaluation.replay import Row, agreement_for, is_correct
from producer import keys
from producer.client import PanelClient
from producer.contract import Result
from producer.fleet import SIM_KEY, Fleet
from producer.progress import progress

UNLIMITED_RPM, UNLIMITED_TPM = 1_000_000, 1_000_000_000

SHIPPED = Path(__file__).resolve().parent.parent / "policies"


def prices_near(file: Path) -> dict[str, tuple[float, float]]:
    """Prices from a models.csv beside the replay file (its README derives them from the data)."""
    out: dict[str, tuple[float, float]] = {}
    path = file.parent / "models.csv"
    if path.exists():
        for row in csv.DictReader(path.open()):
            if row.get("price_in_usd_per_1m") and row.get("price_out_usd_per_1m"):
                out[row["name"]] = (float(row["price_in_usd_per_1m"]), float(row["price_out_usd_per_1m"]))
    return out


def write_policies(dest: Path, rows: list[Row], policies: list[EvalPolicy | CascadePolicy],
                   prices: dict[str, tuple[float, float]]) -> None:  # fmt: skip
    """models.yaml = the shipped registry plus every replayed model it lacks; tasks.yaml = one
    task class per evaluated policy (a cascade policy's entry exactly as its file has it, on the
    fleet's cascade lane)."""
    registry = yaml.safe_load((SHIPPED / "models.yaml").read_text())
    registry["providers"]["replay"] = {"api": "openai", "base_url_env": "REPLAY_BASE_URL",
                                       "key_env": "REPLAY_API_KEY", "default_base_url": "http://127.0.0.1:9/v1"}  # fmt: skip
    for model in sorted({m for r in rows for m in r.models}):
        if model not in registry["models"]:
            p_in, p_out = prices.get(model, (0.0, 0.0))
            registry["models"][model] = {
                "provider": "replay", "tier": "economy", "price": {"input": p_in, "output": p_out},
                "batch_price": {"input": p_in / 2, "output": p_out / 2},
                "context_window": 200000,
            }  # fmt: skip
    for spec in registry["models"].values():
        spec.update(rpm=UNLIMITED_RPM, tpm=UNLIMITED_TPM)
    kind = rows[0].kind
    tasks: dict[str, Any] = {}
    for p in policies:
        if isinstance(p, CascadePolicy):
            tasks[p.task_class] = {**p.entry(), "default_lane": "cascade"}
            continue
        members = p.members or [p.model]
        tasks[p.task_class] = {
            "default_lane": p.lane,
            "single": {"model": p.model or members[0]},
            "panel": {"members": members, "quorum": min(p.quorum, len(members)), "dispatch": p.dispatch,
                      "agreement": agreement_for(kind), "arbiter": p.arbiter or members[0]},
            "mode": p.mode,
        }  # fmt: skip
        if p.cache_ttl_s is not None:
            tasks[p.task_class]["cache"] = {"ttl_s": p.cache_ttl_s}
    (dest / "models.yaml").write_text(yaml.safe_dump(registry, sort_keys=False))
    (dest / "tasks.yaml").write_text(yaml.safe_dump({"task_classes": tasks}, sort_keys=False))


def refused(dest: Path, policies: list[EvalPolicy | CascadePolicy]) -> None:
    """The policies as the fleet's workers load them, before any starts: a policy they would refuse
    is a ValueError naming its file (or name) and field, not a worker that exits behind a traceback."""
    from workers.errors import PolicyError
    from workers.policy import PolicyTable
    from workers.registry import Registry

    try:
        PolicyTable.load(Registry.load(dest / "models.yaml"), dest / "tasks.yaml")
    except PolicyError as e:
        said, field = str(e).split(f"{e.field}: ", 1)[-1], e.field
        for p in policies:  # the eval's own class name back to the policy's
            prefix = f"task_classes.{p.task_class}"
            if field == prefix or field.startswith(prefix + "."):
                source = p.path if isinstance(p, CascadePolicy) else p.name
                field = f"{source}: task_classes.{p.name}{field[len(prefix):]}"
        raise ValueError(f"the fleet refuses the policy: {field}: {said} (`--offline` replays it without the fleet)") from None


def windowed(client: PanelClient, jobs: list[dict[str, Any]], in_flight: int, timeout_s: float) -> Iterator[tuple[int, Result]]:
    """Submit `jobs` keeping at most `in_flight` undecided; yield (index, result) as each is done."""
    end = time.monotonic() + timeout_s
    waiting: dict[str, int] = {}
    queue = iter(enumerate(jobs))
    exhausted = False
    while waiting or not exhausted:
        while not exhausted and len(waiting) < in_flight:
            item = next(queue, None)
            if item is None:
                exhausted = True
                break
            waiting[client.submit(item[1])] = item[0]
        if not waiting:
            break
        if time.monotonic() > end:
            raise TimeoutError(f"{len(waiting)} eval jobs not done after {timeout_s:.0f}s")
        channels = {keys.done_channel(j): j for j in waiting}
        got = client.redis.blpop(list(channels), timeout=1.0)
        ready = [channels[got[0].decode()]] if got else list(waiting)  # on a quiet second, poll them all
        for jid in ready:
            res = client.result(jid)
            if res is not None and res.status in ("decided", "failed"):
                yield waiting.pop(jid), res


def score_result(s: Score, r: Row, res: Result, rule: Any) -> None:
    """Add one question's fleet result to the policy's score: recorded costs for answered members,
    the fleet's own price for the rest (cancelled in flight, failed, the arbiter)."""
    s.questions += 1
    rc = res.receipt
    if res.status != "decided" or rc is None or res.answer is None:
        s.failed += 1
        return
    s.correct += is_correct(r.kind, rule.key(res.answer, []), r.gold)
    s.latencies_ms.append(rc.latency_ms)
    s.early_exits += rc.early_exit
    for c in rc.calls:
        if c.status in ("answered", "late", "failed"):
            s.calls += 1
        recorded = r.models.get(c.model)
        if c.role == "member" and c.status in ("answered", "late") and recorded and recorded.cost_usd is not None:
            s.cost_usd += recorded.cost_usd * (0.5 if c.batch else 1.0)
        else:
            s.cost_usd += c.cost_usd
            s.cost_estimated += c.status in ("answered", "late") and c.role == "member"
        s.arbiter_calls += c.role == "arbiter"
    s.arbiter_fallbacks += rc.decision == "majority" or bool(rc.verdict and rc.verdict.fallback)
    if rc.served_from_cache:
        s.cache_hits += 1
        s.cache_saved_usd += rc.saved_usd
    s.prompt_cache_saved_usd += sum(c.cache_saved_usd for c in rc.calls)


def run(file: Path, rows: list[Row], policies: list[EvalPolicy | CascadePolicy], latency_scale: float = 1.0,
        timeout_s: float = 1800.0, in_flight: int = 16, repeat: int = 1) -> list[Score]:  # fmt: skip
    """`repeat`: every question goes in that many times, shuffled (seeded), as repeats come in a
    real queue; a policy with `cache_ttl_s` then serves repeats from its answer cache."""
    from workers.panel.agreement import make_rule  # scoring uses the fleet's own answer extraction
    from workers.policy import AgreementSpec

    tmp = Path(tempfile.mkdtemp(prefix="panel-eval-"))
    prices = prices_near(file)
    write_policies(tmp, rows, policies, prices)
    try:
        refused(tmp, policies)
    except ValueError:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    (tmp / "sim.yaml").write_text(yaml.safe_dump({"default": {"latency_mode": "recorded", "latency_scale": latency_scale}}))
    fleet = Fleet(sim_args=["--replay", str(file), "--config", str(tmp / "sim.yaml")],
                  env={"PANEL_POLICIES": str(tmp), "REPLAY_API_KEY": SIM_KEY, "REPLAY_BASE_URL": "$SIM_URL/v1"})  # fmt: skip
    scores: list[Score] = []
    try:
        fleet.start()
        client = PanelClient(fleet.redis_url)
        run_id = uuid.uuid4().hex[:6]
        rule = make_rule(AgreementSpec.model_validate(agreement_for(rows[0].kind)))
        for p in policies:
            order = [i for i in range(len(rows)) for _ in range(repeat)]
            random.Random(0).shuffle(order) if repeat > 1 else None
            jobs = [{"id": f"{run_id}-{p.name}-{n}", "task_class": p.task_class, "messages": rows[i].messages}
                    for n, i in enumerate(order)]  # fmt: skip
            s = Score(p.name, "fleet")
            t0 = time.monotonic()
            with progress(p.name, len(jobs)) as tick:  # a bar on stderr when it is a terminal
                for n, res in windowed(client, jobs, in_flight, timeout_s):
                    score_result(s, rows[order[n]], res, rule)
                    tick(s.questions, f"{s.correct} correct")
            s.wall_s = time.monotonic() - t0
            scores.append(s)
    finally:
        fleet.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    return scores
