"""The procedural arithmetic task: splits, determinism, knobs, answer parsing, reward, bad options."""

from __future__ import annotations

import re

import pytest

from selfcorrect.errors import ConfigError
from selfcorrect.tasks.arithmetic import extract_integer_answer, in_words, make_task, parse_integer, split_of
from selfcorrect.tasks.base import Problem
from selfcorrect.tasks.prompts import ARITHMETIC_CORRECTION, ARITHMETIC_INSTRUCTION

QUESTION = re.compile(r"^What is (.+)\?$")


def expression(problem: Problem) -> str:
    match = QUESTION.match(problem.question)
    assert match, problem.question
    return match.group(1)


def evaluate(expr: str) -> int:
    """Independent evaluator (no ``eval``): ``*`` binds tighter than ``+`` and ``-``."""
    tokens = expr.split(" ")
    terms: list[int] = [int(tokens[0])]
    signs: list[int] = [1]
    for op, operand in zip(tokens[1::2], tokens[2::2]):
        if op == "*":
            terms[-1] *= int(operand)
        else:
            terms.append(int(operand))
            signs.append(1 if op == "+" else -1)
    return sum(s * t for s, t in zip(signs, terms))


def operands(problem: Problem) -> list[str]:
    return expression(problem).split(" ")[0::2]


def operators(problem: Problem) -> list[str]:
    return expression(problem).split(" ")[1::2]


# ---------------------------------------------------------------- splits


@pytest.mark.parametrize(
    ("train_kwargs", "test_kwargs"),
    [
        (dict(seed=0), dict(seed=0)),
        (dict(seed=1, n=3000), dict(seed=7, n=800)),
        (dict(seed=3, digits=1, min_digits=1), dict(seed=4, digits=1, min_digits=1)),
        (dict(seed=5, operations="+-*", steps=2, n=500), dict(seed=6, operations="+-*", steps=2, n=500)),
    ],
)
def test_splits_never_overlap(train_kwargs: dict, test_kwargs: dict) -> None:
    train = make_task(split="train", **train_kwargs)
    validation = make_task(split="validation", **test_kwargs)
    test = make_task(split="test", **test_kwargs)
    assert train.problems and validation.problems and test.problems
    for a, b in ((train, test), (train, validation), (validation, test)):
        assert not {p.id for p in a.problems} & {p.id for p in b.problems}
        assert not {p.question for p in a.problems} & {p.question for p in b.problems}
    for task in (train, validation, test):
        assert all(split_of(expression(p)) == task.options["split"] for p in task.problems)
        assert task.splits == ("train", "validation", "test")


def test_split_of_is_a_fixed_hash() -> None:
    assert split_of("22 + 24") == split_of("22 + 24")
    # about a tenth of all expressions are test expressions, a tenth validation ones
    exprs = [f"{a} + {b}" for a in range(10, 100) for b in range(10, 100)]
    for split in ("test", "validation"):
        share = sum(split_of(e) == split for e in exprs) / len(exprs)
        assert 0.08 < share < 0.12


def test_default_sizes_and_prompts() -> None:
    train, test = make_task(), make_task(split="test")
    assert (len(train), len(test)) == (2000, 500)
    assert train.name == "arithmetic"
    p = test.problems[0]
    assert test.first_prompt(p) == f"{ARITHMETIC_INSTRUCTION}\n\n{p.question}"
    assert test.correction_instruction == ARITHMETIC_CORRECTION
    assert test.options["split"] == "test" and test.options["digits"] == 2


def test_custom_prompts() -> None:
    task = make_task(n=2, instruction="Add.", correction_instruction="Try again.")
    assert task.first_prompt(task.problems[0]) == f"Add.\n\n{task.problems[0].question}"
    assert task.correction_instruction == "Try again."


# ---------------------------------------------------------------- determinism


def test_same_seed_same_problems() -> None:
    a = make_task(seed=3, n=50, operations="+-*", steps=2)
    b = make_task(seed=3, n=50, operations="+-*", steps=2)
    assert [(p.id, p.question, p.answer) for p in a.problems] == [(p.id, p.question, p.answer) for p in b.problems]


def test_different_seeds_differ() -> None:
    a = make_task(seed=0, n=50)
    b = make_task(seed=1, n=50)
    assert [p.id for p in a.problems] != [p.id for p in b.problems]
    assert len({p.id for p in a.problems} & {p.id for p in b.problems}) < 25


def test_ids_are_unique() -> None:
    task = make_task(n=3000, digits=3, min_digits=1, operations="+-*", steps=2)
    assert len({p.id for p in task.problems}) == len(task.problems) == 3000


