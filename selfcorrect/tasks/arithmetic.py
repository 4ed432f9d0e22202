"""Procedural arithmetic: seeded, offline, with train / validation / test splits that never overlap.

A problem is an integer expression such as ``47 + 38 - 12`` (``steps`` operations
over operands of ``min_digits``..``digits`` digits).  Difficulty knobs besides those:
``carry`` (``none``: additions in which no column carries, ``some``: at least one
column carries; the carries are where a small model slips) and ``shots`` (solved
training-split examples before the question, which settle the answer form).  Its oracle answer is the
exact integer value (Python evaluates it; ``*`` binds tighter than ``+``/``-``).
``phrasing="words"`` asks the same expressions in words ("What is the sum of 47
and 38?"): a second problem set with the same answers, for transfer.

**Splits.** Every expression is assigned to a split by a hash of its text
(``sha256`` mod 10: bucket 0 is ``test``, bucket 1 ``validation``, the rest
``train``), independent of the seed, the phrasing and how many problems are
drawn.  So no split can ever contain another's expression, for any seeds or sizes.

**Reading the answer.** ``answer_format="strict"`` (default) reads only the form
the prompt asks for: the last ``\\boxed{...}`` or "The final answer is N"
(:func:`~selfcorrect.tasks.answers.extract_stated_answer`), as an integer; a reply
without it scores 0, however right its last number.  Otherwise training teaches
the model to drop the requested form (a policy rewarded for any last number has
no reason to keep it), and its replies stop parsing under any other grader.
``answer_format="lenient"`` also accepts, failing that, the last number in the
text (small models often answer ``23 + 58 = 81`` without the phrase).  A decimal
is read whole: ``46.0`` is 46, and ``0.5`` stays ``0.5`` (it never equals an
integer answer) instead of being read as ``5``.

An integer may carry a sign and thousands separators (``-1,234``); a trailing
``.0`` is accepted.  Reward is 1.0 iff the integer equals the oracle.  Whatever
the reader, ``Task.follows_format`` says whether a reply used the instructed form
(the format-compliance metric).
"""

from __future__ import annotations

import hashlib
import random
import re

from ..errors import ConfigError
from .answers import extract_stated_answer
from .base import Problem, Task
from .prompts import ARITHMETIC_CORRECTION, ARITHMETIC_INSTRUCTION

