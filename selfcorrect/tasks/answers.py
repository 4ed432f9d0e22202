"""Final-answer extraction and equivalence for math-style tasks.

Two separate jobs:

* :func:`extract_final_answer` reads *one* answer string out of free text
  (a model completion or a reference solution) with a small, fixed set of
  rules — it never judges correctness;
* :func:`answers_equivalent` decides whether two answer strings denote the
  same mathematical object.  All the mathematics is delegated to the
  ``math-verify`` library; this module only feeds it well-formed input.

:func:`math_reward` combines the two into the 0/1 verifier used by
:mod:`selfcorrect.tasks.math`.
"""

from __future__ import annotations

import re
import threading

from math_verify import parse, verify

__all__ = [
    "extract_final_answer",
    "extract_stated_answer",
    "extract_gsm8k_answer",
    "answers_equivalent",
    "math_reward",
]

# --------------------------------------------------------------------------
# Extraction
# --------------------------------------------------------------------------

# ``\boxed{`` / ``\fbox{`` — the brace-delimited content is read by hand below
# because regular expressions cannot balance nested braces (``\boxed{\frac{1}{2}}``).
_BOXED_OPEN = re.compile(r"\\(?:boxed|fbox)\s*\{")
# ``\boxed 5`` — the brace-less form that occurs in a few MATH solutions.
_BOXED_BARE = re.compile(r"\\boxed +([^\s${}]+)")
# The paper's answer format: "Final Answer: The final answer is $x$. I hope it is correct."
# The answer may start on the next line, so ``\s*`` spans newlines; it ends at
# the end of its line.  The phrase and its answer are matched separately so
# that a phrase repeated on one line ("... is 1. Wait, the final answer is 2.")
# still yields the last one.
_FINAL_ANSWER_PHRASE = re.compile(r"final answer is", re.IGNORECASE)
_REST_OF_LINE = re.compile(r"\s*:?\s*([^\n]*)")
_HOPE_SUFFIX = re.compile(r"[\s.,;]*I hope it is correct\W*$", re.IGNORECASE)
# GSM8K reference solutions end with "#### 72".
_GSM8K_ANSWER = re.compile(r"####[ \t]*([^\n]*)")
# Pairs of math delimiters that may wrap a whole answer, longest first so that
# ``$$x$$`` is not read as ``$`` + ``$x$`` + ``$``.
_MATH_DELIMITERS = (("$$", "$$"), ("$", "$"), (r"\(", r"\)"), (r"\[", r"\]"))


def extract_final_answer(text: str) -> str | None:
    """Read the final answer from free text, or ``None`` when there is none.

    The rules are tried in this order and the first that yields a non-empty
    answer wins (within a rule, the *last* occurrence in the text is used,
    because models restate and revise before committing):

    1. the last complete ``\\boxed{...}`` or ``\\fbox{...}`` (nested braces
       balanced; an unterminated box, e.g. from a truncated generation, is
       ignored), or a brace-less ``\\boxed 5``;
    2. the last "The final answer is X" (case-insensitive, to the end of that
       line), with a trailing "I hope it is correct." and a trailing period
       removed and a surrounding ``$...$``, ``$$...$$``, ``\\(...\\)`` or
       ``\\[...\\]`` stripped;
    3. the last GSM8K-style ``#### X`` (to the end of that line).

    The answer is returned stripped of surrounding whitespace; no other
    normalisation is done (that is :func:`answers_equivalent`'s job).
    """
    for rule in (_last_boxed, _last_final_answer_phrase, extract_gsm8k_answer):
        answer = rule(text)
        if answer:
            return answer
    return None


def extract_stated_answer(text: str) -> str | None:
    """The answer of the *instructed* form only: rule 1 (``\\boxed{...}``) or rule 2 ("The final answer
    is X") of :func:`extract_final_answer`, never a ``#### X`` marker; ``None`` when the text has neither.
    The strict readers and the format-compliance metric use it."""
    for rule in (_last_boxed, _last_final_answer_phrase):
        answer = rule(text)
        if answer:
            return answer
    return None


def extract_gsm8k_answer(text: str) -> str | None:
    """The text after the last ``####`` marker (GSM8K format), or ``None``."""
    matches = _GSM8K_ANSWER.findall(text)
    if not matches:
        return None
    return matches[-1].strip() or None


def extract_boxed_answer(text: str) -> str | None:
    """Rule 1 of :func:`extract_final_answer` alone: the content of the last complete ``\\boxed{...}`` or
    ``\\fbox{...}`` (or a brace-less ``\\boxed x``), or ``None``.  Reads a MATH-style reference solution's
    answer without mistaking its working for one."""
    return _last_boxed(text)


