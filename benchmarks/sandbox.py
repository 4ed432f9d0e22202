"""Sandbox throughput: the 164 HumanEval canonical solutions, sequential vs. pooled.

Usage: python benchmarks/sandbox.py [--workers N] [--limit N]

Both modes run in the same process, one after the other, on the same
programs; the last line is the pool/sequential speed-up.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from selfcorrect.tasks.code import humaneval_program, make_humaneval  # noqa: E402
from selfcorrect.tasks.sandbox import SandboxLimits, run_many, run_tests, sandbox_isolation  # noqa: E402


def _jobs(limit: int | None) -> list[tuple[str, str, str | None]]:
    task = make_humaneval(limit=limit)
    return [
        (humaneval_program(p.meta["canonical_solution"], p), p.meta["prompt"] + "\n\n" + (p.tests or ""),
         p.entry_point)
        for p in task.problems
    ]


def _measure(label: str, run) -> float:
    start = time.perf_counter()
    results = run()
    seconds = time.perf_counter() - start
    passed = sum(r.passed for r in results)
    rate = len(results) / seconds
    print(f"{label:<11} {len(results)} programs in {seconds:6.2f} s = {rate:6.1f} programs/s ({passed} passed)")
    return rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=None, help="pool size (default: run_many's, 2 per CPU)")
    parser.add_argument("--limit", type=int, default=None, help="only the first N problems")
    args = parser.parse_args()

    limits = SandboxLimits()
    jobs = _jobs(args.limit)
    print(f"isolation={sandbox_isolation(limits)} cpus={len(os.sched_getaffinity(0))} "
          f"workers={args.workers or 'default (2 per CPU)'} python={sys.version.split()[0]}")
    sequential = _measure("sequential", lambda: [run_tests(*job, limits=limits) for job in jobs])
    pooled = _measure("pool", lambda: run_many(jobs, max_workers=args.workers, limits=limits))
    print(f"speed-up pool/sequential: {pooled / sequential:.2f}x")


if __name__ == "__main__":
    main()
