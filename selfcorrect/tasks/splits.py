"""The three problem sets of a training run: train, validation, test.

Who may see which set:

* **train** -- the rollouts that produce gradients;
* **validation** -- the periodic evaluations and the best-checkpoint choice (model selection);
* **test** -- the final report, evaluated once at the end and never used to choose anything.

A number is held out only if its problems never reached the first two.  So:

* **validation** is the training task's own ``validation`` split where the task has one by construction
  (``Task.splits``; the arithmetic task hashes each expression into train / validation / test, MBPP's
  standard task-id ranges), and otherwise is *carved* from the training problems by a hash of each
  problem's normalised text (:func:`carve`): the same problems for any seed, order or ``limit``, and
  removed from training;
* **test** is the evaluation task (``eval_task`` or the training task, with ``eval_split`` and
  ``eval_task_options``), and a run is refused when any test problem is also a training or validation
  problem (:func:`overlapping`; normalised text), unless the user explicitly allows it.  A file task given
  only ``-o path=FILE`` would otherwise "hold out" its own training file.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
import unicodedata
from collections.abc import Sequence
from typing import Any

from ..errors import ConfigError
from .base import Problem, Task

__all__ = ["normalize_problem", "hash_fraction", "carve", "overlapping", "describe", "RunSplits"]

_SPACE = re.compile(r"\s+")


def normalize_problem(problem: Problem) -> str:
    """The text two problems must share to count as the same problem: question (and tests, for code),
    Unicode-normalised, case-folded, whitespace collapsed."""
    text = problem.question if problem.tests is None else f"{problem.question}\n{problem.tests}"
    return _SPACE.sub(" ", unicodedata.normalize("NFKC", text).casefold()).strip()


def hash_fraction(text: str, salt: str = "validation") -> float:
    """A number in [0, 1) fixed by ``text`` alone (SHA-256): a split that does not depend on seeds or order."""
    digest = hashlib.sha256(f"{salt}:{text}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def carve(problems: Sequence[Problem], fraction: float) -> tuple[list[Problem], list[Problem]]:
    """(train, validation): the problems whose :func:`hash_fraction` of their normalised text is below
    ``fraction`` go to validation.  Problems with the same text land on the same side."""
    train: list[Problem] = []
    validation: list[Problem] = []
    for p in problems:
        (validation if hash_fraction(normalize_problem(p)) < fraction else train).append(p)
    return train, validation


def overlapping(test: Sequence[Problem], seen: Sequence[Problem]) -> list[Problem]:
    """The problems of ``test`` whose normalised text is also in ``seen``."""
    texts = {normalize_problem(p) for p in seen}
    return [p for p in test if normalize_problem(p) in texts]


def subset(task: Task, problems: list[Problem]) -> Task:
    """``task`` with only ``problems`` (prompts and verifier unchanged)."""
    return dataclasses.replace(task, problems=problems)


def source_label(name: str, options: dict[str, Any]) -> str:
    """How a problem set was asked for, e.g. ``task 'math', path data/test.jsonl, split test``."""
    return f"task {name!r}" + "".join(f", {k} {options[k]}" for k in ("split", "path", "dataset")
                                      if options.get(k) is not None)


def describe(task: Task, split: str, how: str) -> dict[str, Any]:
    """What a report says about a problem set: task, split, how it was made, how many problems."""
    return {"task": task.name, "split": split, "source": how, "problems": len(task.problems)}


@dataclasses.dataclass
class RunSplits:
    """The three problem sets of a run (see the module docstring) and how each was made."""

    train: Task
    validation: Task | None
    """None when there are no validation problems (``validation_fraction`` 0 and no native split)."""
    test: Task
    sources: dict[str, dict[str, Any]]
    """``{"train"|"validation"|"test": describe(...)}``, recorded in the run's config and reports."""

    def fingerprint(self) -> str:
        """SHA-256 of the training problems (ids, questions, answers) and the training task's options: a
        checkpoint keeps it, and a resume whose task now gives other problems or rewards is refused."""
        digest = hashlib.sha256(repr(sorted((str(k), repr(v)) for k, v in self.train.options.items())).encode())
        for p in self.train.problems:
            digest.update(f"\0{p.id}\0{p.question}\0{p.answer}\0{p.tests}".encode())
        return digest.hexdigest()

    @classmethod
    def build(cls, train: Task, test: Task, *, native_validation: Task | None, fraction: float,
              allow_overlap: bool, test_label: str) -> RunSplits:
        """Assemble and check the splits.

        Args:
            train: the training task as its factory built it (native ``train`` split, or all rows).
            test: the evaluation task.
            native_validation: the training task's own validation split, when it has one.
            fraction: share of ``train`` carved into validation when there is no native split.
            allow_overlap: evaluate even when test problems are training/validation problems.
            test_label: how the test problems were chosen, for the refusal message and the reports.
        """
        if native_validation is not None:
            validation, how = native_validation, "the task's own validation split"
            shared = {normalize_problem(p) for p in overlapping(train.problems, validation.problems)}
            if shared:                   # e.g. MBPP's train_split all: selection must not see training problems
                train = subset(train, [p for p in train.problems if normalize_problem(p) not in shared])
                how += f"; its {len(shared)} problems that were also training problems left training"
        else:
            kept, carved = carve(train.problems, fraction)
            if carved and not kept:
                raise ConfigError(f"task {train.name!r}: carving validation_fraction {fraction} of its "
                                  f"{len(train.problems)} training problems left none to train on; "
                                  "lower validation_fraction")
            train = subset(train, kept)
            validation = subset(train, carved) if carved else None
            how = f"{len(carved)} of the training problems, carved by a hash of their text ({fraction:.0%})"
        if not train.problems:
            raise ConfigError(f"task {train.name!r} has no training problems")
        if not allow_overlap:
            seen = [*train.problems, *(validation.problems if validation is not None else [])]
            shared = overlapping(test.problems, seen)
            if shared:
                raise ConfigError(
                    f"{len(shared)} of the {len(test.problems)} test problems ({test_label}) are also training or "
                    f"validation problems (e.g. {shared[0].question[:60]!r}), so the final numbers would not be "
                    "held out: give the test problems their own source (e.g. --eval-task-options path=TEST.jsonl, "
                    "or eval_split), or set allow_train_test_overlap: true to evaluate on them anyway")
        sources = {"train": describe(train, "train", "training problems"),
                   "test": describe(test, "test", test_label)}
        if validation is not None:
            sources["validation"] = describe(validation, "validation", how)
        return cls(train, validation, test, sources)
