"""The ledger page: did the panel change the answer, and was it worth it? One HTML page from the
ledger's receipts (and labels where they exist), with no script and nothing fetched: per task
class escalation, arbiter and panel-changed-answer rates, labelled accuracy, cost per job and per
correct answer, p50/p95 latency, trends as inline SVG, every receipt by job id, and the policies
that escalate without gain flagged.

`render_page(entries, labels)` is a pure function of ledger data, so a gateway can mount it;
`panel ledger --html FILE` writes it and `panel ledger --serve PORT` serves it (Starlette/uvicorn).
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass
from html import escape
from pathlib import Path
from typing import Any

from producer.labels import summary as label_summary
from producer.ledger_svg import line_chart
from producer.ledger_view import _pct, stage_rates, summarise

Entry = tuple[float, dict[str, Any]]  # (appended at, unix seconds; receipt as JSON)
MIN_PANELS_TO_FLAG = 5  # a class whose panel ran this often and never changed an answer is flagged
TREND_BUCKETS = 12
RECEIPTS_SHOWN = 2000


@dataclass
class ClassRow:
    summary: dict[str, Any]
    panel_jobs: int
    labelled: int
    correct: int
    labelled_cost: float
    flag: str | None

    @property
    def accuracy(self) -> float | None:
        return self.correct / self.labelled if self.labelled else None

    @property
    def cost_per_correct(self) -> float | None:
        return self.labelled_cost / self.correct if self.correct else None


def _is_panel(r: dict[str, Any]) -> bool:
    return any(step["lane"] in ("panel", "batch") for step in r["lanes"])


def class_rows(receipts: list[dict[str, Any]], labels: dict[str, bool]) -> list[ClassRow]:
    by_class: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in receipts:
        by_class[r["task_class"]].append(r)
    rows = []
    for summary in summarise(receipts):
        rs = by_class[summary["task_class"]]
        panels = [r for r in rs if _is_panel(r)]
        judged = [r for r in rs if r["job_id"] in labels]
        correct = sum(1 for r in judged if labels[r["job_id"]])
        changed = sum(1 for r in panels if r.get("changed_vs_default"))
        flag = None
        if len(panels) >= MIN_PANELS_TO_FLAG and changed == 0:
            per_panel = sum(r["total_cost_usd"] for r in panels) / len(panels)
            singles = [r["total_cost_usd"] for r in rs if not _is_panel(r)]
            cost = (f"${per_panel - sum(singles) / len(singles):.6f} more per job than its single-lane jobs" if singles
                    else f"${per_panel:.6f} per panel job")  # fmt: skip
            flag = f"escalates without gain: the panel ran on {len(panels)} jobs and changed no answer ({cost})"
        rows.append(ClassRow(summary, len(panels), len(judged), correct,
                             sum(r["total_cost_usd"] for r in judged), flag))  # fmt: skip
    return rows


def trends(entries: list[Entry]) -> tuple[list[float], dict[str, dict[str, list[float | None]]]]:
    """Bucket times and, per measure, per task class, one value per bucket."""
    if not entries:
        return [], {}
    t0, t1 = entries[0][0], entries[-1][0]
    width = max((t1 - t0) / TREND_BUCKETS, 1e-6)
    n = TREND_BUCKETS if t1 > t0 else 1
    buckets: dict[str, list[list[dict[str, Any]]]] = defaultdict(lambda: [[] for _ in range(n)])
    for ts, r in entries:
        buckets[r["task_class"]][min(int((ts - t0) / width), n - 1)].append(r)
    xs = [t0 + (i + 0.5) * width for i in range(n)] if n > 1 else [t0]
    measures: dict[str, dict[str, list[float | None]]] = {k: {} for k in ("cost", "escalation", "changed", "p95")}
    for tc, bs in buckets.items():
        measures["cost"][tc] = [sum(r["total_cost_usd"] for r in b) / len(b) if b else None for b in bs]
        measures["escalation"][tc] = [sum(1 for r in b if r["triggers"]) / len(b) if b else None for b in bs]
        measures["changed"][tc] = [sum(1 for r in b if r.get("changed_vs_default")) / len(b) if b else None for b in bs]
        measures["p95"][tc] = [_pct([r["latency_ms"] for r in b], 95) if b else None for b in bs]
    return xs, measures


def _pct_s(v: float | None) -> str:
    return "–" if v is None else f"{v:.1%}"


def _usd(v: float | None) -> str:
    return "–" if v is None else f"${v:.6f}"


def _clock(ts: float) -> str:
    return time.strftime("%H:%M:%S", time.gmtime(ts))


CSS = """body{font:14px system-ui,sans-serif;margin:24px;color:#222;background:#fff}
table{border-collapse:collapse;margin:8px 0 20px}th,td{padding:4px 8px;border-bottom:1px solid #ddd;text-align:right}
th:first-child,td:first-child{text-align:left}tr.flagged td{background:#fff3f3}.flag{color:#b00020;font-weight:600}
.charts{display:flex;flex-wrap:wrap;gap:12px}.receipt{border:1px solid #ddd;padding:6px 10px;margin:6px 0}
.receipt:target{border-color:#1f77b4;background:#f4f9ff}code{font-size:12px}"""


def render_page(entries: list[Entry], labels: dict[str, bool] | None = None, title: str = "panel-fleet ledger") -> str:
    labels = labels or {}
    receipts = [r for _, r in entries]
    rows = class_rows(receipts, labels)
    head = ("task class", "jobs", "escalation", "arbiter", "panel changed answer", "labelled accuracy",
            "$ / job", "$ / correct answer", "p50 ms", "p95 ms", "failed")  # fmt: skip
    body = []
    for row in rows:
        s = row.summary
        acc = f"{_pct_s(row.accuracy)} <small>({row.correct}/{row.labelled})</small>" if row.labelled else "–"
        cells = [escape(s["task_class"]), str(s["jobs"]), _pct_s(s["escalation_rate"]), _pct_s(s["arbiter_rate"]),
                 _pct_s(s["changed_answer_rate"]), acc, _usd(s["cost_per_job_usd"]), _usd(row.cost_per_correct),
                 f"{s['p50_ms']:.0f}", f"{s['p95_ms']:.0f}", str(s["failed"])]  # fmt: skip
        cls = ' class="flagged"' if row.flag else ""
        body.append(f'<tr{cls} data-class="{escape(s["task_class"])}">' + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
        if row.flag:
            body.append(f'<tr class="flagged" data-flag-for="{escape(s["task_class"])}"><td colspan="{len(head)}" '
                        f'class="flag">⚑ {escape(row.flag)}</td></tr>')  # fmt: skip
    xs, m = trends(entries)
    charts = ""
    if xs:
        charts = "".join([
            line_chart("cost per job ($)", xs, m["cost"], lambda v: f"{v:.5f}", _clock),
            line_chart("escalation rate", xs, m["escalation"], lambda v: f"{v:.0%}", _clock),
            line_chart("panel changed the answer", xs, m["changed"], lambda v: f"{v:.0%}", _clock),
            line_chart("p95 latency (ms)", xs, m["p95"], lambda v: f"{v:.0f}", _clock),
        ])  # fmt: skip
    flagged = [r for r in rows if r.flag]
    stages = stage_rates(receipts)  # per cascade class and stage: reached, accepted, concluded
    span = f"{_clock(entries[0][0])}–{_clock(entries[-1][0])} UTC" if entries else "no receipts yet"
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>{escape(title)}</title><style>{CSS}</style></head><body>",
        f"<h1>{escape(title)}</h1><p id='summary'>{len(receipts)} jobs, {span}; "
        f"{len(labels)} labelled; {len(flagged)} polic{'y' if len(flagged) == 1 else 'ies'} flagged</p>",
        "<h2>Per task class</h2><table id='classes'><tr>" + "".join(f"<th>{h}</th>" for h in head) + "</tr>",
        *body, "</table>",
        *(["<h2>Cascade stages</h2><ul id='stages'>", *(f"<li>{escape(s)}</li>" for s in stages), "</ul>"] if stages else []),
        # as `panel ledger` prints them: where labelled jobs were decided, and what escalation changed
        *(["<h2>Labelled jobs</h2><ul id='labelled'>", *(f"<li>{escape(s)}</li>" for s in label_summary(receipts, labels)),
           "</ul>"] if labels else []),  # fmt: skip
        f"<h2>Trends</h2><div class='charts'>{charts}</div>",
        "<h2>Receipts</h2><p>Newest first; link to one as <code>#job-ID</code>.</p>",
        _receipts(receipts[::-1][:RECEIPTS_SHOWN], labels), "</body></html>",
    ]  # fmt: skip
    return "".join(parts)


def _receipts(receipts: list[dict[str, Any]], labels: dict[str, bool]) -> str:
    out = []
    for r in receipts:
        jid = escape(r["job_id"])
        calls = "".join(
            f"<tr><td>{escape(c['member'])}</td><td>{escape(c['model'])}</td><td>{escape(c['status'])}</td>"
            f"<td>{c.get('tokens_in', 0)}</td><td>{c.get('tokens_out', 0)}</td><td>{c.get('latency_ms', 0):.0f}</td>"
            f"<td>{_usd(c.get('cost_usd', 0.0))}</td></tr>"
            for c in r["calls"]
        )  # fmt: skip
        label = "" if r["job_id"] not in labels else (" · correct" if labels[r["job_id"]] else " · wrong")
        lanes = " → ".join(escape(s["lane"]) for s in r["lanes"])
        out.append(
            f'<div class="receipt" id="job-{jid}"><b>{jid}</b> '
            f"{escape(r['task_class'])} · {lanes} · "
            f"{escape(r['decision'])} · {_usd(r['total_cost_usd'])} · {r['latency_ms']:.0f} ms"
            f"{' · changed the answer' if r.get('changed_vs_default') else ''}{label}"
            + (f"<br>triggers: {escape(', '.join(r['triggers']))}" if r["triggers"] else "")
            + (f"<br>disagreement: {escape(str(r['disagreement'])[:300])}" if r.get("disagreement") else "")
            + "<table><tr><th>call</th><th>model</th><th>status</th><th>tokens in</th><th>tokens out</th>"
            f"<th>ms</th><th>$</th></tr>{calls}</table></div>"
        )  # fmt: skip
    return "".join(out)


def read_labels(path: Path) -> dict[str, bool]:
    """JSONL: {"job_id": ..., "correct": true|false} per line, or `panel label --file`'s
    {"job_id": ..., "label": "correct"|"wrong"}; a bad line is a LabelError naming file:line: field."""
    from producer.labels import read_file

    return {job_id: right for _, job_id, right, _ in read_file(path)}
