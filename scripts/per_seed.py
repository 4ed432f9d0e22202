"""Each seed's held-out numbers for each method of a `selfcorrect compare` directory, as one markdown table.

    python scripts/per_seed.py runs/testbed/cmp --methods score,single-turn,prompting --seeds 0,1,2

The pooled table (``OUT/table.md``) answers "what does the method do"; this one answers "does every seed
agree", which a pooled interval can hide.  Reads each run's ``eval/metrics.json`` (greedy, the test split);
percentages with the run's own 95% intervals.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _cell(summary: dict, key: str, index: int | None = None) -> str:
    value, ci = summary.get(key), summary.get("ci95", {}).get(key)
    if value is None:
        return "–"
    if index is not None:
        value, ci = value[index], (ci[index] if ci else None)
    text = f"{100 * value:.1f}"
    return text + (f" [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]" if ci else "")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("compare_dir", type=Path)
    parser.add_argument("--methods", required=True)
    parser.add_argument("--seeds", default="0,1,2")
    args = parser.parse_args(argv)
    lines = ["| Method | Seed | Acc@t1 | Acc@t2 | Δ(t1,t2) | Answer corr. | Δ^{c→i} | Copy rate |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for method in [m for m in args.methods.split(",") if m]:
        for seed in [int(s) for s in args.seeds.split(",") if s]:
            path = args.compare_dir / method / f"seed-{seed}" / "eval" / "metrics.json"
            if not path.is_file():
                lines.append(f"| {method} | {seed} | not run | | | | | |")
                continue
            s = json.loads(path.read_text())
            lines.append(f"| {method} | {seed} | {_cell(s, 'accuracy', 0)} | {_cell(s, 'accuracy', 1)} | "
                         f"{_cell(s, 'delta')} | {_cell(s, 'answer_corrections')} | {_cell(s, 'delta_c2i')} | "
                         f"{_cell(s, 'copy_rate')} |")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
