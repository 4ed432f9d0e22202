"""Final-answer extraction and math-verify-backed equivalence."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from selfcorrect.tasks.answers import (
    answers_equivalent,
    extract_final_answer,
    extract_gsm8k_answer,
    math_reward,
)

# ---------------------------------------------------------------- extraction


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # nested braces inside the box are balanced
        (r"So the answer is $\boxed{\frac{\sqrt{3}}{2}}$.", r"\frac{\sqrt{3}}{2}"),
        # several boxes: the last one wins
        (r"First \boxed{1}, then on reflection \boxed{2}.", "2"),
        (r"\fbox{7} is it", "7"),
        (r"Thus \boxed 5$.", "5"),
        # escaped braces are set delimiters, not grouping
        (r"\boxed{\{1, 2\}}", r"\{1, 2\}"),
        # an unterminated (truncated) box is ignored; the earlier complete one counts
        (r"\boxed{1} and then \boxed{\frac{2", "1"),
        # the paper's answer format
        (
            r"Final Answer: The final answer is $\frac{1}{2}$. I hope it is correct.",
            r"\frac{1}{2}",
        ),
        ("The final answer is 3.5.", "3.5"),
        ("the final answer is 42", "42"),
        ("The final answer is:\n$$x^2$$", "x^2"),
        (r"The final answer is \(7\). I hope it is correct.", "7"),
        # last phrase wins
        ("The final answer is 1. Wait. The final answer is 2.", "2"),
        # two formulas: the outer dollars are not one pair, keep the text
        ("The final answer is $x$ and $y$.", "$x$ and $y$"),
        # boxed beats the phrase even when the phrase comes later
        (r"\boxed{3}. The final answer is 4.", "3"),
        # GSM8K
        ("She has 3 + 4 = 7 apples.\n#### 7", "7"),
        ("#### 1,000", "1,000"),
        ("#### 5\n#### 6", "6"),
    ],
)
def test_extract_final_answer(text: str, expected: str) -> None:
    assert extract_final_answer(text) == expected


@pytest.mark.parametrize(
    "text",
    ["", "I am not sure.", r"\boxed{}", r"\boxed{12", "The final answer is", "####   "],
)
def test_extract_final_answer_none(text: str) -> None:
    assert extract_final_answer(text) is None


def test_extract_gsm8k_answer() -> None:
    assert extract_gsm8k_answer("Natalia sold 48/2 = <<48/2=24>>24 clips.\n#### 72") == "72"
    assert extract_gsm8k_answer("no marker") is None


# ---------------------------------------------------------------- equivalence


@pytest.mark.parametrize(
    ("pred", "gold"),
    [
        ("0.5", r"\frac{1}{2}"),
        ("1/2", r"\frac{1}{2}"),
        (r"\frac12", "0.5"),
        (r"\dfrac{1}{2}", "1/2"),
        ("1,000", "1000"),
        ("1000", "1,000"),
        ("72.0", "72"),
        ("x=3", "3"),
        (r"\frac{\sqrt{2}}{2}", r"\sqrt{2}/2"),
        ("(x+1)^2", "x^2+2x+1"),
        (r"(1, 2]", r"(1,2]"),
        (r"\{2, 1\}", r"\{1,2\}"),
        (r"(-\infty, 3) \cup (4, \infty)", r"(-\infty,3)\cup(4,\infty)"),
        (r"\$18", "18"),
        (r"\text{Monday}", "Monday"),
    ],
)
def test_equivalent(pred: str, gold: str) -> None:
    assert answers_equivalent(pred, gold)


@pytest.mark.parametrize(
    ("pred", "gold"),
    [
        ("4", "5"),
        ("-3", "3"),
        ("0.51", r"\frac{1}{2}"),
        ("100", "1,000"),
        (r"[1, 2)", r"(1, 2]"),
        (r"\{1, 3\}", r"\{1, 2\}"),
        ("", "5"),
        ("5", ""),
        ("   ", "5"),
    ],
)
def test_not_equivalent(pred: str, gold: str) -> None:
    assert not answers_equivalent(pred, gold)


# ---------------------------------------------------------------- reward


def test_math_reward() -> None:
    assert math_reward(r"Half of it: \boxed{\frac{1}{2}}", "0.5") == 1.0
    assert (
        math_reward("Final Answer: The final answer is $1,000$. I hope it is correct.", "1000")
        == 1.0
    )
    assert math_reward(r"\boxed{3}", "4") == 0.0
    # no extractable answer: the right number in prose does not count
    assert math_reward("I think it is 4", "4") == 0.0


def test_reward_in_worker_threads() -> None:
    """math-verify's signal timeouts only work in the main thread; ours must not care."""
    cases = [
        (r"\boxed{\frac{1}{2}}", "0.5", 1.0),
        ("#### 1,000", "1000", 1.0),
        ("The final answer is $x=3$.", "3", 1.0),
        (r"\boxed{7}", "8", 0.0),
    ] * 4

    def run(case: tuple[str, str, float]) -> tuple[float, float, bool]:
        completion, gold, expected = case
        in_worker = threading.current_thread() is not threading.main_thread()
        return math_reward(completion, gold), expected, in_worker

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(run, cases))
    assert all(in_worker for _, _, in_worker in results)
    assert [got for got, _, _ in results] == [expected for _, expected, _ in results]


def test_equivalence_in_worker_thread_matches_main_thread() -> None:
    pairs = [("1/2", "0.5"), ("2", "3"), (r"(1,2]", r"(1, 2]")]
    main = [answers_equivalent(p, g) for p, g in pairs]
    with ThreadPoolExecutor(max_workers=2) as pool:
        worker = list(pool.map(lambda pg: answers_equivalent(*pg), pairs))
    assert worker == main == [True, False, True]


@pytest.mark.long
def test_pathological_answer_times_out_in_main_thread() -> None:
    """In the main thread math-verify's timeout still guards against sympy blow-ups."""
    assert not answers_equivalent("9^{9^{9^{9}}}", "1")