def _last_boxed(text: str) -> str | None:
    """Content of the last complete ``\\boxed{}``/``\\fbox{}`` (or ``\\boxed x``)."""
    best_start, best_answer = -1, None
    for match in _BOXED_OPEN.finditer(text):
        content = _balanced_content(text, match.end())
        if content is not None and content.strip():
            best_start, best_answer = match.start(), content.strip()
    for match in _BOXED_BARE.finditer(text):
        if match.start() > best_start:
            best_start, best_answer = match.start(), match.group(1)
    return best_answer


def _balanced_content(text: str, start: int) -> str | None:
    """Text from ``start`` up to the brace closing an already-opened ``{``.

    Escaped braces (``\\{``, ``\\}``) are LaTeX set delimiters, not grouping,
    so they do not count.  Returns ``None`` if the group is never closed.
    """
    depth = 1
    i = start
    while i < len(text):
        char = text[i]
        if char == "\\":
            i += 2  # skip the escaped character, whatever it is
            continue
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                return text[start:i]
        i += 1
    return None


def _last_final_answer_phrase(text: str) -> str | None:
    """The X of the last "The final answer is X", cleaned (see rule 2)."""
    phrases = list(_FINAL_ANSWER_PHRASE.finditer(text))
    if not phrases:
        return None
    rest = _REST_OF_LINE.match(text, phrases[-1].end()).group(1)
    answer = _HOPE_SUFFIX.sub("", rest).strip()
    answer = answer.rstrip(".").strip()
    return _strip_math_delimiters(answer) or None


def _strip_math_delimiters(answer: str) -> str:
    """Remove one pair of math delimiters that encloses the *whole* answer.

    ``$x$ and $y$`` is left alone: its outer dollars belong to two different
    formulas.
    """
    for left, right in _MATH_DELIMITERS:
        if len(answer) > len(left) + len(right) and answer.startswith(left) and answer.endswith(right):
            inner = answer[len(left) : -len(right)]
            if left in ("$", "$$") and _has_unescaped_dollar(inner):
                continue
            return inner.strip()
    return answer


def _has_unescaped_dollar(text: str) -> bool:
    return re.search(r"(?<!\\)\$", text) is not None


# --------------------------------------------------------------------------
# Equivalence
# --------------------------------------------------------------------------

# math-verify guards parsing and comparison with ``signal.alarm`` timeouts.
# Signals can only be installed from the main thread: anywhere else
# ``parse``/``verify`` raise ``ValueError`` unless the timeout is ``None``.
# We therefore keep math-verify's protection in the main thread (where a
# pathological answer such as ``9^{9^{9^9}}`` would otherwise hang sympy) and
# switch it off in worker threads.  Callers who need a hard time limit in
# parallel code should verify in a process pool (each worker process has its
# own main thread).
_TIMEOUT_SECONDS = 5


def _timeout_for_this_thread() -> int | None:
    if threading.current_thread() is threading.main_thread():
        return _TIMEOUT_SECONDS
    return None


def _parse_answer(answer: str, timeout: int | None) -> list:
    """Parse a bare answer with math-verify.

    math-verify *extracts* answers from text before parsing them; wrapping a
    bare answer in ``\\boxed{}`` makes its highest-priority extractor take the
    whole string as one LaTeX expression, so ``1,000``, ``\\frac12``, ``0.5``
    and ``(1, 2]`` all parse (``\\boxed{$x$}`` works too).
    """
    return parse(f"\\boxed{{{answer}}}", parsing_timeout=timeout)


def answers_equivalent(pred: str, gold: str) -> bool:
    """Whether ``pred`` denotes the same answer as ``gold``, as math-verify decides.

    Both are bare answers (e.g. from :func:`extract_final_answer`), LaTeX or
    plain text.  ``gold`` is passed to math-verify as the gold side because
    its comparison is deliberately asymmetric (e.g. ``x=3`` is accepted for a
    gold ``3``).  Empty or unparsable answers are never equivalent.  Works in
    any thread (see ``_timeout_for_this_thread``).
    """
    if not pred.strip() or not gold.strip():
        return False
    timeout = _timeout_for_this_thread()
    gold_parsed = _parse_answer(gold, timeout)
    pred_parsed = _parse_answer(pred, timeout)
    if not gold_parsed or not pred_parsed:
        return False
    return bool(verify(gold_parsed, pred_parsed, timeout_seconds=timeout))


def math_reward(completion: str, gold: str) -> float:
    """1.0 iff a final answer can be extracted from ``completion`` and equals ``gold``."""
    answer = extract_final_answer(completion)
    if answer is None:
        return 0.0
    return 1.0 if answers_equivalent(answer, gold) else 0.0
