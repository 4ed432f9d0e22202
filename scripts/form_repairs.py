"""Which wrong→right second attempts fixed the answer, and which only fixed its form.

    python scripts/form_repairs.py runs/repro/compare [--seeds 0,1,2] [--out DIR]

Under the strict reader (the default reward) an attempt that computes the right number but does not state it
as "The final answer is N" scores 0, so a second attempt that restates the same number in the instructed
form counts as a wrong→right correction (Δ^{i→c}).  This script splits each method's wrong→right pairs
(pooled over the seeds of ``DIR/METHOD/seed-S/eval/samples.jsonl``) into *form repairs*, where the lenient
reader (`extract_integer_answer`: the stated answer, else the last number) already finds the right answer
in attempt 1, and *answer corrections*, where it does not.  Only the second kind is self-correction.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from selfcorrect.compare import methods_in, seed_samples
from selfcorrect.tasks.arithmetic import extract_integer_answer


def count(rows: list[dict]) -> dict[str, int]:
    """Episodes, wrong→right pairs (attempt 1 → 2), and how many of those were form repairs."""
    i2c = [r for r in rows if r["attempts"][0]["reward"] == 0 and r["attempts"][1]["reward"] == 1]
    repairs = sum(extract_integer_answer(r["attempts"][0]["text"]) == str(r["gold"]) for r in i2c)
    return {"episodes": len(rows), "i2c": len(i2c), "form_repairs": repairs, "answer_corrections": len(i2c) - repairs}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dir", type=Path, help="a compare (or transfer) directory: METHOD/seed-S/eval/")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--out", type=Path, help="write form_repairs.md and form_repairs.json here")
    args = parser.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    if not args.dir.is_dir():
        print(f"form_repairs: no directory {args.dir}", file=sys.stderr)
        return 2
    table, missing = {}, []
    for method in methods_in(args.dir):
        rows = seed_samples(args.dir, method, [0] if method == "base" else seeds)
        if rows is None:
            missing.append(method)
            continue
        table[method] = count(rows)
    lines = [f"Wrong→right pairs (attempt 1 → 2), seeds {args.seeds} pooled: form repairs (attempt 1 already held "
             "the right number, outside the instructed form) and answer corrections.", "",
             "| Method | Episodes | Wrong→right | Form repairs | Answer corrections |", "|---|---:|---:|---:|---:|"]
    lines += [f"| {m} | {c['episodes']} | {c['i2c']} | {c['form_repairs']} | {c['answer_corrections']} |"
              for m, c in table.items()]
    if missing:
        lines += ["", f"Not evaluated at every seed (left out): {', '.join(missing)}."]
    text = "\n".join(lines) + "\n"
    print(text, end="")
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "form_repairs.md").write_text(text)
        (args.out / "form_repairs.json").write_text(json.dumps({"seeds": seeds, "methods": table,
                                                                "missing": missing}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
