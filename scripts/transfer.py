"""Transfer: the trained checkpoints on the test problems phrased in words, next to their digit-phrased table.

    python scripts/transfer.py runs/repro/transfer --digits runs/repro/compare --seeds 0,1,2 \
        [--out docs/results/repro/transfer]

``DIR/METHOD/seed-S/eval`` holds `selfcorrect eval -o phrasing=words` of that run's demo-budget checkpoint
(scripts/reproduce.sh transfer writes them; ``DIR/base/seed-0`` is the untrained model).  Each method's
episodes of all its seeds are pooled with `compare`'s cluster bootstrap over problems.  ``--digits`` adds the
same runs' Acc@t2 on the digit-phrased test problems (`compare`'s ``eval/``), so the drop is in one row.
A method whose seeds are not all evaluated is left out and named.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from selfcorrect.compare import methods_in, pooled_summary, seed_samples
from selfcorrect.report import format_table


def pooled(out: Path, method: str, seeds: list[int]) -> dict | None:
    rows = seed_samples(out, method, seeds)
    return None if rows is None else pooled_summary(rows)


def pct(summary: dict, k: int = -1) -> str:
    low, high = summary["ci95"]["accuracy"][k]
    return f"{100 * summary['accuracy'][k]:.1f} [{100 * low:.1f}, {100 * high:.1f}]"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dir", type=Path)
    parser.add_argument("--digits", type=Path, help="the compare directory of the same runs")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--out", type=Path, help="write transfer.md and transfer.json here")
    args = parser.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    if not args.dir.is_dir():
        print(f"transfer: no directory {args.dir}", file=sys.stderr)
        return 2
    words, digits, missing = {}, {}, []
    for method in methods_in(args.dir):
        use = [0] if method == "base" else seeds
        summary = pooled(args.dir, method, use)
        if summary is None:
            missing.append(method)
            continue
        words[method] = summary
        if args.digits and method != "base":
            digits[method] = pooled(args.digits, method, use)
    lines = [f"Test problems phrased in words (strict reader), seeds {args.seeds} pooled; base: the untrained "
             "model (greedy).", "", format_table(words), ""]
    if digits:
        lines += ["| Method | Acc@t2, digits (the comparison table) | Acc@t2, words |", "|---|---:|---:|"]
        lines += [f"| {m} | {pct(digits[m]) if digits[m] else '–'} | {pct(words[m])} |" for m in digits]
        lines.append("")
    if missing:
        lines.append(f"Not evaluated at every seed (left out): {', '.join(missing)}.")
    text = "\n".join(lines) + "\n"
    print(text, end="")
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "transfer.md").write_text(text)
        keep = ("n", "n_groups", "accuracy", "delta", "format_rate", "copy_rate", "ci95")
        (args.out / "transfer.json").write_text(json.dumps(
            {"seeds": seeds, "words": {m: {k: s.get(k) for k in keep} for m, s in words.items()},
             "digits": {m: s and {k: s.get(k) for k in keep} for m, s in digits.items()}, "missing": missing},
            indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
