"""Labels fed back on decided jobs (`panel label JOB correct|wrong`, or a JSONL of them), kept in
Redis beside the ledger, and what they say about the ledger:

    panel label 7f3c... correct
    panel label 7f3c... wrong --answer C     # and the right answer: every model's answer is scored
    panel label --file labels.jsonl          # {"job_id": "...", "label": "correct"|"wrong"[, "answer": "C"]} per line
    panel label --export rows.jsonl --task-class qa_choice   # labelled receipts as a replay file
    panel tune rows.jsonl --write policy.yaml

The export turns each labelled job into a replay row: the job's messages (from its stored spec),
and every member call that answered is a model's recorded answer (its vote key, tokens, cost,
latency, log-probability as `conf`; a batch call's cost at the real-time price, `list_cost`); its
`correct` is the label when it gave the decided answer, the opposite when the decided answer was
labelled correct and it gave something else, and unknown otherwise: a wrong decided answer says
nothing of the others, so an unknown verdict counts as wrong in `panel tune` unless the label
gives the right answer (`--answer`, `"answer"`), which becomes the row's gold: each other answer
is then scored against it by the row's kind (given with `--kind`, else inferred from the answers:
`infer_kind`). The decided answer is the job's last
lane's (a cascade's concluding stage, the panel an escalation ran), as the fleet decided it: the
arbiter's chosen member's, else the plurality of that lane's votes. A job served from the answer
cache is exported with the calls of the job it was served from (unless that job is labelled too:
one row per question). Only models answering on most exported jobs can be tuned on (a production
ledger holds the models a policy called, not the ones it did not; `evaluation.replay.complete`).
"""

from __future__ import annotations

import re
import time
from collections import Counter
from pathlib import Path
from typing import Any, Literal

import orjson
import redis
from pydantic import BaseModel, ConfigDict, StrictBool, ValidationError, model_validator

from producer import keys
from producer.contract import Job
from producer.errors import PanelError
from producer.ledger_view import kept_stage

LABELS = keys.LABELS


class LabelError(PanelError):
    pass


class _Line(BaseModel):
    """One label: `{"job_id": ..., "label": "correct"|"wrong"}`, or the ledger page's
    `{"job_id": ..., "correct": true|false}`; either file is read by both commands."""

    model_config = ConfigDict(extra="forbid")
    job_id: str
    label: Literal["correct", "wrong"] | None = None
    correct: StrictBool | None = None
    answer: str | None = None  # the right answer, when the decided one was wrong (scores the others)

    @model_validator(mode="after")
    def _one_verdict(self) -> _Line:
        if (self.label is None) == (self.correct is None):
            raise ValueError('give one of "label": "correct"|"wrong" or "correct": true|false')
        return self

    @property
    def right(self) -> bool:
        return self.label == "correct" if self.label is not None else bool(self.correct)


def put(r: redis.Redis, job_id: str, label: str, answer: str | None = None) -> None:
    if label not in ("correct", "wrong"):
        raise LabelError(f"label: {label!r} is not correct|wrong")
    if answer is not None and not answer.strip():
        raise LabelError("answer: empty; give the right answer (e.g. --answer C), or leave it out")
    if not r.exists(keys.job(job_id)):
        raise LabelError(f"job_id: no job {job_id!r} in this Redis (label jobs the fleet decided)")
    entry: dict[str, object] = {"label": label, "at": time.time()}
    if answer is not None:
        entry["answer"] = answer.strip()
    r.hset(LABELS, job_id, orjson.dumps(entry))


