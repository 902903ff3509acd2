"""Free-text agreement measured on recorded replies: the ZeroEval GSM8K file's full `text`s (a JSON
object with `reasoning` and `answer`, often wrapped in prose or fences) treated as free text.

    python3 -m evaluation.freetext ../shared/data/replay/gsm8k_zeroeval_dev.jsonl.gz

1. Calibrate `similar`'s threshold on the even-numbered questions: every pair of models' replies,
   labelled "same answer" when their recorded answers are numerically equal; the threshold with the
   best accuracy on those pairs, then checked on the odd-numbered questions.
2. Panels (staged, quorum 2, judge on a split) replayed with each rule's vote keys: arbiter rate
   and accuracy, scored by the recorded `correct` of the model whose answer won (text answers are
   never string-matched to gold). Rules: `exact` (the fleet's rule before this change: the whole
   reply, or its ANSWER: line), `similar` at the calibrated threshold, and `numeric` (what a
   declared number kind gets; it now reads the JSON `answer` field, see 3).
3. `numeric` before/after reading the declared field: keys that changed per model, and how many of
   the changed ones now equal the recorded answer.
4. The LLM equivalence check (`agreement.equivalence`, min 0.5): of the panels `similar` sends to
   the arbiter, on how many the check would be asked (a near miss: ratio in [0.5, threshold)), and
   on how many of those the two answers are in fact the same number: the most arbiter calls a
   perfect economy judge could save (no judge's reply is recorded, so its own accuracy is not
   measured here).
"""

from __future__ import annotations

import argparse
import itertools
import re
from collections import Counter
from decimal import Decimal, InvalidOperation
from pathlib import Path

from rapidfuzz import fuzz

from evaluation.replay import Row, load, models_in
from workers.panel.agreement import Exact, Numeric, Similar, extract_answer

PANELS = [
    (["gpt-4o-mini-2024-07-18", "Meta-Llama-3.1-70B-Instruct", "Qwen2-72B-Instruct"], "gpt-4o-2024-08-06"),
    (["gemma-2-9b-it", "Meta-Llama-3.1-8B-Instruct", "Qwen2-7B-Instruct"], "gpt-4o-mini-2024-07-18"),
]
THRESHOLDS = [round(0.5 + 0.05 * i, 2) for i in range(11)]


def _same(a: str | None, b: str | None) -> bool:
    try:
        return a is not None and b is not None and Decimal(a) == Decimal(b)
    except InvalidOperation:
        return a == b


def calibrate(rows: list[Row], models: list[str]) -> tuple[float, dict[float, float], dict[float, float]]:
    """(threshold, accuracy per threshold on even rows, on odd rows) over all model pairs."""
    scored: dict[int, list[tuple[float, bool]]] = {0: [], 1: []}
    for i, r in enumerate(rows):
        norm = {m: Similar.normalise(extract_answer(r.models[m].text or "")) for m in models}
        for a, b in itertools.combinations(models, 2):
            ratio = fuzz.token_set_ratio(norm[a], norm[b]) / 100
            scored[i % 2].append((ratio, _same(r.models[a].answer, r.models[b].answer)))
    acc = {h: {t: sum((s >= t) == y for s, y in scored[h]) / max(len(scored[h]), 1) for t in THRESHOLDS} for h in (0, 1)}
    best = max(THRESHOLDS, key=lambda t: (acc[0][t], -t))
    return best, acc[0], acc[1]


def staged(r: Row, members: list[str], judge: str, keyer) -> tuple[str, bool, int]:  # type: ignore[no-untyped-def]
    """(winning model, arbiter called?, calls) of a staged quorum-2 panel under `keyer(text, existing)`."""
    keys: list[str | None] = []
    for m in members:
        k = keyer(r.models[m].text or "", [x for x in keys if x is not None])
        keys.append(k)
        tally = Counter(x for x in keys if x is not None)
        top = tally.most_common(1)
        if len(keys) >= 2 and top and top[0][1] >= 2:
            return members[keys.index(top[0][0])], False, len(keys)
    if len({k for k in keys if k is not None}) <= 1:
        return next((m for m, k in zip(members, keys, strict=True) if k is not None), members[0]), False, len(keys)
    return judge, True, len(keys) + 1


EQUIVALENCE_MIN = 0.5


