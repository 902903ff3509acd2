"""The evaluation's three outputs: a terminal table, a JSON file, and a PNG of accuracy against
cost with one labelled point per policy."""

from __future__ import annotations

from pathlib import Path

import orjson

from evaluation.reference import Score


def table(scores: list[Score]) -> str:
    head = (f"{'policy':44} {'acc':>6} {'$/question':>11} {'calls/q':>7} {'early':>6} {'arbiter':>7} "
            f"{'p50 ms':>8} {'p95 ms':>8} {'failed':>6}")  # fmt: skip
    lines = [head, "-" * len(head)]
    for s in scores:
        d = s.as_dict()
        lines.append(
            f"{s.name[:44]:44} {s.accuracy:6.3f} {d['cost_per_question_usd']:11.3e} {d['calls_per_question']:7.2f} "
            f"{d['early_exit_rate']:6.0%} {d['arbiter_rate']:7.0%} {d['p50_latency_ms']:8.0f} {d['p95_latency_ms']:8.0f} "
            f"{s.failed:6d}"
        )
    return "\n".join(lines)


def ratios(best: Score, strongest: Score, fusion: Score) -> dict[str, float]:
    return {
        "accuracy_vs_strongest": best.accuracy / strongest.accuracy if strongest.accuracy else 0.0,
        "cost_vs_strongest": best.cost_usd / strongest.cost_usd if strongest.cost_usd else 0.0,
        "accuracy_vs_fusion": best.accuracy / fusion.accuracy if fusion.accuracy else 0.0,
        "cost_vs_fusion": best.cost_usd / fusion.cost_usd if fusion.cost_usd else 0.0,
    }


def write_json(path: Path, file: Path, scores: list[Score], extra: dict[str, object]) -> None:
    path.write_bytes(orjson.dumps({"file": str(file), "policies": [s.as_dict() for s in scores], **extra},
                                  option=orjson.OPT_INDENT_2))  # fmt: skip


def plot(path: Path, title: str, scores: list[Score]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 6), dpi=110)
    for s in scores:
        x = s.cost_usd / max(s.questions, 1)
        fleet = s.kind == "fleet"
        ax.scatter([x], [s.accuracy], s=90 if fleet else 40, marker="*" if fleet else "o",
                   color="tab:red" if fleet else ("tab:purple" if s.name.startswith(("fusion", "strongest")) else "tab:gray"),
                   zorder=3)  # fmt: skip
        ax.annotate(s.name.removeprefix("single:")[:36], (x, s.accuracy), textcoords="offset points", xytext=(6, 3),
                    fontsize=8, color="black" if fleet else "dimgray")  # fmt: skip
    ax.set_xscale("log")
    ax.set_xlabel("cost per question (USD, log scale)")
    ax.set_ylabel("accuracy")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.text(0.01, 0.01, "red stars: policies run through the fleet; purple: strongest single and Fusion-style; "
            "gray: each model alone", transform=ax.transAxes, fontsize=7, color="dimgray")  # fmt: skip
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
