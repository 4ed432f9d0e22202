"""Sandbox throughput of this checkout against another checkout's, in one run (and false fails of both).

Usage: python benchmarks/sandbox_versions.py BASELINE_DIR [--rounds N] [--workers N]

BASELINE_DIR is another checkout of the project, e.g. ``git worktree add /tmp/base HEAD~1``.  Each round
runs the 164 HumanEval canonical solutions (``stub + solution``, pooled through ``run_many``) once with
each checkout's sandbox, each in a fresh process (so each pays its own zygote start, as a training job
does), alternating so that machine noise hits both alike.  Prints programs per second per round, the
new/baseline ratio per round and its median (issue target: >= 0.8), and how many canonical solutions
each checkout fails (a correct program scored 0 is a false fail).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_ONE_ROUND = r"""
import json, sys, time
sys.path.insert(0, sys.argv[1])
from selfcorrect.tasks.code import humaneval_program, make_humaneval
from selfcorrect.tasks.sandbox import SandboxLimits, run_many
task = make_humaneval()
jobs = [(humaneval_program(p.meta["canonical_solution"], p), p.tests or "", p.entry_point, p.meta["prompt"])
        for p in task.problems]
workers = int(sys.argv[2]) or None
start = time.perf_counter()
results = run_many(jobs, max_workers=workers, limits=SandboxLimits())
seconds = time.perf_counter() - start
print(json.dumps({"seconds": seconds, "n": len(jobs),
                  "failed": [p.id for p, r in zip(task.problems, results) if not r.passed]}))
"""


def _round(tree: str, workers: int) -> dict:
    out = subprocess.run([sys.executable, "-c", _ONE_ROUND, tree, str(workers)], capture_output=True, text=True,
                         check=True, cwd=tree)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("baseline", help="another checkout of the project")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=0, help="pool size (0: run_many's default)")
    args = parser.parse_args(argv)
    ratios = []
    for number in range(1, args.rounds + 1):
        base = _round(os.path.abspath(args.baseline), args.workers)
        new = _round(ROOT, args.workers)
        ratio = (new["n"] / new["seconds"]) / (base["n"] / base["seconds"])
        ratios.append(ratio)
        print(f"round {number}: baseline {base['n'] / base['seconds']:.1f}/s ({len(base['failed'])} failed), "
              f"this checkout {new['n'] / new['seconds']:.1f}/s ({len(new['failed'])} failed), ratio {ratio:.2f}",
              flush=True)
    print(f"false fails of 164 canonical solutions: baseline {base['failed']}, this checkout {new['failed']}")
    print(f"throughput ratio (this checkout / baseline), median of {len(ratios)} rounds: "
          f"{statistics.median(ratios):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
