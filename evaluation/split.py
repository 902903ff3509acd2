"""Split a replay file in two halves by row parity, to tune on one and evaluate on the other:

    python3 -m evaluation.split ../shared/data/replay/mmlu_train.jsonl --out /tmp/halves
    panel tune /tmp/halves/mmlu_train.even.jsonl --write /tmp/p.yaml
    panel eval /tmp/halves/mmlu_train.odd.jsonl --policy /tmp/p.yaml

Rows are copied byte for byte; the halves go outside the repository (the data is not ours to ship).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from evaluation.replay import open_text


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python3 -m evaluation.split", description=__doc__.split("\n")[0])
    p.add_argument("file", type=Path)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    lines = [x for x in open_text(args.file).splitlines() if x.strip()]
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.file.name.split(".")[0]
    for name, part in (("even", lines[::2]), ("odd", lines[1::2])):
        (args.out / f"{stem}.{name}.jsonl").write_bytes(b"\n".join(part) + b"\n")
    if (args.file.parent / "models.csv").exists():  # prices travel with the halves
        (args.out / "models.csv").write_bytes((args.file.parent / "models.csv").read_bytes())
    print(f"wrote {args.out}/{stem}.even.jsonl ({len(lines[::2])} rows) and .odd.jsonl ({len(lines[1::2])} rows)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
