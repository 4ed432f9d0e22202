"""False fails: correct programs the sandbox scores 0.  They bias the reward as surely as false passes.

``tests/data/mbpp_shapes.jsonl`` is a corpus of MBPP-format rows (task, reference code, asserts) covering
the shapes MBPP's tests use -- floats, sets, tuples, dicts, setup code and imports, an entry point named
``check``, arguments mutated in place or passed twice, several functions, big ints, ``None``, a
namedtuple, an expected exception, class-building asserts, an iterator result -- since MBPP itself is
not installable offline.  Every reference passes a plain single-interpreter harness (checked here); the
sandbox must pass the same ones.  Before objects built by the tests stayed in the candidate (``Pair(5,
24)``: the judge holds a handle) and iterators crossed drained, four of these failed (class-building,
iterator, ``check``-named entry, the same list twice).
HumanEval's 164 canonical solutions: ``tests/test_code_tasks.py::test_all_canonical_solutions_pass``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from selfcorrect.tasks import load_task
from selfcorrect.tasks.sandbox import SandboxLimits, sandbox_isolation

CORPUS = Path(__file__).parent / "data" / "mbpp_shapes.jsonl"

pytestmark = pytest.mark.skipif(sandbox_isolation(SandboxLimits(isolation="auto")) != "full",
                                reason="measured at the full isolation level")


def _plain_harness(problem) -> bool:
    """The reference run as a plain harness would: context, program and tests in one interpreter."""
    namespace: dict = {}
    try:
        exec(problem.meta["context"] + "\n" + problem.meta["canonical_solution"] + "\n" + problem.tests, namespace)
    except Exception:
        return False
    return True


def test_every_reference_that_passes_a_plain_harness_passes_the_sandbox():
    task = load_task("mbpp", path=str(CORPUS), split="all", timeout_s=5.0)
    assert all(_plain_harness(p) for p in task.problems)
    verdicts = task.verdicts([f"```python\n{p.meta['canonical_solution']}```" for p in task.problems], task.problems)
    false_fails = {p.question: v.reason for p, v in zip(task.problems, verdicts) if v.reward != 1.0}
    assert not false_fails, false_fails
