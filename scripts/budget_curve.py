"""The budget curve: test accuracy at each attempt against sampled episodes, pooled over seeds.

    python scripts/budget_curve.py runs/repro/curve --methods score,single-turn --seeds 0,1,2 \
        [--base runs/repro/demo/eval-base] [--against single-turn] [--out docs/results/repro/curve]

Reads the runs of ``DIR/METHOD/seed-S`` (the layout of `selfcorrect compare`) trained with ``test_every``:
their periodic test evaluations (``test-evals/step-N/samples.jsonl``) and the final one (``eval/``).  Every
run must be finished (``eval/metrics.json``).  A point is a step every seed of the method has (a step some
seed lacks is named and left out); its accuracies and Δ(t1,t2) pool the method's episodes of all seeds, with
the cluster bootstrap over problems of `compare`'s table.  ``--base`` adds the untrained model (greedy, so
one evaluation stands for every seed) at 0 episodes.  An episode is one problem's K-attempt rollout in
training; single-turn RL samples one attempt per episode, so at the same x it has sampled half the replies.

The paper's comparison (SCoRe's Acc@t2 64.4 vs single-turn RL's best attempt 61.8) is made at every shared
trained step: the first method's Acc@t2 minus ``--against``'s best attempt at that step (the attempt with
the higher pooled accuracy), paired by problem, with the percentile bootstrap over problems of
scripts/findings.py.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from findings import interval                                  # noqa: E402  (the paired bootstrap)
from selfcorrect.compare import pooled_summary, run_dir        # noqa: E402
from selfcorrect.config import from_dict, load_yaml            # noqa: E402
from selfcorrect.files import read_jsonl                       # noqa: E402
from selfcorrect.training.config import TrainConfig            # noqa: E402


def evaluations(path: Path) -> dict[int, Path]:
    """Step → samples.jsonl of one run's test evaluations (periodic and final)."""
    found = {int(d.name.split("-")[1]): d / "samples.jsonl"
             for d in (path / "test-evals").glob("step-*") if (d / "samples.jsonl").is_file()}
    final = path / "eval" / "metrics.json"
    if final.is_file():
        found[int(json.loads(final.read_text())["step"])] = path / "eval" / "samples.jsonl"
    return found


def episodes_per_step(path: Path) -> int:
    config = from_dict(TrainConfig, load_yaml(path / "config.yaml"), str(path / "config.yaml"))
    return config.problems_per_step * config.samples


def method_curve(out: Path, method: str, seeds: list[int]) -> tuple[list[dict], dict[int, list[dict]]]:
    """The method's points (pooled over seeds) and, per step, the pooled per-problem records."""
    runs = [run_dir(out, method, s) for s in seeds]
    found = [evaluations(r) for r in runs]
    steps = sorted(set.intersection(*(set(f) for f in found))) if found else []
    dropped = sorted(set().union(*(set(f) for f in found)) - set(steps))
    if dropped:
        print(f"budget_curve: {method}: steps {', '.join(map(str, dropped))} left out (not every seed has them)",
              file=sys.stderr)
    per = episodes_per_step(runs[0])
    points, records = [], {}
    for step in steps:
        rows = [row for f in found for row in read_jsonl(f[step])]
        summary = pooled_summary(rows)
        records[step] = rows
        points.append(point(step, step * per, seeds, summary))
    return points, records


def point(step: int, episodes: int, seeds, summary: dict) -> dict:
    """One point of a curve: what the table and the plot need of a pooled summary."""
    return {"step": step, "episodes": episodes, "n": summary["n"], "seeds": seeds,
            "accuracy": summary["accuracy"], "accuracy_ci": summary["ci95"]["accuracy"],
            "delta": summary["delta"], "delta_ci": summary["ci95"]["delta"],
            "format_rate": summary.get("format_rate")}


def base_point(path: Path) -> tuple[dict, list[dict]]:
    rows = read_jsonl(path / "samples.jsonl")
    return point(0, 0, "greedy, seed-free", pooled_summary(rows)), rows


def by_problem(rows: list[dict], attempt: int) -> dict[str, float]:
    values: dict[str, list[float]] = defaultdict(list)
    for row in rows:
        values[row["id"]].append(row["attempts"][attempt]["reward"])
    return {p: float(np.mean(v)) for p, v in values.items()}


def gap(first: list[dict], second: list[dict], second_accuracy: list[float]) -> dict:
    """first's Acc@t2 − second's best attempt, paired by problem (percentile bootstrap over problems)."""
    best = int(np.argmax(second_accuracy))
    a, b = by_problem(first, len(first[0]["attempts"]) - 1), by_problem(second, best)
    shared = sorted(set(a) & set(b))
    mean, low, high = interval([a[p] - b[p] for p in shared])
    return {"against_attempt": best + 1, "difference": mean, "ci": [low, high], "problems": len(shared)}


