"""String tasks: copy, reverse, sort or count the characters of a short string -- errors that are slips.

Arithmetic asks a 135M model for knowledge it mostly lacks, so its second attempt has nothing to re-check.
Here every problem shows its source string, and stays in the context of attempt 2: a wrong first answer
("48231" for the copy of 48213) can be found and fixed by reading the source again, which is the kind of
error self-correction can learn to fix at small scale.

A problem is an operation on a string of ``min_length``..``length`` characters of an ``alphabet``
(``digits`` or upper-case ``letters``):

* ``copy`` -- "Copy this string exactly: 48213" -> ``48213``;
* ``reverse`` -- "Write this string backwards: 48213" -> ``31284``;
* ``sort`` -- "Sort the characters of this string in ascending order: 48213" -> ``12348``;
* ``count`` -- "How many times does 7 appear in this string: 3747172?" -> ``3``.

``phrasing="spaced"`` shows the source with its characters separated by spaces (``4 8 2 1 3``), so that
every character is its own token for most tokenizers; ``plain`` shows it as one word.  ``shots`` puts that
many solved examples (training-split problems of the same operation, never the problem itself) before the
question: with none, a small model often gets the answer *form* wrong ("S is the final answer."), which
then dominates every reward.

**Splits.** Like :mod:`~selfcorrect.tasks.arithmetic`: a problem's split is fixed by a hash of its id
(``copy:48213``), whatever the seed or size, so no split shares a problem with another.

**Reading the answer.** ``answer_format="strict"`` (default) reads only the instructed form ("The final
answer is S." or ``\\boxed{S}``); ``lenient`` also accepts, failing that, the last run of the alphabet's
characters in the reply (the last integer for ``count``).  Either way the answer is compared after
removing surrounding quotes, ``$``, a final period, and spaces or commas between characters
(``4, 8, 2`` is ``482``); letters are compared in upper case.
"""

from __future__ import annotations

import random
import re

from ..errors import ConfigError
from .answers import extract_stated_answer
from .arithmetic import extract_integer_answer, extract_strict_answer, solved_examples, split_of
from .base import Problem, Task
from .prompts import STRING_CORRECTION, STRING_CORRECTION_REDO, STRING_INSTRUCTION

SPLITS = ("train", "validation", "test")
OPERATIONS = ("copy", "reverse", "sort", "count")
ALPHABETS = {"digits": "0123456789", "letters": "ABCDEFGHIJKLMNOPQRSTUVWXYZ"}
ANSWER_FORMATS = ("strict", "lenient")
PHRASINGS = ("plain", "spaced")
CORRECTIONS = {"paper": STRING_CORRECTION, "redo": STRING_CORRECTION_REDO}
_QUESTIONS = {
    "copy": "Copy this string exactly: {s}",
    "reverse": "Write this string backwards: {s}",
    "sort": "Sort the characters of this string in ascending order: {s}",
    "count": "How many times does {c} appear in this string: {s}?",
}
_RUNS = {"digits": re.compile(r"[0-9](?:[ ,]{0,2}[0-9])*"), "letters": re.compile(r"[A-Z](?:[ ,]{0,2}[A-Z])*")}
_SEPARATORS = re.compile(r"[\s,]+")


def canonical(text: str | None, alphabet: str) -> str | None:
    """``text`` as a string of ``alphabet``'s characters (quotes, ``$``, a final period and separators between
    characters removed; letters upper-cased), or ``None`` when anything else is left."""
    if text is None:
        return None
    text = text.strip().rstrip(".").strip().strip("\"'`$").strip()
    text = _SEPARATORS.sub("", text)
    if alphabet == "letters":
        text = text.upper()
    return text if text and all(ch in ALPHABETS[alphabet] for ch in text) else None


def strict_reader(alphabet: str):
    """The answer stated in the instructed form, canonical, or ``None``."""
    def read(completion: str) -> str | None:
        return canonical(extract_stated_answer(completion), alphabet)
    return read


