"""Run evaluation policies through a real local fleet (redis-server, simulator replaying the
file, Celery worker processes) and score what comes back."""

from __future__ import annotations

import csv
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import yaml

from evaluation.policy import EvalPolicy
from evaluation.reference import Score
from evaluation.replay import Row, agreement_for, is_correct
from producer.client import PanelClient
from producer.fleet import SIM_KEY, Fleet

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


def write_policies(dest: Path, rows: list[Row], policies: list[EvalPolicy], prices: dict[str, tuple[float, float]]) -> None:
    """models.yaml = the shipped registry plus every replayed model it lacks; tasks.yaml = one
    task class per evaluated policy."""
    registry = yaml.safe_load((SHIPPED / "models.yaml").read_text())
    registry["providers"]["replay"] = {"api": "openai", "base_url_env": "REPLAY_BASE_URL",
                                       "key_env": "REPLAY_API_KEY", "default_base_url": "http://127.0.0.1:9/v1"}  # fmt: skip
    for model in sorted({m for r in rows for m in r.models}):
        if model not in registry["models"]:
            p_in, p_out = prices.get(model, (0.0, 0.0))
            registry["models"][model] = {
                "provider": "replay", "tier": "economy", "price": {"input": p_in, "output": p_out},
                "batch_price": {"input": p_in / 2, "output": p_out / 2}, "rpm": 100000, "tpm": 100000000,
                "context_window": 200000,
            }  # fmt: skip
    kind = rows[0].kind
    tasks: dict[str, Any] = {}
    for p in policies:
        members = p.members or [p.model]
        tasks[p.task_class] = {
            "default_lane": p.lane,
            "single": {"model": p.model or members[0]},
            "panel": {"members": members, "quorum": min(p.quorum, len(members)), "dispatch": p.dispatch,
                      "agreement": agreement_for(kind), "arbiter": p.arbiter or members[0]},
            "mode": p.mode,
        }  # fmt: skip
    (dest / "models.yaml").write_text(yaml.safe_dump(registry, sort_keys=False))
    (dest / "tasks.yaml").write_text(yaml.safe_dump({"task_classes": tasks}, sort_keys=False))


def run(file: Path, rows: list[Row], policies: list[EvalPolicy], latency_scale: float = 1.0,
        timeout_s: float = 1800.0) -> list[Score]:  # fmt: skip
    from workers.panel.agreement import make_rule  # scoring uses the fleet's own answer extraction
    from workers.policy import AgreementSpec

    tmp = Path(tempfile.mkdtemp(prefix="panel-eval-"))
    prices = prices_near(file)
    write_policies(tmp, rows, policies, prices)
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
            t0 = time.monotonic()
            ids = [client.submit({"id": f"{run_id}-{p.name}-{i}", "task_class": p.task_class, "messages": r.messages})
                   for i, r in enumerate(rows)]  # fmt: skip
            s = Score(p.name, "fleet")
            for r, jid in zip(rows, ids):
                res = client.wait(jid, timeout=max(1.0, timeout_s - (time.monotonic() - t0)))
                s.questions += 1
                rc = res.receipt
                if res.status != "decided" or rc is None or res.answer is None:
                    s.failed += 1
                    continue
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
                s.arbiter_fallbacks += rc.decision == "majority"
            scores.append(s)
    finally:
        fleet.stop()
    return scores
