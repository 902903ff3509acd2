"""Search panel shapes on recorded files with the offline chord model, and say what is reachable.

    python3 -m evaluation.search ../shared/data/replay/mmlu_train.jsonl ../shared/data/replay/gsm8k_train.jsonl

For each file: the strongest single model; the most accurate shape within 35% of its cost; the
cheapest shape at or above its accuracy; the oracle bound at 35% of its cost. Then one shape for
all files together, chosen on the even-numbered rows and reported on the odd ones too, so the
pick is not scored only on the rows that chose it. Takes about a minute per file on 2 cores.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from evaluation import offline, reference
from evaluation.fleet_run import prices_near
from evaluation.reference import Score
from evaluation.replay import Row, load, models_in

COST_GOAL = 0.35  # of the strongest single model's cost


@dataclass
class FileRun:
    name: str
    rows: list[Row]
    prices: offline.Prices
    strongest: Score
    shapes: dict[offline.PanelShape, Score]


def run_file(path: Path, max_members: int) -> FileRun:
    rows, prices = load(path), prices_near(path)
    models = models_in(rows)
    strongest = reference.strongest([reference.single(rows, m, prices) for m in models])
    shapes = {s: offline.score(rows, s, prices) for s in offline.shapes(models, max_members)}
    return FileRun(path.name, rows, prices, strongest, shapes)


def describe(f: FileRun) -> list[str]:
    st, n = f.strongest, len(f.rows)
    singles = {s.name: s for s in (reference.single(f.rows, m, f.prices) for m in models_in(f.rows))}
    candidates = [*f.shapes.values(), *singles.values()]
    within = [s for s in candidates if s.cost_usd <= COST_GOAL * st.cost_usd]
    at_acc = [s for s in candidates if s.accuracy >= st.accuracy and not s.name.startswith("single:")]
    lines = [f"{f.name}: {n} rows, {len(f.shapes)} panel shapes; {st.name} accuracy {st.accuracy:.3f}, "
             f"{st.cost_usd / n:.3e} USD/question"]  # fmt: skip
    if within:
        b = max(within, key=lambda s: (s.accuracy, -s.cost_usd))
        lines.append(f"  most accurate within {COST_GOAL:.0%} of its cost: {b.name} {b.accuracy:.3f} "
                     f"at {b.cost_usd / st.cost_usd:.2f}x")  # fmt: skip
    if at_acc:
        c = min(at_acc, key=lambda s: s.cost_usd)
        lines.append(f"  cheapest panel at >= its accuracy: {c.name} {c.accuracy:.3f} at {c.cost_usd / st.cost_usd:.2f}x")
    else:
        top = max(f.shapes.values(), key=lambda s: (s.accuracy, -s.cost_usd))
        lines.append(f"  no panel reaches its accuracy; best {top.name} {top.accuracy:.3f} at {top.cost_usd / st.cost_usd:.2f}x")
    bound = offline.oracle_bound(f.rows, COST_GOAL * st.cost_usd / n, f.prices)
    lines.append(f"  oracle bound at {COST_GOAL:.0%} of its cost (knows which answer is right): {bound:.3f}")
    return lines


def joint_pick(files: list[FileRun]) -> offline.PanelShape:
    """The shape whose worst file is best: highest min accuracy ratio to each file's strongest,
    then lowest max cost ratio; scored on even-numbered rows only."""

    def ratios(s: offline.PanelShape) -> tuple[float, float]:
        acc, cost = [], []
        for f in files:
            even = f.rows[::2]
            sc = offline.score(even, s, f.prices)
            st = reference.single(even, f.strongest.name.removeprefix("strongest="), f.prices)
            acc.append(sc.accuracy / st.accuracy)
            cost.append(sc.cost_usd / st.cost_usd)
        return min(acc), -max(cost)

    common = set.intersection(*(set(f.shapes) for f in files))
    return max(sorted(common, key=lambda s: s.name), key=ratios)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python3 -m evaluation.search", description=__doc__.split("\n")[0])
    p.add_argument("files", nargs="+", type=Path)
    p.add_argument("--max-members", type=int, default=3)
    args = p.parse_args(argv)
    files = [run_file(f, args.max_members) for f in args.files]
    for f in files:
        print("\n".join(describe(f)))
    if len(files) > 1:
        pick = joint_pick(files)
        print(f"one shape for all files (chosen on even rows): {pick.name}")
        for f in files:
            st_model = f.strongest.name.removeprefix("strongest=")
            for label, rows in (("even", f.rows[::2]), ("odd", f.rows[1::2])):
                sc, st = offline.score(rows, pick, f.prices), reference.single(rows, st_model, f.prices)
                print(f"  {f.name} {label} rows: accuracy {sc.accuracy:.3f} vs {st.accuracy:.3f} "
                      f"({sc.accuracy / st.accuracy:.3f}x) at {sc.cost_usd / st.cost_usd:.2f}x the cost")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