def pct(value: float, ci) -> str:
    return f"{100 * value:.1f} [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]"


def markdown(curves: dict[str, list[dict]], gaps: list[dict], first: str, against: str) -> str:
    lines = ["| Method | Step | Episodes | Acc@t1 | Acc@t2 | Δ(t1,t2) | Format@t2 |", "|---|---|---|---|---|---|---|"]
    for method, points in curves.items():
        for p in points:
            fmt = f"{100 * p['format_rate'][-1]:.1f}" if p.get("format_rate") else "–"
            accs = [pct(a, c) for a, c in zip(p["accuracy"], p["accuracy_ci"])]
            accs += ["–"] * (2 - len(accs))
            lines.append(f"| {method} | {p['step']} | {p['episodes']} | {accs[0]} | {accs[1]} | "
                         f"{100 * p['delta']:+.1f} [{100 * p['delta_ci'][0]:+.1f}, {100 * p['delta_ci'][1]:+.1f}] | "
                         f"{fmt} |")
    if gaps:
        lines += ["", f"{first} Acc@t2 minus {against}'s best attempt at the same step (paired by problem, "
                  "95% percentile bootstrap over problems):", "",
                  "| Step | Episodes | Against attempt | Difference | Problems |", "|---|---|---|---|---|"]
        for g in gaps:
            lines.append(f"| {g['step']} | {g['episodes']} | t{g['against_attempt']} | "
                         f"{100 * g['difference']:+.1f} [{100 * g['ci'][0]:+.1f}, {100 * g['ci'][1]:+.1f}] | "
                         f"{g['problems']} |")
    return "\n".join(lines) + "\n"


def plot(curves: dict[str, list[dict]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for i, (method, points) in enumerate(curves.items()):
        x = [p["episodes"] for p in points]
        for k, style in ((0, "--"), (1, "-")):
            if not all(len(p["accuracy"]) > k for p in points):
                continue
            y = [100 * p["accuracy"][k] for p in points]
            low = [100 * p["accuracy_ci"][k][0] for p in points]
            high = [100 * p["accuracy_ci"][k][1] for p in points]
            ax.plot(x, y, style, marker="o", color=f"C{i}", label=f"{method} Acc@t{k + 1}")
            ax.fill_between(x, low, high, color=f"C{i}", alpha=0.08 if k == 0 else 0.15)
    ax.set_xlabel("sampled episodes")
    ax.set_ylabel("test accuracy (%), 95% CI")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dir", type=Path)
    parser.add_argument("--methods", default="score,single-turn")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--base", type=Path, help="an eval directory of the untrained model (samples.jsonl)")
    parser.add_argument("--against", default="single-turn",
                        help="the method (after the first) whose best attempt the first method's last attempt meets; "
                             "none: no comparison")
    parser.add_argument("--out", type=Path, help="write curve.md, curve.json and curve.png here")
    args = parser.parse_args(argv)
    methods, seeds = args.methods.split(","), [int(s) for s in args.seeds.split(",")]
    # A finished run only: a curve cut short by a run still training would pass silently for a shorter one.
    unfinished = [str(run_dir(args.dir, m, s)) for m in methods for s in seeds
                  if not (run_dir(args.dir, m, s) / "eval" / "metrics.json").is_file()]
    if unfinished:
        print(f"budget_curve: no finished run (eval/metrics.json) in {', '.join(unfinished)}", file=sys.stderr)
        return 2
    if args.base and not (args.base / "samples.jsonl").is_file():
        print(f"budget_curve: no base evaluation: {args.base / 'samples.jsonl'} is missing", file=sys.stderr)
        return 2
    if args.against != "none" and args.against not in methods[1:]:
        print(f"budget_curve: --against {args.against} is not one of the methods after the first "
              f"({', '.join(methods[1:]) or 'none'})", file=sys.stderr)
        return 2
    curves, records = {}, {}
    for method in methods:
        curves[method], records[method] = method_curve(args.dir, method, seeds)
    if args.base:
        point, rows = base_point(args.base)
        for method in methods:
            curves[method].insert(0, point)
            records[method][0] = rows
    gaps = []
    first, against = methods[0], args.against
    accuracy = {p["step"]: p["accuracy"] for p in curves.get(against, [])}
    for p in curves[first] if against != "none" else []:
        if p["step"] and p["step"] in records[against]:        # step 0 is the same base model on both sides
            gaps.append({"step": p["step"], "episodes": p["episodes"],
                         **gap(records[first][p["step"]], records[against][p["step"]], accuracy[p["step"]])})
    text = markdown(curves, gaps, first, against)
    print(text, end="")
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "curve.md").write_text(text)
        (args.out / "curve.json").write_text(json.dumps({"curves": curves, "gaps": gaps, "seeds": seeds}, indent=2))
        plot(curves, args.out / "curve.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