def lenient_reader(alphabet: str):
    """The stated answer, else the last run of the alphabet's characters in the text."""
    strict = strict_reader(alphabet)

    def read(completion: str) -> str | None:
        stated = strict(completion)
        if stated is not None:
            return stated
        runs = _RUNS[alphabet].findall(completion)
        return canonical(runs[-1], alphabet) if runs else None
    return read


def _answer(operation: str, source: str, target: str) -> str:
    if operation == "copy":
        return source
    if operation == "reverse":
        return source[::-1]
    if operation == "sort":
        return "".join(sorted(source))
    return str(source.count(target))


def _draw(rng: random.Random, operation: str, chars: str, low: int, high: int) -> tuple[str, str]:
    """(source, target): for ``count``, a target character and a source where it appears about a third of
    the time (uniform characters would make the answer almost always 0 or 1)."""
    size = rng.randint(low, high)
    if operation != "count":
        return "".join(rng.choice(chars) for _ in range(size)), ""
    target = rng.choice(chars)
    others = chars.replace(target, "")
    return "".join(target if rng.random() < 1 / 3 else rng.choice(others) for _ in range(size)), target


def _check_options(split: str, n: int | None, operation: str, length: int, min_length: int | None,
                   alphabet: str, shots: int, answer_format: str, phrasing: str, correction: str) -> int:
    if correction not in CORRECTIONS:
        raise ConfigError(f"strings: correction must be one of {', '.join(CORRECTIONS)}, got {correction!r}")
    if split not in SPLITS:
        raise ConfigError(f"strings: unknown split {split!r}; choose one of: {', '.join(SPLITS)}")
    if operation not in OPERATIONS:
        raise ConfigError(f"strings: operation must be one of {', '.join(OPERATIONS)}, got {operation!r}")
    if alphabet not in ALPHABETS:
        raise ConfigError(f"strings: alphabet must be one of {', '.join(ALPHABETS)}, got {alphabet!r}")
    if answer_format not in ANSWER_FORMATS:
        raise ConfigError(f"strings: answer_format must be one of {', '.join(ANSWER_FORMATS)}, got {answer_format!r}")
    if phrasing not in PHRASINGS:
        raise ConfigError(f"strings: phrasing must be one of {', '.join(PHRASINGS)}, got {phrasing!r}")
    if not isinstance(length, int) or not 2 <= length <= 40:
        raise ConfigError(f"strings: length must be an integer in 2..40, got {length!r}")
    low = length if min_length is None else min_length
    if not isinstance(low, int) or not 2 <= low <= length:
        raise ConfigError(f"strings: min_length must be an integer in 2..length ({length}), got {min_length!r}")
    if not isinstance(shots, int) or not 0 <= shots <= 8:
        raise ConfigError(f"strings: shots must be an integer in 0..8, got {shots!r}")
    if n is not None and (not isinstance(n, int) or n < 1):
        raise ConfigError(f"strings: n must be a positive integer, got {n!r}")
    return low


