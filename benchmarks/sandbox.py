"""Sandbox throughput: the two-process design against the previous one-process harness, in one run.

Usage: python benchmarks/sandbox.py [--workers N] [--limit N] [--baseline-commit SHA] [--rounds N]

Programs: the 164 HumanEval canonical solutions (``stub + solution``).  The
baseline is the previous sandbox (tests in the same interpreter as the
program), loaded from git history at ``--baseline-commit`` so that no second
copy of it lives in the tree; without git it is skipped.  Each design runs
sequentially and pooled; rounds alternate the designs so that machine noise
hits both alike.  The last line is the new/baseline ratio of pooled
throughput per round and its median (the target is >= 0.8).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from selfcorrect.tasks.code import humaneval_program, make_humaneval  # noqa: E402
from selfcorrect.tasks.sandbox import SandboxLimits, run_many, run_tests, sandbox_info  # noqa: E402

BASELINE_COMMIT = "f65cc59"  # the last commit with the one-process sandbox (selfcorrect/tasks/sandbox.py)


def _baseline(commit: str):
    """The previous sandbox module, loaded from git history, or None."""
    try:
        source = subprocess.run(["git", "-C", ROOT, "show", f"{commit}:selfcorrect/tasks/sandbox.py"],
                                capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError) as exc:
        print(f"baseline: not available ({exc}); measuring the new design only")
        return None
    spec = importlib.util.spec_from_loader("selfcorrect.tasks._baseline_sandbox", loader=None)
    module = importlib.util.module_from_spec(spec)
    module.__package__ = "selfcorrect.tasks"
    sys.modules[spec.name] = module
    exec(compile(source, f"{commit}:selfcorrect/tasks/sandbox.py", "exec"), module.__dict__)
    return module


def _measure(label: str, run) -> tuple[float, int, int]:
    start = time.perf_counter()
    results = run()
    seconds = time.perf_counter() - start
    passed = sum(r.passed for r in results)
    rate = len(results) / seconds
    print(f"{label:<22} {len(results)} programs in {seconds:6.2f} s = {rate:6.1f} programs/s ({passed} passed)",
          flush=True)
    return rate, passed, len(results)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=None, help="pool size (default: run_many's, 2 per CPU)")
    parser.add_argument("--limit", type=int, default=None, help="only the first N problems")
    parser.add_argument("--baseline-commit", default=BASELINE_COMMIT)
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds of both designs")
    args = parser.parse_args()

    task = make_humaneval(limit=args.limit)
    problems = task.problems
    new_jobs = [(humaneval_program(p.meta["canonical_solution"], p), p.tests or "", p.entry_point,
                 p.meta["prompt"]) for p in problems]
    old_jobs = [(code, context + "\n\n" + tests, entry) for code, tests, entry, context in new_jobs]
    limits = SandboxLimits()
    info = sandbox_info(limits)
    print(f"new design: isolation={info['isolation']} cgroup={info['cgroup'] or info['cgroup_unavailable']}")
    print(f"cpus={len(os.sched_getaffinity(0))} workers={args.workers or 'default (2 per CPU)'} "
          f"python={sys.version.split()[0]} programs={len(problems)}")
    baseline = _baseline(args.baseline_commit)
    if baseline is not None:
        old_limits = baseline.SandboxLimits()
        print(f"baseline ({args.baseline_commit}): isolation={baseline.sandbox_isolation(old_limits)}")

    rates: dict[str, list[float]] = {}
    for round_no in range(args.rounds):
        print(f"-- round {round_no + 1}")
        rates.setdefault("new sequential", []).append(
            _measure("new sequential", lambda: [run_tests(*j[:3], limits=limits, context=j[3]) for j in new_jobs])[0])
        rates.setdefault("new pool", []).append(
            _measure("new pool", lambda: run_many(new_jobs, max_workers=args.workers, limits=limits))[0])
        if baseline is not None:
            rates.setdefault("baseline sequential", []).append(_measure(
                "baseline sequential", lambda: [baseline.run_tests(*j, limits=old_limits) for j in old_jobs])[0])
            rates.setdefault("baseline pool", []).append(_measure(
                "baseline pool", lambda: baseline.run_many(old_jobs, max_workers=args.workers,
                                                           limits=old_limits))[0])
    best = {k: max(v) for k, v in rates.items()}
    print("-- best of rounds (programs/s): " + ", ".join(f"{k} {v:.1f}" for k, v in best.items()))
    if baseline is not None:
        for mode in ("sequential", "pool"):
            # Each round's ratio compares runs made moments apart; their median is the robust summary.
            ratios = [n / b for n, b in zip(rates[f"new {mode}"], rates[f"baseline {mode}"])]
            print(f"{mode} new/baseline per round: {', '.join(f'{r:.2f}' for r in ratios)}; "
                  f"median {statistics.median(ratios):.2f}x, best-of ratio "
                  f"{best[f'new {mode}'] / best[f'baseline {mode}']:.2f}x"
                  + (" (target >= 0.8x)" if mode == "pool" else ""))


if __name__ == "__main__":
    main()