# ---------------------------------------------------------------- knobs


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(),
        dict(digits=3),
        dict(digits=4, min_digits=2, operations="-", steps=3),
        dict(digits=2, operations="+-*", steps=4),
        dict(digits=5, operations="*"),
        dict(digits=1, min_digits=1, operations="+-*", steps=2, split="test"),
    ],
)
def test_answers_are_exact(kwargs: dict) -> None:
    task = make_task(n=200, **kwargs)
    assert task.problems
    for p in task.problems:
        assert p.answer == str(evaluate(expression(p)))
        assert p.id == expression(p).replace(" ", "")
        assert task.reward(f"The final answer is {p.answer}.", p) == 1.0


def test_digits_bound_operand_length() -> None:
    task = make_task(n=300, digits=4, min_digits=None)
    lengths = {len(x) for p in task.problems for x in operands(p)}
    assert lengths == {4}  # min_digits=None means exactly `digits` digits
    default = make_task(n=300, digits=2)
    assert {len(x) for p in default.problems for x in operands(p)} == {1, 2}  # default min_digits=1
    mixed = make_task(n=300, digits=4, min_digits=2)
    assert {len(x) for p in mixed.problems for x in operands(p)} == {2, 3, 4}
    # no leading zeros: an operand of k digits really has k digits
    assert all(x == "0" or not x.startswith("0") for p in mixed.problems for x in operands(p))


def test_operations_and_steps() -> None:
    only_minus = make_task(n=100, operations="-", steps=3)
    assert all(operators(p) == ["-", "-", "-"] for p in only_minus.problems)
    assert any(int(p.answer) < 0 for p in only_minus.problems)

    mixed = make_task(n=300, operations="+*", steps=2)
    seen = {op for p in mixed.problems for op in operators(p)}
    assert seen == {"+", "*"}
    assert all(len(operators(p)) == 2 for p in mixed.problems)


def test_n_and_capacity_cap() -> None:
    assert len(make_task(n=7)) == 7
    # 1-digit a + b: only 100 expressions exist, about 10 of them in the test split
    small = make_task(split="test", digits=1, min_digits=1, n=1000)
    assert 1 <= len(small) <= 10
    assert all(split_of(expression(p)) == "test" for p in small.problems)
    assert len({p.id for p in small.problems}) == len(small)


# ---------------------------------------------------------------- answer parsing


@pytest.mark.parametrize(
    ("completion", "expected"),
    [
        ("The final answer is 1,234.", "1234"),
        (r"\boxed{42}", "42"),
        (r"So the sum is $\boxed{-1,000}$.", "-1000"),
        ("23 + 58 = 81", "81"),
        ("-7", "-7"),
        ("The final answer is -7.", "-7"),
        ("The final answer is $12$. I hope it is correct.", "12"),
        ("The final answer is 12.0", "12"),
        ("#### 72", "72"),
        # the stated answer wins over later numbers ...
        ("The final answer is 9.\nCheck: 4 + 5 = 9, and 2 + 2 = 4", "9"),
        # ... and a later statement wins over an earlier one
        ("The final answer is 8. No wait. The final answer is 9.", "9"),
        # without a stated answer, the last number written counts
        ("First 10 + 20 = 30, then 30 + 5 = 35", "35"),
        ("It is 46.0", "46"),
        ("It is 1,234,567 in total", "1234567"),
        # a decimal is one number: "0.5" is not the integer 5
        ("It is 0.5", "0.5"),
        ("no number here", None),
        ("The final answer is eighty.", None),
        ("", None),
    ],
)
def test_extract_integer_answer(completion: str, expected: str | None) -> None:
    assert extract_integer_answer(completion) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [("1,234", 1234), ("-7.", -7), ("$42$", 42), ("3.0", 3), (" 5 ", 5), ("1{,}000", 1000),
     ("3.5", None), ("12abc", None), ("", None), (None, None), ("1,23", None)],
)
def test_parse_integer(text: str | None, expected: int | None) -> None:
    assert parse_integer(text) == expected


