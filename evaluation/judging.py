"""Is the judge swayed by position or by family? On every question a judge decides (the members not
unanimous), per position of a member whose answer is right and per that member's family: how often
the judge's answer is the right one (recorded verdicts). A judge that favours the first answer, or
answers like its own family, shows as a spread across positions or families.

Offline the judge is replayed by its own recorded answer (the simulator's arbiter does the same), so
position cannot sway it here: these figures are the baseline a fleet run's judge is compared with.
"""

from __future__ import annotations

import csv
import re
from collections import defaultdict
from pathlib import Path

from evaluation import offline
from evaluation.replay import Row, credit


def families(file: Path, models: list[str]) -> dict[str, str]:
    """The vendor word of models.csv's `family` beside the file, else the name's leading letters."""
    known: dict[str, str] = {}
    path = file.parent / "models.csv"
    if path.exists():
        for row in csv.DictReader(path.open()):
            if row.get("family"):
                known[row["name"]] = row["family"].split()[0]
    return {m: known.get(m) or (re.match(r"[A-Za-z]+", m) or re.match(r".", m)).group(0).lower() for m in models}  # type: ignore[union-attr]


def judge_report(rows: list[Row], members: list[str], judge: str, family: dict[str, str]) -> list[str]:
    by_pos: dict[int, list[int]] = defaultdict(lambda: [0, 0])
    by_fam: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    decided = 0
    for r in rows:
        keys = {offline.vote_key(r.kind, r.models[m].answer) for m in members}
        if len(keys) <= 1:
            continue  # unanimous: no judge
        decided += 1
        judge_right = credit(r, judge)
        for pos, m in enumerate(members, start=1):
            if credit(r, m):
                by_pos[pos][0] += judge_right
                by_pos[pos][1] += 1
                who = family[m] + (" (judge's)" if family[m] == family[judge] else "")
                by_fam[who][0] += judge_right
                by_fam[who][1] += 1
    if not decided:
        return [f"judge {judge}: the members were unanimous on every question"]
    positions = ", ".join(f"#{p} {k}/{n} ({k / n:.0%})" for p, (k, n) in sorted(by_pos.items()))
    fams = ", ".join(f"{f} {k}/{n} ({k / n:.0%})" for f, (k, n) in sorted(by_fam.items()))
    return [f"judge {judge} on {decided} non-unanimous questions; judge right when the right answer was at",
            f"  position: {positions or 'none'}", f"  a member of family: {fams or 'none'}"]  # fmt: skip
