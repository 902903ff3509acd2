"""Reference policies computed directly on the recorded rows (no fleet needed): what one model
alone, the strongest model, and an always-full Fusion-style panel would have scored and cost."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from statistics import quantiles

from evaluation.replay import Row, credit

ARBITER_TOKENS_OUT = 80  # a verdict JSON: final answer, chosen ids, one disagreement, a rationale
ARBITER_PROMPT_CHARS = 1300  # the arbiter system prompt and wrapper around the task and answers

Prices = dict[str, tuple[float, float]]


def vote_key(kind: str, answer: str | None) -> str | None:
    if answer is None:
        return None
    if kind == "number":
        try:
            return repr(round(float(answer), 6))
        except ValueError:
            return answer
    return " ".join(answer.split()).casefold()


def arbiter_cost(row: Row, judge: str, answered: list[str], prices: Prices) -> float:
    chars = ARBITER_PROMPT_CHARS + sum(len(m["content"]) for m in row.messages)
    chars += sum(len(row.models[m].text or row.models[m].answer or "") for m in answered)
    recorded = row.models[judge].cost_usd
    if judge not in prices and recorded is not None:
        # no price list (RouterBench records cost only): the judge's own recorded call on this
        # question, scaled by how much longer the arbiter prompt is than the question's
        own = sum(len(m["content"]) for m in row.messages) + len(row.models[judge].text or "")
        return recorded * chars / max(own, 1)
    p_in, p_out = prices.get(judge, (0.0, 0.0))
    return (chars / 4 * p_in + ARBITER_TOKENS_OUT * p_out) / 1e6


@dataclass
class Score:
    name: str
    kind: str  # "fleet" | "reference"
    questions: int = 0
    correct: int = 0
    cost_usd: float = 0.0
    calls: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    early_exits: int = 0
    arbiter_calls: int = 0
    arbiter_fallbacks: int = 0
    failed: int = 0
    cost_estimated: int = 0  # calls priced from tokens because no cost was recorded
    wall_s: float = 0.0  # fleet runs: how long the policy's questions took end to end
    cache_hits: int = 0  # answered from the answer cache (or coalesced on an identical job)
    cache_saved_usd: float = 0.0  # what the cached answers' source jobs had paid
    prompt_cache_saved_usd: float = 0.0  # provider prompt caching against the uncached price

    @property
    def accuracy(self) -> float:
        return self.correct / self.questions if self.questions else 0.0

    def pct(self, q: int) -> float:
        v = self.latencies_ms
        return 0.0 if not v else v[0] if len(v) == 1 else quantiles(v, n=100, method="inclusive")[q - 1]

    def as_dict(self) -> dict[str, object]:
        n = max(self.questions, 1)
        return {
            "policy": self.name, "kind": self.kind, "questions": self.questions, "accuracy": round(self.accuracy, 4),
            "cost_usd": self.cost_usd, "cost_per_question_usd": self.cost_usd / n, "calls_per_question": self.calls / n,
            "early_exit_rate": self.early_exits / n, "arbiter_rate": self.arbiter_calls / n,
            "arbiter_fallbacks": self.arbiter_fallbacks, "failed": self.failed, "cost_estimated_calls": self.cost_estimated,
            "p50_latency_ms": self.pct(50), "p95_latency_ms": self.pct(95), "wall_s": round(self.wall_s, 1),
            "cache_hit_rate": self.cache_hits / n, "cache_saved_usd": self.cache_saved_usd,
            "prompt_cache_saved_usd": self.prompt_cache_saved_usd,
        }  # fmt: skip


def recorded_cost(row: Row, model: str, price: tuple[float, float] | None) -> tuple[float, bool]:
    """(cost, estimated?): the recorded cost_usd, else tokens x price, else 0 flagged estimated."""
    rec = row.models[model]
    if rec.cost_usd is not None:
        return rec.cost_usd, False
    if price and rec.tokens_in is not None:
        return (rec.tokens_in * price[0] + (rec.tokens_out or 0) * price[1]) / 1e6, True
    return 0.0, True


def single(rows: list[Row], model: str, prices: dict[str, tuple[float, float]]) -> Score:
    s = Score(f"single:{model}", "reference")
    for r in rows:
        rec = r.models[model]
        cost, est = recorded_cost(r, model, prices.get(model))
        s.questions += 1
        s.correct += credit(r, model)
        s.cost_usd += cost
        s.cost_estimated += est
        s.calls += 1
        s.latencies_ms.append(rec.latency_ms or 0.0)
    return s


def fusion(rows: list[Row], members: list[str], judge: str, prices: dict[str, tuple[float, float]],
           label: str | None = None) -> Score:
    """Every member, then the judge, always (OpenRouter Fusion's shape). Its answer: the members'
    answer when they all agree (a judge keeps a unanimous answer), else the judge's own recorded
    answer (it overrides 2-1 majorities too); its latency: the slowest member plus the judge."""
    s = Score(f"fusion:judge-always:{label or '+'.join(members) + '>' + judge}", "reference")
    for r in rows:
        answers = [r.models[m].answer for m in members]
        costs = [recorded_cost(r, m, prices.get(m)) for m in [*members, judge]]
        top, count = Counter(answers).most_common(1)[0]
        winner = members[0] if count == len(members) and top is not None else judge
        s.questions += 1
        s.correct += credit(r, winner)
        s.cost_usd += sum(c for c, _ in costs)
        s.cost_estimated += sum(e for _, e in costs)
        s.calls += len(members) + 1
        s.arbiter_calls += 1
        s.latencies_ms.append(max(r.models[m].latency_ms or 0.0 for m in members) + (r.models[judge].latency_ms or 0.0))
    return s


def majority_first(rows: list[Row], members: list[str], judge: str, prices: dict[str, tuple[float, float]],
                   label: str | None = None) -> Score:
    """Every member, waiting for all; a majority (2 of 3) decides, the judge only on a split: Fusion
    with majority first, and the fair baseline of early exit (same answers, nothing cancelled)."""
    s = Score(f"fusion:majority-first:{label or '+'.join(members) + '>' + judge}", "reference")
    for r in rows:
        keys = [vote_key(r.kind, r.models[m].answer) for m in members]
        tally = Counter(k for k in keys if k is not None)
        top, count = tally.most_common(1)[0] if tally else (None, 0)
        costs = [recorded_cost(r, m, prices.get(m)) for m in members]
        split = count < 2 and len(tally) > 1
        winner = judge if split else next((m for m, k in zip(members, keys, strict=True) if k == top), members[0])
        s.questions += 1
        s.correct += credit(r, winner)
        s.cost_usd += sum(c for c, _ in costs) + (arbiter_cost(r, judge, members, prices) if split else 0.0)
        s.cost_estimated += sum(e for _, e in costs)
        s.calls += len(members) + split
        s.arbiter_calls += split
        slowest = max(r.models[m].latency_ms or 0.0 for m in members)
        s.latencies_ms.append(slowest + ((r.models[judge].latency_ms or 0.0) if split else 0.0))
    return s


def strongest(scores: list[Score]) -> Score:
    """The most accurate single model (cheaper wins a tie)."""
    best = max((s for s in scores if s.name.startswith("single:")), key=lambda s: (s.accuracy, -s.cost_usd))
    out = Score(f"strongest={best.name.removeprefix('single:')}", "reference")
    out.__dict__.update({k: v for k, v in best.__dict__.items() if k not in ("name", "kind")})
    return out
