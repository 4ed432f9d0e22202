"""An example of your own task: unit conversion ("Convert 7 km to m.").

Use it from the command line with

    selfcorrect eval --task examples/custom_task.py:make_task -o split=test -o n=300

or from Python with ``load_task("examples/custom_task.py:make_task", n="300")``
(command-line strings are converted to the annotated types below).  See
``docs/custom_tasks.md`` for the whole contract.
"""

from __future__ import annotations

import hashlib
import random

from selfcorrect.errors import ConfigError
from selfcorrect.tasks import Problem, Task
from selfcorrect.tasks.arithmetic import extract_integer_answer

# (from unit, to unit, factor): every answer is an exact integer.
CONVERSIONS = [
    ("km", "m", 1000),
    ("m", "cm", 100),
    ("kg", "g", 1000),
    ("h", "min", 60),
    ("min", "s", 60),
    ("day", "h", 24),
]

INSTRUCTION = (
    "Convert the quantity below. Think step by step if you need to, then end your reply "
    'with "The final answer is N." where N is the number.'
)
CORRECTION = (
    "There might be an error in the solution above. Please correct the error, if any, "
    'and rewrite the solution. End your reply with "The final answer is N."'
)


def _split_of(question: str) -> str:
    """A fixed hash of the question decides its split, so train and test never share a problem."""
    return "test" if int(hashlib.sha256(question.encode()).hexdigest(), 16) % 5 == 0 else "train"


def make_task(n: int = 200, seed: int = 0, split: str = "train", max_value: int = 100) -> Task:
    """Build the unit-conversion task.

    Args:
        n: how many problems (capped by how many the split has).
        seed: which problems are drawn, and in what order.
        split: ``train`` or ``test``.
        max_value: quantities are drawn from 1..max_value.
    """
    if split not in ("train", "test"):
        raise ConfigError(f"unit conversion: unknown split {split!r}; choose train or test")
    if n < 1 or max_value < 1:
        raise ConfigError("unit conversion: n and max_value must be positive")

    candidates = []
    for value in range(1, max_value + 1):
        for src, dst, factor in CONVERSIONS:
            question = f"Convert {value} {src} to {dst}."
            if _split_of(question) == split:
                candidates.append(
                    Problem(
                        id=f"{value}{src}-{dst}",  # unique and stable
                        question=question,
                        answer=str(value * factor),  # the oracle, never shown to the model
                        meta={"factor": factor},
                    )
                )
    random.Random(seed).shuffle(candidates)
    problems = candidates[:n]

    def format_prompt(problem: Problem) -> str:
        return f"{INSTRUCTION}\n\n{problem.question}"

    def verify(completion: str, problem: Problem) -> float:
        return 1.0 if extract_integer_answer(completion) == problem.answer else 0.0

    return Task(
        name="unit-conversion",
        problems=problems,
        format_prompt=format_prompt,
        correction_instruction=CORRECTION,
        verify=verify,
        extract_answer=extract_integer_answer,
        options={"n": n, "seed": seed, "split": split, "max_value": max_value},
    )
