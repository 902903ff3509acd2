"""Labels fed back on decided jobs (`panel label JOB correct|wrong`, or a JSONL of them), kept in
Redis beside the ledger, and what they say about the ledger:

    panel label 7f3c... correct
    panel label --file labels.jsonl          # {"job_id": "...", "label": "correct"|"wrong"} per line
    panel label --export rows.jsonl --task-class qa_choice   # labelled receipts as a replay file
    panel tune rows.jsonl --write policy.yaml

The export turns each labelled job into a replay row: every member call that answered is a model's
recorded answer (its vote key, tokens, cost, latency); its `correct` is the label when it voted for
the decided answer, the opposite when the decided answer was labelled correct and it voted for
something else, and unknown otherwise. Only models answering on every exported job can be tuned on
(a production ledger holds the models a policy called, not the ones it did not).
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Any, Literal

import orjson
import redis
from pydantic import BaseModel, ConfigDict, ValidationError

from producer import keys
from producer.errors import PanelError

LABELS = f"{keys.PREFIX}labels"  # hash: job id -> {"label": ..., "at": unix s}


class LabelError(PanelError):
    pass


class _Line(BaseModel):
    model_config = ConfigDict(extra="forbid")
    job_id: str
    label: Literal["correct", "wrong"]


def put(r: redis.Redis, job_id: str, label: str) -> None:
    if label not in ("correct", "wrong"):
        raise LabelError(f"label: {label!r} is not correct|wrong")
    if not r.exists(keys.job(job_id)):
        raise LabelError(f"job_id: no job {job_id!r} in this Redis (label jobs the fleet decided)")
    r.hset(LABELS, job_id, orjson.dumps({"label": label, "at": time.time()}))


def put_file(r: redis.Redis, path: Path) -> int:
    """Every line checked before any is stored: a bad line names the file, line and field."""
    lines = []
    for n, raw in enumerate(path.read_bytes().splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            lines.append(_Line.model_validate(orjson.loads(raw)))
        except orjson.JSONDecodeError as e:
            raise LabelError(f"{path}:{n}: not JSON ({e}); one {{\"job_id\": ..., \"label\": \"correct\"|\"wrong\"}} per line") from None
        except ValidationError as e:
            err = e.errors()[0]
            raise LabelError(f"{path}:{n}: {'.'.join(map(str, err['loc'])) or '(line)'}: {err['msg']}") from None
    for line in lines:
        put(r, line.job_id, line.label)
    return len(lines)


def get_all(r: redis.Redis) -> dict[str, bool]:
    raw: dict[bytes, bytes] = r.hgetall(LABELS)  # type: ignore[assignment]
    return {k.decode(): orjson.loads(v)["label"] == "correct" for k, v in raw.items()}


def _decided_key(receipt: dict[str, Any]) -> str | None:
    keys_ = [c.get("answer_key") for c in receipt["calls"] if c["role"] == "member" and c["status"] in ("answered", "late")]
    tally = Counter(k for k in keys_ if k)
    return tally.most_common(1)[0][0] if tally and receipt["decision"] in ("single", "quorum", "majority") else None


def summary(receipts: list[dict[str, Any]], labels: dict[str, bool]) -> list[str]:
    """Per task class: labelled jobs, their accuracy, how often each lane step was the last one,
    and how often escalation changed a labelled answer (and whether the change was right)."""
    by_class: dict[str, list[dict[str, Any]]] = {}
    for rc in receipts:
        if rc["job_id"] in labels:
            by_class.setdefault(rc["task_class"], []).append(rc)
    out = []
    for tc, rs in sorted(by_class.items()):
        right = sum(labels[r["job_id"]] for r in rs)
        stops = Counter(r["lanes"][-1]["lane"] + (f":{r['lanes'][-1].get('check')}" if r["lanes"][-1].get("check") else "")
                        for r in rs if r["lanes"])  # fmt: skip
        changed = [r for r in rs if r.get("changed_vs_default")]
        out.append(f"{tc}: {len(rs)} labelled, {right / len(rs):.1%} correct; decided at "
                   + ", ".join(f"{k} {v}" for k, v in stops.most_common())
                   + f"; escalation changed {len(changed)} labelled answers ({sum(labels[r['job_id']] for r in changed)} now correct)")  # fmt: skip
    return out or ["no labelled job in the ledger (panel label JOB correct|wrong)"]


def export(receipts: list[dict[str, Any]], labels: dict[str, bool], task_class: str, kind: str = "label") -> list[dict[str, Any]]:
    """Labelled receipts of one task class as replay rows (see the module doc)."""
    rows = []
    for rc in receipts:
        if rc["task_class"] != task_class or rc["job_id"] not in labels:
            continue
        label, decided = labels[rc["job_id"]], _decided_key(rc)
        models: dict[str, dict[str, Any]] = {}
        for c in rc["calls"]:
            if c["role"] != "member" or c["status"] not in ("answered", "late") or not c.get("answer_key"):
                continue
            same = decided is not None and c["answer_key"] == decided
            correct = label if same else (False if label and decided is not None else None)
            models[c["model"]] = {"answer": c["answer_key"], "text": c["answer_key"], "correct": correct,
                                  "tokens_in": c["tokens_in"], "tokens_out": c["tokens_out"],
                                  "cost_usd": c["cost_usd"], "latency_ms": c["latency_ms"], "conf": c.get("logprob")}  # fmt: skip
        if models:
            rows.append({"id": rc["job_id"], "source": "ledger", "task": task_class, "kind": kind, "messages": [],
                         "gold": decided if label and decided else "", "models": models})  # fmt: skip
    return rows