def make_task(
    split: str = "train",
    n: int | None = None,
    operation: str = "copy",
    length: int = 5,
    min_length: int | None = None,
    alphabet: str = "digits",
    seed: int = 0,
    shots: int = 0,
    instruction: str | None = None,
    correction_instruction: str | None = None,
    answer_format: str = "strict",
    phrasing: str = "plain",
    correction: str = "paper",
) -> Task:
    """Copy, reverse, sort or count the characters of a string (errors are slips; see the module docstring).

    Args:
        split: ``train``, ``validation`` or ``test``; no two share a problem.
        n: number of problems (default 2000 for train, 500 for validation and test), capped by how many
            distinct problems the split has.
        operation: ``copy``, ``reverse``, ``sort`` or ``count``.
        length: maximum characters in the source string (2..40).
        min_length: minimum characters (default: ``length``, every string equally long).
        alphabet: ``digits`` (0-9) or ``letters`` (A-Z).
        seed: drawing seed; the same options always give the same problems.
        shots: solved training-split examples shown before the question (0..8).
        instruction: attempt-1 instruction (default: ``STRING_INSTRUCTION``, or its number form for count).
        correction_instruction: the self-correction turn (default: the paper's wording, our answer form);
            like the paper's, it never says whether attempt 1 was right.
        answer_format: ``strict`` (only "The final answer is S." / ``\\boxed{S}``) or ``lenient`` (else the
            last run of the alphabet's characters).
        phrasing: ``plain`` (``48213``) or ``spaced`` (``4 8 2 1 3``).
        correction: the default correction turn: ``paper`` (the paper's "... correct the error, if any, and
            rewrite the solution") or ``redo`` ("... read the question again and solve it from the start");
            neither says whether attempt 1 was right.  ``correction_instruction`` replaces both.
    """
    low = _check_options(split, n, operation, length, min_length, alphabet, shots, answer_format, phrasing,
                         correction)
    chars = ALPHABETS[alphabet]
    capacity = sum(len(chars) ** size for size in range(low, length + 1)) * (len(chars) if operation == "count" else 1)
    wanted = n if n is not None else (2000 if split == "train" else 500)
    wanted = min(wanted, int(capacity * (0.8 if split == "train" else 0.1) * 0.8) or 1)

    def show(source: str) -> str:
        return " ".join(source) if phrasing == "spaced" else source

    def problem(source: str, target: str) -> Problem:
        pid = f"{operation}:{target + ':' if target else ''}{source}"
        return Problem(id=pid, question=_QUESTIONS[operation].format(s=show(source), c=target),
                       answer=_answer(operation, source, target),
                       meta={"source": source, "operation": operation, "length": len(source)})

    def draw(tag: str, count: int, wanted_split: str, exclude: set[str]) -> list[Problem]:
        rng = random.Random(f"strings:{tag}:{operation}:{alphabet}:{low}:{length}")
        out: list[Problem] = []
        tries = 0
        while len(out) < count and tries < count * 200:
            tries += 1
            p = problem(*_draw(rng, operation, chars, low, length))
            if p.id in exclude or split_of(p.id) != wanted_split:
                continue
            exclude.add(p.id)
            out.append(p)
        return out

    problems = draw(f"{seed}:{split}", wanted, split, set())
    # The examples: training problems drawn with their own seed, never one of the problems asked.
    pool = draw("shots", shots + 8, "train", {p.id for p in problems}) if shots else []

    number = operation == "count"
    if instruction is None:
        instruction = STRING_INSTRUCTION.replace("S is the string", "N is the number").replace(
            "is S.", "is N.") if number else STRING_INSTRUCTION

    def format_prompt(p: Problem) -> str:
        return f"{instruction}\n\n{solved_examples(pool, p, shots)}{p.question}"

    strict = extract_strict_answer if number else strict_reader(alphabet)
    lenient = extract_integer_answer if number else lenient_reader(alphabet)
    extract = strict if answer_format == "strict" else lenient

    def verify(completion: str, p: Problem) -> float:
        return 1.0 if extract(completion) == p.answer else 0.0

    def verify_lenient(completion: str, p: Problem) -> float:
        return 1.0 if lenient(completion) == p.answer else 0.0

    turn = CORRECTIONS[correction]
    if number:
        turn = turn.replace("S is the string", "N is the number").replace("is S.", "is N.")
    return Task(
        name="strings",
        problems=problems,
        format_prompt=format_prompt,
        correction_instruction=turn if correction_instruction is None else correction_instruction,
        verify=verify,
        extract_answer=extract,
        follows_format=lambda completion: strict(completion) is not None,
        lenient_verify=verify_lenient,
        lenient_answer=lenient,
        splits=SPLITS,
        options=dict(split=split, n=n, operation=operation, length=length, min_length=min_length,
                     alphabet=alphabet, seed=seed, shots=shots, answer_format=answer_format, phrasing=phrasing,
                     correction=correction),
    )
