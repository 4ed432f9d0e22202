"""The paper's five findings, each decided by a confidence interval, from a `selfcorrect compare` directory.

    python scripts/findings.py runs/repro/compare --seeds 0,1,2 [--out docs/results/repro/findings.md]

Every run of a comparison was evaluated greedily on the same test problems, so methods are compared
*paired by problem*: for a problem p, d_p = mean over method A's episodes (all seeds) of (r2 − r1) minus the
same for method B, and the interval of mean_p d_p is a percentile bootstrap over problems (2000
resamples, seed 0) -- the cluster bootstrap of `compare`'s table, applied to the difference.

A finding *holds* when its interval is on the paper's side of 0, *does not hold* when it is on the other
side, and is *inconclusive* when it contains 0.  A method that has not been run makes its finding
"not measured".  (b) and (e) are one-sided claims of no gain: they hold when the interval of Δ lies at or
below 0 (a model that copies every answer has Δ = 0 [0, 0]) and fail when it lies above 0.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

from selfcorrect.compare import seed_samples
from selfcorrect.intervals import bootstrap_interval


def per_problem(out: Path, method: str, seeds: list[int], key) -> dict[str, float] | None:
    """Problem id → mean of ``key(attempts)`` over the method's episodes of all seeds (None: not run)."""
    rows = seed_samples(out, method, seeds)
    if rows is None:
        return None
    values: dict[str, list[float]] = defaultdict(list)
    for row in rows:
        values[row["id"]].append(key(row["attempts"]))
    return {p: float(np.mean(v)) for p, v in values.items()}


def delta(attempts) -> float:
    return attempts[1]["reward"] - attempts[0]["reward"]


def interval(values) -> tuple[float, float, float]:
    vals = np.asarray(values, dtype=float)
    low, high = bootstrap_interval(vals, n_boot=2000, seed=0)
    return float(vals.mean()), float(low), float(high)


def difference(out: Path, a: str, b: str, seeds: list[int]):
    """Δ_a − Δ_b paired by problem, with its interval; None when either method has not been run."""
    da, db = per_problem(out, a, seeds, delta), per_problem(out, b, seeds, delta)
    if da is None or db is None:
        return None
    shared = sorted(set(da) & set(db))
    return interval([da[p] - db[p] for p in shared])


def verdict(ci, positive: bool = True) -> str:
    if ci is None:
        return "not measured"
    _, low, high = ci
    if positive:
        return "holds" if low > 0 else "does not hold" if high < 0 else "inconclusive"
    return "holds" if high <= 0 else "does not hold" if low > 0 else "inconclusive"


def pct(ci) -> str:
    return "–" if ci is None else f"{100 * ci[0]:+.1f} [{100 * ci[1]:+.1f}, {100 * ci[2]:+.1f}]"


def findings(out: Path, seeds: list[int]) -> list[dict]:
    rows = []
    others = ["stage2-only", "no-shaping", "single-turn", "star", "star:sft_keep=D+", "pair-sft", "star-stage2",
              "prompting"]
    run = [m for m in others if per_problem(out, m, seeds, delta) is not None]
    gaps = {m: difference(out, "score", m, seeds) for m in run}
    if per_problem(out, "score", seeds, delta) is None or not gaps:
        a = "not measured"
    elif any(ci[2] < 0 for ci in gaps.values()):
        a = "does not hold"
    elif all(ci[1] > 0 for ci in gaps.values()):
        a = "holds" if set(others) - set(run) <= {"star", "star:sft_keep=D+"} else "holds among the methods run"
    else:
        a = "inconclusive"
    rows.append({"finding": "(a) SCoRe has the largest Δ(t1,t2)", "verdict": a,
                 "evidence": "; ".join(f"Δ_score − Δ_{m} = {pct(ci)}" for m, ci in gaps.items()) or "–",
                 "methods_run": run})
    for m in ("star:sft_keep=D+", "star", "pair-sft"):
        d = per_problem(out, m, seeds, delta)
        ci = None if d is None else interval(list(d.values()))
        # "edits little or breaks as much as it fixes": no net gain at attempt 2, Δ ≤ 0 (one-sided, as (e))
        rows.append({"finding": f"(b) {m} gains nothing at attempt 2 (Δ ≤ 0)", "verdict": verdict(ci, positive=False),
                     "evidence": f"Δ_{m} = {pct(ci)}"})
    for label, other in (("(c) without Stage I, Δ is lower", "stage2-only"),
                         ("(d) without shaping (α = 0), Δ is lower", "no-shaping")):
        ci = difference(out, "score", other, seeds)
        rows.append({"finding": label, "verdict": verdict(ci), "evidence": f"Δ_score − Δ_{other} = {pct(ci)}"})
    d = per_problem(out, "single-turn", seeds, delta)
    ci = None if d is None else interval(list(d.values()))
    rows.append({"finding": "(e) single-turn RL has Acc@t2 ≤ Acc@t1", "verdict": verdict(ci, positive=False),
                 "evidence": f"Δ_single-turn = {pct(ci)}"})
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("compare_dir", type=Path)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    rows = findings(args.compare_dir, seeds)
    lines = [f"Seeds {args.seeds}; percentage points, 95% bootstrap intervals over problems (paired).", "",
             "| finding | verdict | evidence |", "|---|---|---|"]
    lines += [f"| {r['finding']} | **{r['verdict']}** | {r['evidence']} |" for r in rows]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)
        args.out.with_suffix(".json").write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
