"""The evaluation's three outputs: a terminal table, a JSON file, and a PNG of accuracy against
cost with one labelled point per policy."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import orjson

from evaluation.reference import Score


def table(scores: list[Score]) -> str:
    head = (f"{'policy':44} {'acc':>6} {'total $':>9} {'$/question':>11} {'calls/q':>7} {'early':>6} {'arbiter':>7} "
            f"{'p50 ms':>8} {'p95 ms':>8} {'failed':>6} {'cache hit':>9} {'cache saved $':>13} {'prompt saved $':>14}")  # fmt: skip
    lines = [head, "-" * len(head)]
    for s in scores:
        d = s.as_dict()
        lines.append(
            f"{s.name[:44]:44} {s.accuracy:6.3f} {s.cost_usd:9.5f} {d['cost_per_question_usd']:11.3e} {d['calls_per_question']:7.2f} "
            f"{d['early_exit_rate']:6.0%} {d['arbiter_rate']:7.0%} {d['p50_latency_ms']:8.0f} {d['p95_latency_ms']:8.0f} "
            f"{s.failed:6d} {d['cache_hit_rate']:9.0%} {s.cache_saved_usd:13.6f} {s.prompt_cache_saved_usd:14.6f}"
        )
    return "\n".join(lines)


def usd(s: Score) -> float:
    return s.cost_usd


def ratios(best: Score, strongest: Score, fusion: Score, cost: Callable[[Score], float] = usd) -> dict[str, float]:
    """`cost`: what a policy spent (USD, or its calls where the file records no costs)."""
    return {
        "accuracy_vs_strongest": best.accuracy / strongest.accuracy if strongest.accuracy else 0.0,
        "cost_vs_strongest": cost(best) / cost(strongest) if cost(strongest) else 0.0,
        "accuracy_vs_fusion": best.accuracy / fusion.accuracy if fusion.accuracy else 0.0,
        "cost_vs_fusion": cost(best) / cost(fusion) if cost(fusion) else 0.0,
    }


def write_json(path: Path, file: Path, scores: list[Score], extra: dict[str, object]) -> None:
    path.write_bytes(orjson.dumps({"file": str(file), "policies": [s.as_dict() for s in scores], **extra},
                                  option=orjson.OPT_INDENT_2))  # fmt: skip


def plot(path: Path, title: str, scores: list[Score], goal_accuracy_ratio: float = 0.99,
         goal_cost_ratio: float = 0.5) -> None:  # fmt: skip
    """One point per policy; the strongest single model ringed, with `goal_accuracy_ratio` of its
    accuracy (dotted) and `goal_cost_ratio` of its cost (dashed) drawn, so the goal region (up and
    left) reads at a glance."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 6.5), dpi=110)
    strongest = next((s for s in scores if s.name.startswith("strongest=")), None)
    for i, s in enumerate(x for x in scores if not x.name.startswith("strongest=")):
        x = s.cost_usd / max(s.questions, 1)
        fleet, fusion = s.kind == "fleet", s.name.startswith("fusion")
        ax.scatter([x], [s.accuracy], s=110 if fleet else 45, marker="*" if fleet else ("D" if fusion else "o"),
                   color="tab:red" if fleet else ("tab:purple" if fusion else "tab:gray"), zorder=3)  # fmt: skip
        ax.annotate(s.name.removeprefix("single:")[:32], (x, s.accuracy), textcoords="offset points",
                    xytext=(6, 4 if i % 2 else -10), fontsize=8, color="black" if fleet else "dimgray")  # fmt: skip
    if strongest is not None and strongest.questions:
        x = strongest.cost_usd / strongest.questions
        ax.scatter([x], [strongest.accuracy], s=260, facecolors="none", edgecolors="tab:purple", linewidths=1.5, zorder=4)
        ax.axhline(goal_accuracy_ratio * strongest.accuracy, color="tab:purple", linestyle=":", linewidth=1)
        ax.axvline(goal_cost_ratio * x, color="tab:purple", linestyle="--", linewidth=1)
        model = strongest.name.removeprefix("strongest=")
        ax.text(0.01, 0.985, f"goal region (above the dotted line, left of the dashed one): at least {goal_accuracy_ratio:g}x the\n"
                f"accuracy of the strongest single model ({model}) at no more than {goal_cost_ratio:g}x its cost",
                transform=ax.transAxes, va="top", fontsize=8, color="tab:purple")  # fmt: skip
    lows = [s.accuracy for s in scores]
    ax.set_ylim(min(lows) - 0.02, max(lows) + 0.12 * (max(lows) - min(lows) + 0.05))  # headroom for the goal text
    priced = any(s.cost_usd > 0 for s in scores)
    if priced:  # a file without costs or prices puts every point at 0, which a log axis cannot show
        ax.set_xscale("log")
    ax.set_xlabel(f"cost per question (USD{', log scale' if priced else ': no costs recorded or priced'})")
    ax.set_ylabel("accuracy")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.text(0.01, 0.01, "red stars: policies run through the fleet; purple diamonds: Fusion-style (every member\n"
            "and the judge, always); ringed: the strongest single model; gray: each model alone", transform=ax.transAxes,
            fontsize=7, color="dimgray")  # fmt: skip
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