SPLITS = ("train", "validation", "test")
OPERATIONS = "+-*"
ANSWER_FORMATS = ("strict", "lenient")
PHRASINGS = ("symbols", "words")
CARRIES = ("any", "none", "some")
_BUCKETS = {0: "test", 1: "validation"}          # sha256 mod 10 -> split; every other bucket is train
_NUMBER = re.compile(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?(?!\d)|-?\d+(?:\.\d+)?")
_WHOLE_INTEGER = re.compile(r"^\s*(-?\d{1,3}(?:,\d{3})+|-?\d+)(?:\.0+)?\s*\.?\s*$")


def split_of(expression: str) -> str:
    """The split an expression belongs to, decided by a hash of its text alone."""
    bucket = int(hashlib.sha256(expression.encode()).hexdigest(), 16) % 10
    return _BUCKETS.get(bucket, "train")


def parse_integer(text: str | None) -> int | None:
    """An integer from an answer string (``"1,234"``, ``"-7."``, ``"$42$"``), or ``None``."""
    if text is None:
        return None
    text = text.strip().strip("$").replace("\\,", ",").replace("{,}", ",")
    m = _WHOLE_INTEGER.match(text)
    return int(m.group(1).replace(",", "")) if m else None


def extract_strict_answer(completion: str) -> str | None:
    """The integer stated in the instructed form ("The final answer is N" or ``\\boxed{N}``), canonical, or
    ``None`` (see the module docstring)."""
    stated = parse_integer(extract_stated_answer(completion))
    return None if stated is None else str(stated)


def follows_format(completion: str) -> bool:
    """Whether the completion states an integer answer in the instructed form."""
    return extract_strict_answer(completion) is not None


def extract_integer_answer(completion: str) -> str | None:
    """The lenient reader: the stated answer, else the last number in the text, canonical (module docstring)."""
    stated = extract_strict_answer(completion)
    if stated is not None:
        return stated
    numbers = _NUMBER.findall(completion)
    if not numbers:
        return None
    whole, _, fraction = numbers[-1].replace(",", "").partition(".")
    if not fraction.strip("0"):
        return str(int(whole))
    return f"{whole}.{fraction.rstrip('0')}"  # not an integer: can never match the oracle


_WORDS = {"+": "the sum of {a} and {b}", "-": "{a} minus {b}", "*": "the product of {a} and {b}"}
_STEP_WORDS = {"+": "add {b}", "-": "subtract {b}", "*": "multiply by {b}"}


def in_words(expression: str) -> str:
    """The question for ``expression`` in words: "What is the sum of 14 and 89?" for one operation, and
    "Start with 47, add 38, then subtract 12. What is the result?" for a chain.

    A chain told step by step is evaluated left to right, which is the oracle's value only when no ``*``
    follows the first operation (``*`` binds tighter); such an expression is spoken operator by operator
    with the precedence stated instead.
    """
    tokens = expression.split()
    operands, ops = tokens[0::2], tokens[1::2]
    if len(ops) == 1:
        return f"What is {_WORDS[ops[0]].format(a=operands[0], b=operands[1])}?"
    if "*" not in ops[1:]:
        steps = [_STEP_WORDS[op].format(b=b) for op, b in zip(ops, operands[1:])]
        return f"Start with {operands[0]}, {', '.join(steps[:-1])}, then {steps[-1]}. What is the result?"
    spoken = " ".join({"+": "plus", "-": "minus", "*": "times"}.get(t, t) for t in tokens)
    return f"What is {spoken}, with multiplication done before addition and subtraction?"


def carries(expression: str) -> bool:
    """Whether adding the operands of a ``+``-only expression carries in some column."""
    operands = [int(t) for t in expression.split()[0::2]]
    column = 1
    while column <= max(operands):
        if sum(v // column % 10 for v in operands) >= 10:
            return True
        column *= 10
    return False


def solved_examples(pool: list[Problem], problem: Problem, shots: int) -> str:
    """The first ``shots`` solved examples of ``pool`` whose answer is not ``problem``'s: no prompt shows the
    answer of the problem it asks, even by coincidence."""
    chosen = [e for e in pool if e.answer != problem.answer and e.id != problem.id][:shots]
    return "".join(f"{e.question}\nThe final answer is {e.answer}.\n\n" for e in chosen)


def _check_options(digits: int, min_digits: int | None, operations: str, steps: int,
                   split: str, n: int | None, answer_format: str, phrasing: str, carry: str = "any",
                   shots: int = 0) -> int:
    if carry not in CARRIES:
        raise ConfigError(f"arithmetic: carry must be one of {', '.join(CARRIES)}, got {carry!r}")
    if carry != "any" and set(operations) != {"+"}:
        raise ConfigError(f"arithmetic: carry {carry!r} needs operations '+' only, got {operations!r}")
    if not isinstance(shots, int) or not 0 <= shots <= 8:
        raise ConfigError(f"arithmetic: shots must be an integer in 0..8, got {shots!r}")
    if split not in SPLITS:
        raise ConfigError(f"arithmetic: unknown split {split!r}; choose one of: {', '.join(SPLITS)}")
    if answer_format not in ANSWER_FORMATS:
        raise ConfigError(f"arithmetic: answer_format must be one of {', '.join(ANSWER_FORMATS)}, "
                          f"got {answer_format!r}")
    if phrasing not in PHRASINGS:
        raise ConfigError(f"arithmetic: phrasing must be one of {', '.join(PHRASINGS)}, got {phrasing!r}")
    if not isinstance(digits, int) or not 1 <= digits <= 12:
        raise ConfigError(f"arithmetic: digits must be an integer in 1..12, got {digits!r}")
    low = digits if min_digits is None else min_digits
    if not isinstance(low, int) or not 1 <= low <= digits:
        raise ConfigError(f"arithmetic: min_digits must be an integer in 1..digits ({digits}), got {min_digits!r}")
    if not operations or any(op not in OPERATIONS for op in operations):
        raise ConfigError(f"arithmetic: operations must be a non-empty string of {OPERATIONS!r}, got {operations!r}")
    if not isinstance(steps, int) or not 1 <= steps <= 10:
        raise ConfigError(f"arithmetic: steps must be an integer in 1..10, got {steps!r}")
    if n is not None and (not isinstance(n, int) or n < 1):
        raise ConfigError(f"arithmetic: n must be a positive integer, got {n!r}")
    return low


def _operand(rng: random.Random, low: int, high: int) -> int:
    n_digits = rng.randint(low, high)
    return rng.randint(10 ** (n_digits - 1) if n_digits > 1 else 0, 10**n_digits - 1)


def _expression(rng: random.Random, low: int, high: int, operations: str, steps: int) -> str:
    parts = [str(_operand(rng, low, high))]
    for _ in range(steps):
        parts += [rng.choice(operations), str(_operand(rng, low, high))]
    return " ".join(parts)


def _capacity(low: int, high: int, operations: str, steps: int) -> int:
    operands = sum(10**d - (10 ** (d - 1) if d > 1 else 0) for d in range(low, high + 1))
    return operands ** (steps + 1) * len(operations) ** steps


def make_task(
    split: str = "train",
    n: int | None = None,
    digits: int = 2,
    min_digits: int | None = 1,
    operations: str = "+",
    steps: int = 1,
    seed: int = 0,
    instruction: str | None = None,
    correction_instruction: str | None = None,
    answer_format: str = "strict",
    phrasing: str = "symbols",
    carry: str = "any",
    shots: int = 0,
) -> Task:
    """Build the arithmetic task.

    Args:
        split: ``train``, ``validation`` or ``test``; no two share an expression.
        n: number of problems (default 2000 for train, 500 for validation and test); capped
            by how many distinct expressions the split has.
        digits: maximum digits per operand.
        min_digits: minimum digits per operand (default 1: operands 0..99 with
            the default ``digits=2``, where the default model scores about 30%
            greedy at attempt 1).
        operations: which of ``+-*`` may appear.
        steps: operations per expression (``steps + 1`` operands).
        seed: drawing seed; the same options always give the same problems.
        instruction: attempt-1 instruction (default: ``ARITHMETIC_INSTRUCTION``).
        correction_instruction: the self-correction turn (default: the paper's wording).
        answer_format: ``strict`` (only the instructed "The final answer is N" / ``\\boxed{N}`` counts)
            or ``lenient`` (else the last number); see the module docstring.
        phrasing: ``symbols`` ("What is 14 + 89?") or ``words`` ("What is the sum of 14 and 89?").
        carry: ``any``, ``none`` (no column of the addition carries) or ``some`` (at least one does);
            ``+`` only.
        shots: solved training-split examples shown before the question (0..8; never the problem itself).
    """
    low = _check_options(digits, min_digits, operations, steps, split, n, answer_format, phrasing, carry, shots)
    wanted = n if n is not None else (2000 if split == "train" else 500)
    # A tenth of all expressions hash into each of test and validation.
    share = 0.8 if split == "train" else 0.1
    wanted = min(wanted, int(_capacity(low, digits, operations, steps) * share * 0.8) or 1)

    words = phrasing == "words"

    def draw(rng: random.Random, count: int, wanted_split: str, seen: set[str]) -> list[Problem]:
        problems: list[Problem] = []
        attempts = 0
        while len(problems) < count and attempts < count * 200:
            attempts += 1
            expr = _expression(rng, low, digits, operations, steps)
            if expr in seen or split_of(expr) != wanted_split or (carry != "any" and carries(expr) != (carry == "some")):
                continue
            seen.add(expr)
            problems.append(Problem(id=("words:" if words else "") + expr.replace(" ", ""),
                                    question=in_words(expr) if words else f"What is {expr}?",
                                    answer=str(eval(expr, {"__builtins__": {}}))))  # digits and + - * only
        return problems

    # The carry filter is part of the seed string only when it is on, so the default problems stay the same.
    tag = f"{low}:{digits}:{operations}:{steps}" + (f":carry={carry}" if carry != "any" else "")
    seen: set[str] = set()
    problems = draw(random.Random(f"arithmetic:{seed}:{split}:{tag}"), wanted, split, seen)
    # The examples: training problems drawn with their own seed, never one of the problems asked.
    pool = draw(random.Random(f"arithmetic:shots:{tag}"), shots + 8, "train", seen) if shots else []
    instruction = ARITHMETIC_INSTRUCTION if instruction is None else instruction

    def format_prompt(problem: Problem) -> str:
        return f"{instruction}\n\n{solved_examples(pool, problem, shots)}{problem.question}"

    extract = extract_strict_answer if answer_format == "strict" else extract_integer_answer

    def verify(completion: str, problem: Problem) -> float:
        return 1.0 if extract(completion) == problem.answer else 0.0

    def verify_lenient(completion: str, problem: Problem) -> float:
        return 1.0 if extract_integer_answer(completion) == problem.answer else 0.0

    return Task(
        name="arithmetic",
        problems=problems,
        format_prompt=format_prompt,
        correction_instruction=ARITHMETIC_CORRECTION if correction_instruction is None else correction_instruction,
        verify=verify,
        extract_answer=extract,
        follows_format=follows_format,
        lenient_verify=verify_lenient,
        lenient_answer=extract_integer_answer,
        splits=SPLITS,
        options=dict(split=split, n=n, digits=digits, min_digits=min_digits, operations=operations,
                     steps=steps, seed=seed, answer_format=answer_format, phrasing=phrasing,
                     # recorded only when set, so the runs and checkpoints made before these knobs keep
                     # their task fingerprint (a resume compares it)
                     **({"carry": carry} if carry != "any" else {}), **({"shots": shots} if shots else {})),
    )