def test_reward_on_hand_made_completions() -> None:
    """The default (strict) reader scores only the instructed form; the lenient one also the last number."""
    strict, lenient = make_task(n=1), make_task(n=1, answer_format="lenient")
    p = Problem(id="23+58", question="What is 23 + 58?", answer="81")
    right = [
        "23 + 58 = 81. The final answer is 81.",
        r"$\boxed{81}$",
        "The final answer is 81.\nI double-checked: 80 + 1",  # stated answer beats trailing numbers
        "the final answer is: 81",
    ]
    unstated = ["Adding: 81", "23 + 58 = 81", "#### 81"]    # right number, not in the instructed form
    wrong = [
        "The final answer is 80.",
        "23 + 58 = 71",
        "The final answer is 81.5",  # not an integer
        "It is 0.81",
        "I don't know.",
        "",
        "The final answer is 81. The final answer is 82.",
    ]
    assert [strict.reward(c, p) for c in right] == [1.0] * len(right)
    assert [strict.reward(c, p) for c in unstated + wrong] == [0.0] * (len(unstated) + len(wrong))
    assert [lenient.reward(c, p) for c in right + unstated] == [1.0] * (len(right) + len(unstated))
    assert [lenient.reward(c, p) for c in wrong] == [0.0] * len(wrong)
    assert strict.rewards(right[:2] + unstated[:1] + wrong[:1], [p] * 4) == [1.0, 1.0, 0.0, 0.0]
    assert strict.extract_answer("so 81") is None and lenient.extract_answer("so 81") == "81"
    # Format compliance does not depend on the reader, nor on being right.
    for task in (strict, lenient):
        assert [task.follows_format(c) for c in ("The final answer is 80.", r"\boxed{7}", "Adding: 81", "#### 81",
                                                 "The final answer is eighty-one.")] == [True, True, False, False,
                                                                                          False]
    assert strict.verdicts(["23 + 58 = 81"], [p])[0].reason == "no answer in the instructed form"


def test_words_phrasing_asks_the_same_expressions() -> None:
    """phrasing=words: the same expressions (same split, same answers) asked in words, with their own ids."""
    symbols, words = (make_task(split="test", n=50, operations="+-*", steps=2, phrasing=ph)
                      for ph in ("symbols", "words"))
    assert [p.answer for p in symbols.problems] == [p.answer for p in words.problems]
    assert [p.id for p in words.problems] == [f"words:{p.id}" for p in symbols.problems]
    assert not any(any(op in p.question for op in "+*") for p in words.problems)
    assert in_words("14 + 89") == "What is the sum of 14 and 89?"
    assert in_words("89 - 14") == "What is 89 minus 14?"
    assert in_words("3 * 4 + 5") == "Start with 3, multiply by 4, then add 5. What is the result?"
    # Left to right would give 35 for 3 + 4 * 5 (oracle 23): spoken with the precedence instead.
    assert in_words("3 + 4 * 5") == "What is 3 plus 4 times 5, with multiplication done before addition and subtraction?"
    for p in words.problems:              # a chain told step by step is the oracle's value, left to right
        if p.question.startswith("Start with"):
            numbers = [int(x) for x in re.findall(r"\d+", p.question)]
            verbs = re.findall(r"(add|subtract|multiply)", p.question)
            value = numbers[0]
            for verb, x in zip(verbs, numbers[1:]):
                value = value + x if verb == "add" else value - x if verb == "subtract" else value * x
            assert str(value) == p.answer, p


def test_rewards_length_mismatch() -> None:
    task = make_task(n=2)
    with pytest.raises(ValueError, match="same length"):
        task.rewards(["1"], task.problems)


# ---------------------------------------------------------------- bad options


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(digits=0), r"digits must be an integer in 1\.\.12, got 0"),
        (dict(digits=13), r"digits must be an integer in 1\.\.12, got 13"),
        (dict(digits=2, min_digits=3), r"min_digits must be an integer in 1\.\.digits \(2\), got 3"),
        (dict(min_digits=0), "min_digits"),
        (dict(operations="/"), r"operations must be a non-empty string of '\+-\*', got '/'"),
        (dict(operations=""), "operations must be a non-empty string"),
        (dict(operations="+/"), "operations"),
        (dict(split="dev"), r"unknown split 'dev'; choose one of: train, validation, test"),
        (dict(steps=0), r"steps must be an integer in 1\.\.10, got 0"),
        (dict(answer_format="loose"), "answer_format must be one of strict, lenient, got 'loose'"),
        (dict(phrasing="latin"), "phrasing must be one of symbols, words, got 'latin'"),
        (dict(steps=11), "steps"),
        (dict(n=0), "n must be a positive integer, got 0"),
        (dict(n=-5), "n must be a positive integer"),
        (dict(digits="3"), "digits must be an integer"),  # library callers must pass ints
    ],
)
def test_bad_options(kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        make_task(**kwargs)
    assert str(info.value).startswith("arithmetic: ")
