"""The task contract: problems, prompts, a verifier.

A :class:`Task` is everything the rest of the pipeline needs to know about a
problem domain:

* ``problems`` — a list of :class:`Problem`, each with a stable ``id``;
* ``first_prompt(problem)`` — the user turn of attempt 1 (question plus the
  answer-format instruction);
* ``correction_instruction`` — the user turn that precedes every later attempt
  (the paper's "There might be an error ..." instruction);
* ``reward(completion, problem)`` — the verifier, 1.0 right and 0.0 wrong;
* ``extract_answer(completion)`` — the final answer read from free text, used
  for the parse-rate metric and for majority voting (``None`` = unparsable);
* optionally ``follows_format(completion)`` — whether the answer is stated in the
  instructed form (format compliance), and ``splits``, the factory's disjoint splits.

Tasks are plain data plus functions, so a user's own task is a function that
returns ``Task(...)`` (see ``docs/custom_tasks.md``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Problem:
    """One problem. Only ``id`` and ``question`` are required.

    Math-style tasks fill ``answer``; code tasks fill ``tests`` and
    ``entry_point`` (and may keep a function stub in ``meta["prompt"]``).
    """

    id: str
    """Stable identifier, unique within a task (used to join samples, splits, resume)."""
    question: str
    """The problem statement as shown to the model (without format instructions)."""
    answer: str | None = None
    """Oracle final answer (math/arithmetic); never shown to the model."""
    tests: str | None = None
    """Test code that must run to completion for a code completion to pass."""
    entry_point: str | None = None
    """Name of the function the tests exercise (code tasks)."""
    meta: Mapping[str, Any] = field(default_factory=dict)
    """Anything else a task wants to keep (source row, difficulty, stub, ...)."""


Verifier = Callable[[str, Problem], float]


@dataclass(frozen=True)
class Verdict:
    """A verifier's score of one completion and, when it is 0, why."""

    reward: float
    """1.0 right, 0.0 wrong."""
    reason: str = ""
    """Why the completion did not pass (e.g. ``failed: AssertionError at tests line 3: ...``)."""


@dataclass
class Task:
    """A problem set with its prompts and verifier (see the module docstring)."""

    name: str
    """Short name shown in reports, e.g. ``arithmetic`` or ``math``."""
    problems: list[Problem]
    """The problems of the selected split, in a fixed order."""
    format_prompt: Callable[[Problem], str]
    """Builds the attempt-1 user turn from a problem."""
    correction_instruction: str
    """User turn placed before every attempt after the first."""
    verify: Verifier
    """``verify(completion, problem) -> 1.0 | 0.0``."""
    extract_answer: Callable[[str], str | None]
    """Final answer read from a completion, ``None`` when none can be read."""
    batch_verify: Callable[[Sequence[str], Sequence[Problem]], list[float]] | None = None
    """Optional vectorised verifier."""
    batch_verdicts: Callable[[Sequence[str], Sequence[Problem]], list[Verdict]] | None = None
    """Optional vectorised verifier that also says why a completion scored 0 (code tasks
    run a sandbox pool); used before ``batch_verify`` and ``verify``."""
    same_answer: Callable[[str, str], bool] | None = None
    """Answer equivalence for majority voting; string equality when ``None``."""
    options: Mapping[str, Any] = field(default_factory=dict)
    """The options the task was built with (recorded in run directories)."""
    splits: tuple[str, ...] = ()
    """The values of the factory's ``split`` option that give disjoint problem sets by construction (e.g.
    ``("train", "validation", "test")``).  A training run takes its validation problems from the
    ``validation`` one when it is listed, and otherwise carves them from the training problems
    (:mod:`selfcorrect.tasks.splits`)."""
    follows_format: Callable[[str], bool] | None = None
    """Whether a completion states its answer in the form the prompt asks for (the format-compliance
    metric); ``None`` when the task has no such form."""
    lenient_verify: Verifier | None = None
    """The verifier under a lenient reading of the answer, whatever its form (e.g. the last number of the
    reply), where the task has one.  It tells a *form repair* (attempt 1 already held the right answer, not
    in the instructed form) from an *answer correction* (:mod:`selfcorrect.probe`); never a reward."""
    lenient_answer: Callable[[str], str | None] | None = None
    """The answer read by that lenient reader (``None`` when none can be read): whether attempt 2 changed
    the *answer*, as opposed to its form."""

    def __post_init__(self) -> None:
        seen: set[str] = set()
        for p in self.problems:
            if p.id in seen:
                from ..errors import DataError

                raise DataError(f"task {self.name!r}: duplicate problem id {p.id!r}")
            seen.add(p.id)

    def first_prompt(self, problem: Problem) -> str:
        """The user turn for attempt 1."""
        return self.format_prompt(problem)

    def reward(self, completion: str, problem: Problem) -> float:
        """Verifier reward of one completion: 1.0 right, 0.0 wrong."""
        return float(self.verify(completion, problem))

    def rewards(self, completions: Sequence[str], problems: Sequence[Problem]) -> list[float]:
        """Rewards for many completions (uses the task's batch verifier when it has one)."""
        return [v.reward for v in self.verdicts(completions, problems)]

    def verdicts(self, completions: Sequence[str], problems: Sequence[Problem]) -> list[Verdict]:
        """Reward and reason of many completions."""
        if len(completions) != len(problems):
            raise ValueError("completions and problems must have the same length")
        if self.batch_verdicts is not None:
            verdicts = [Verdict(float(v.reward), v.reason) for v in self.batch_verdicts(completions, problems)]
        elif self.batch_verify is not None:
            verdicts = [Verdict(float(r)) for r in self.batch_verify(completions, problems)]
        else:
            verdicts = [Verdict(self.reward(c, p)) for c, p in zip(completions, problems)]
        return [v if v.reason or v.reward > 0 else Verdict(v.reward, self.explain(c, p))
                for v, c, p in zip(verdicts, completions, problems)]

    def explain(self, completion: str, problem: Problem) -> str:
        """Why a completion scored 0, for a verifier that does not say: it has no answer the task can
        read, or the answer it has is not the oracle's."""
        try:
            answer = self.extract_answer(completion)
        except Exception as err:            # a user's extractor that fails is a reason too, not a crash
            return f"answer extraction failed: {type(err).__name__}"
        if answer is None:
            return "no answer in the instructed form" if self.follows_format is not None else "no parsable answer"
        if problem.answer is None:
            return f"answer {answer!r} rejected"
        return f"wrong answer {answer!r} (expected {problem.answer!r})"

    def answers_match(self, a: str, b: str) -> bool:
        """Whether two extracted answers are the same (for majority voting)."""
        if self.same_answer is not None:
            return bool(self.same_answer(a, b))
        return a.strip() == b.strip()

    def __len__(self) -> int:
        return len(self.problems)