def near_miss_bound(rows: list[Row], members: list[str], judge: str, threshold: float) -> tuple[int, int, int]:
    """(panels sent to the arbiter, of those with a near miss the check would ask about, of those
    whose two answers are numerically equal)."""
    rule = Similar(threshold)
    arbiter = asked = same = 0
    for r in rows:
        _, called, _ = staged(r, members, judge, rule.key)
        if not called:
            continue
        arbiter += 1
        norm = {m: Similar.normalise(extract_answer(r.models[m].text or "")) for m in members}
        pairs = [(fuzz.token_set_ratio(norm[a], norm[b]) / 100, a, b) for a, b in itertools.combinations(members, 2)]
        near = [p for p in pairs if EQUIVALENCE_MIN <= p[0] < threshold]
        if near:
            asked += 1
            _, a, b = max(near)
            same += _same(r.models[a].answer, r.models[b].answer)
    return arbiter, asked, same


def legacy_numeric(text: str) -> str | None:
    """The numeric rule before it read the declared field: the last number in the whole reply."""
    numbers = Numeric._NUMBER.findall(text.replace("$", ""))
    if not numbers:
        return None
    try:
        return format(Decimal(numbers[-1].replace(",", "")).normalize(), "f")
    except InvalidOperation:
        return None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python3 -m evaluation.freetext", description=__doc__.split("\n")[0])
    p.add_argument("file", type=Path)
    args = p.parse_args(argv)
    rows = load(args.file)
    models = models_in(rows)
    pair_models = sorted({m for members, judge in PANELS for m in [*members, judge]})
    threshold, even, odd = calibrate(rows, pair_models)
    print(f"{args.file.name}: {len(rows)} questions. similar: calibrated over every pair of {len(pair_models)} models' replies")
    print("  threshold  pair accuracy even rows (calibration)  odd rows (check)")
    for t in THRESHOLDS:
        print(f"  {t:9.2f}  {even[t]:.4f}{'  <- chosen' if t == threshold else '          '}                 {odd[t]:.4f}")
    rules = {"exact (before)": Exact().key, f"similar >= {threshold}": Similar(threshold).key, "numeric (declared field)": Numeric().key}
    for members, judge in PANELS:
        print(f"panel staged {'+'.join(members)} > {judge} (quorum 2)")
        for name, keyer in rules.items():
            outcomes = [staged(r, members, judge, keyer) for r in rows]
            right = sum(r.models[w].correct or False for r, (w, _, _) in zip(rows, outcomes, strict=True))
            arb, calls = sum(a for _, a, _ in outcomes), sum(c for _, _, c in outcomes)
            print(f"  {name:26} arbiter on {arb / len(rows):6.1%}  accuracy {right / len(rows):.3f}  "
                  f"calls/question {calls / len(rows):.2f}")
        arb, asked, same = near_miss_bound(rows, members, judge, threshold)
        print(f"  + equivalence check (min {EQUIVALENCE_MIN}): asked on {asked} of the {arb} arbiter panels; the two answers "
              f"are the same number on {same}: a perfect economy judge saves at most {same} arbiter calls "
              f"({same / len(rows):.1%} of questions) for {asked} economy calls")  # fmt: skip
    print("numeric before/after the declared `answer` field (changed keys; of those, now equal to the recorded answer):")
    changed = []
    for m in models:
        diff = [r for r in rows if r.models[m].text and legacy_numeric(r.models[m].text or "") != Numeric().key(r.models[m].text or "", [])]
        fixed = sum(_same(Numeric().key(r.models[m].text or "", []), r.models[m].answer) for r in diff)
        changed.append((len(diff), fixed, m))
    total, fixed_all = sum(c for c, _, _ in changed), sum(f for _, f, _ in changed)
    print(f"  {total} keys changed over {len(models)} models, {fixed_all} of them now equal the recorded answer; most: " +
          ", ".join(f"{m} {c} ({f} now match)" for c, f, m in sorted(changed, reverse=True)[:6]))  # fmt: skip
    example = next((r.models[m].text for r in rows for m in models if re.search(r'"answer"\s*:\s*"[^"]*\d:\d\d', r.models[m].text or "")), None)
    if example:
        print(f"  e.g. a time answer: legacy {legacy_numeric(example)!r}, now {Numeric().key(example, [])!r}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