def read_file(path: Path) -> list[tuple[int, str, bool, str | None]]:
    """(line number, job id, correct?, the right answer if given) per label of a JSONL file; a bad
    line is a LabelError naming the file, the line and the field."""
    out = []
    for n, raw in enumerate(path.read_bytes().splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            line = _Line.model_validate(orjson.loads(raw))
        except orjson.JSONDecodeError as e:
            raise LabelError(f"{path}:{n}: not JSON ({e}); one {{\"job_id\": ..., \"label\": \"correct\"|\"wrong\"}} per line") from None
        except ValidationError as e:
            err = e.errors()[0]
            raise LabelError(f"{path}:{n}: {'.'.join(map(str, err['loc'])) or '(line)'}: {err['msg']}") from None
        if line.answer is not None and not line.answer.strip():
            raise LabelError(f"{path}:{n}: answer: empty; give the right answer, or leave the field out")
        out.append((n, line.job_id, line.right, line.answer))
    return out


def put_file(r: redis.Redis, path: Path) -> int:
    """Every line checked before any is stored, its job too: a bad line names the file, line and
    field, an unknown job its line."""
    lines = read_file(path)
    pipe = r.pipeline(transaction=False)
    for _, job_id, _, _ in lines:
        pipe.exists(keys.job(job_id))
    for (n, job_id, _, _), found in zip(lines, pipe.execute(), strict=True):
        if not found:
            raise LabelError(f"{path}:{n}: job_id: no job {job_id!r} in this Redis (label jobs the fleet decided); nothing stored")
    for _, job_id, right, answer in lines:
        put(r, job_id, "correct" if right else "wrong", answer)
    return len(lines)


def read_stored(r: redis.Redis) -> tuple[dict[str, bool], dict[str, str]]:
    """Every stored label in one read: (correct? by job, the right answers labels gave by job)."""
    raw: dict[bytes, bytes] = r.hgetall(LABELS)  # type: ignore[assignment]
    entries = {k.decode(): orjson.loads(v) for k, v in raw.items()}
    return ({j: e["label"] == "correct" for j, e in entries.items()},
            {j: e["answer"] for j, e in entries.items() if e.get("answer")})  # fmt: skip


def get_all(r: redis.Redis) -> dict[str, bool]:
    return read_stored(r)[0]


def get_answers(r: redis.Redis) -> dict[str, str]:
    """The right answers labels gave (`--answer`), by job."""
    return read_stored(r)[1]


def _decided_key(receipt: dict[str, Any]) -> str | None:
    """The answer key the job was decided with, read from its last lane's member calls (numbered
    `N.mK` for lane N): a cascade's earlier stages and the default lane before an escalation did
    not decide it (unless the cascade's later stages ended without an answer: the latest kept).
    Arbiter decisions take the chosen member's key (None when the judge wrote its own answer); the
    rest the plurality of that lane's votes, a tie to the smaller key as `decide.lua` breaks it.
    Late answers came after the decision and did not vote."""
    if receipt["decision"] not in ("single", "quorum", "majority", "sweep", "arbiter") or not receipt["lanes"]:
        return None
    voted: dict[str, str] = {}
    for n in range(len(receipt["lanes"]), 0, -1):  # a cascade's last stages may have no answer: an earlier one's was kept
        lane = f"{n}."
        voted = {c["member"][len(lane):]: c["answer_key"] for c in receipt["calls"]
                 if c["role"] == "member" and c["status"] == "answered" and c.get("answer_key") and c["member"].startswith(lane)}  # fmt: skip
        if voted or not receipt["lanes"][n - 1].get("stage"):
            break
    verdict = receipt.get("verdict")
    if verdict and receipt["decision"] in ("arbiter", "majority"):
        chosen = [voted[m] for m in verdict.get("chosen_members") or [] if m in voted]
        return chosen[0] if chosen else None
    tally = Counter(voted.values())
    if not tally:
        return None
    most = max(tally.values())
    return min(k for k, v in tally.items() if v == most)


def _once(receipts: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """One receipt per job id, its last (a job appended twice, re-rendered after a crash, has the
    fuller receipt last)."""
    return {str(r["job_id"]): r for r in receipts}


def _concluding(receipt: dict[str, Any]) -> dict[str, Any]:
    """The lane step that decided the job: its last, or the cascade stage whose answer it kept."""
    kept = kept_stage(receipt)
    step: dict[str, Any] = next((s for s in receipt["lanes"] if kept and s.get("stage") == kept), receipt["lanes"][-1])
    return step


def _stop(step: dict[str, Any]) -> str:
    """Where a job concluded: its cascade stage and check (`stage2:logprob`), else its lane."""
    if step.get("stage"):
        return f"stage{step['stage']}:{step.get('check')}"
    return str(step["lane"])


def summary(receipts: list[dict[str, Any]], labels: dict[str, bool]) -> list[str]:
    """Per task class: labelled jobs, their accuracy, how often each lane step was the last one,
    and how often escalation changed a labelled answer (and whether the change was right)."""
    by_class: dict[str, list[dict[str, Any]]] = {}
    for rc in _once(receipts).values():
        if rc["job_id"] in labels:
            by_class.setdefault(rc["task_class"], []).append(rc)
    out = []
    for tc, rs in sorted(by_class.items()):
        right = sum(labels[r["job_id"]] for r in rs)
        stops = Counter(_stop(_concluding(r)) for r in rs if r["lanes"])
        changed = [r for r in rs if r.get("changed_vs_default")]
        out.append(f"{tc}: {len(rs)} labelled, {right / len(rs):.1%} correct; decided at "
                   + (", ".join(f"{k} {v}" for k, v in stops.most_common()) or "-")
                   + f"; escalation changed {len(changed)} labelled answers ({sum(labels[r['job_id']] for r in changed)} now correct)")  # fmt: skip
    return out or ["no labelled job in the ledger (panel label JOB correct|wrong)"]


def job_messages(r: redis.Redis, job_ids: list[str]) -> dict[str, list[dict[str, str]]]:
    """Each job's conversation as it was sent (its stored spec), for the jobs still stored."""
    pipe = r.pipeline(transaction=False)
    for j in job_ids:
        pipe.hget(keys.job(j), "spec")
    out = {}
    for j, spec in zip(job_ids, pipe.execute(), strict=True):
        if spec:
            out[j] = Job.parse(spec).chat()
    return out


def list_cost(call: dict[str, Any]) -> Any:
    """A call's cost at the real-time price list: a batch call's receipt keeps both, and one
    exported file must not price some rows at half (`panel tune` compares policies by cost)."""
    if call.get("batch") and call.get("realtime_cost_usd") is not None:
        return call["realtime_cost_usd"]
    return call["cost_usd"]


def export(receipts: list[dict[str, Any]], labels: dict[str, bool], task_class: str, kind: str = "label",
           messages: dict[str, list[dict[str, str]]] | None = None,
           answers: dict[str, str] | None = None) -> list[dict[str, Any]]:  # fmt: skip
    """Labelled receipts of one task class as replay rows (see the module doc). `messages`: each
    job's conversation (`job_messages`); a job without it exports `messages: []` (replayable
    offline only). `answers`: the right answers labels gave (`get_answers`)."""
    once = _once(receipts)
    rows = []
    for rc in once.values():
        if rc["task_class"] != task_class or rc["job_id"] not in labels:
            continue
        decided_by = rc
        if rc.get("served_from_cache") and rc.get("cached_from_job"):
            source = rc["cached_from_job"]
            if source in labels or source not in once:
                continue  # the question's row is the source's own, or its calls left the ledger
            decided_by = once[source]
        label, decided = labels[rc["job_id"]], _decided_key(decided_by)
        given = (answers or {}).get(rc["job_id"])
        models: dict[str, dict[str, Any]] = {}
        for c in decided_by["calls"]:
            if c["role"] != "member" or c["status"] not in ("answered", "late") or not c.get("answer_key"):
                continue
            same = decided is not None and c["answer_key"] == decided
            # with the right answer given, the label still speaks for the decided answer; every
            # other is left to the replay's scoring against the gold, by the row's kind
            correct = label if same else (False if label and decided is not None and given is None else None)
            models[c["model"]] = {"answer": c["answer_key"], "text": c["answer_key"], "correct": correct,
                                  "tokens_in": c["tokens_in"], "tokens_out": c["tokens_out"],
                                  "cost_usd": list_cost(c), "latency_ms": c["latency_ms"], "conf": c.get("logprob")}  # fmt: skip
        if models:
            rows.append({"id": rc["job_id"], "source": "ledger", "task": task_class, "kind": kind,
                         "messages": (messages or {}).get(rc["job_id"], []),
                         "gold": given or (decided if label and decided else ""), "models": models})  # fmt: skip
    return rows


def infer_kind(rows: list[dict[str, Any]]) -> str:
    """The rows' kind from their answers (vote keys), for an export not told one: `choice` when
    every answer is one letter A-J, `number` when every one is a number, else `label` (exact)."""
    given = [m["answer"] for x in rows for m in x["models"].values()]
    if given and all(len(a) == 1 and "A" <= a.upper() <= "J" for a in given):
        return "choice"
    try:
        [float(a) for a in given]
    except ValueError:
        return "label"
    return "number" if given else "label"


def gold_for(kind: str, answer: str) -> str:
    """A right answer as typed (`--answer "(C)"`, `--answer "42 apples"`) in the form the row's
    answers take: one letter for a choice, the number for a number, when the text holds exactly
    one; else as typed."""
    if kind == "choice" and (m := re.fullmatch(r"\W*([A-Ja-j])\W*", answer)):
        return m.group(1).upper()
    if kind == "number" and len(found := re.findall(r"-?\d+(?:\.\d+)?", answer.replace(",", ""))) == 1:
        return str(found[0])
    return answer


def unknown(rows: list[dict[str, Any]]) -> int:
    """Exported rows where some model's verdict is unknown (a wrong decided answer and no right one
    given, or no decided answer among the models': a judge wrote its own): `panel tune` counts
    those answers as wrong."""
    return sum(not x["gold"] and any(m["correct"] is None for m in x["models"].values()) for x in rows)


def export_file(r: redis.Redis, receipts: list[dict[str, Any]], task_class: str, kind: str | None, path: Path) -> list[str]:
    """`panel label --export`: one class's labelled jobs written as a replay file; returns what to
    say. No labelled job of the class (a typo, say) is an error naming the classes that have some,
    not an empty file for `panel tune`."""
    fed_back, answers = read_stored(r)
    rows = export(receipts, fed_back, task_class, kind or "label", job_messages(r, sorted(fed_back)), answers)
    if not rows:
        have = sorted({x["task_class"] for x in receipts if x["job_id"] in fed_back})
        raise LabelError(f"--task-class: no labelled job of {task_class!r} in the ledger; "
                         + (f"labelled: {', '.join(have)}" if have else "label some with `panel label JOB correct|wrong`"))  # fmt: skip
    said = []
    if kind is None:  # the kind sets the agreement rule panel tune writes: say which
        kind = infer_kind(rows)
        said.append(f"kind: {kind}, from the answers (--kind choice|number|label|text to say otherwise)")
    rows = [{**x, "kind": kind, "gold": gold_for(kind, x["gold"])} for x in rows]
    path.write_bytes(b"".join(orjson.dumps(x) + b"\n" for x in rows))
    said.append(f"wrote {len(rows)} labelled jobs of {task_class} to {path}")
    if n := unknown(rows):
        said.append(f"{n} of them hold answers whose verdict is unknown (labelled wrong without the right answer, or "
                    "decided by a judge's own answer): panel tune counts those answers wrong; label with --answer "
                    '(or "answer" in a label file) to score them')  # fmt: skip
    return said
