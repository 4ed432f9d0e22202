"""The string tasks (copy / reverse / sort / count) and the arithmetic difficulty knobs (carry, shots)."""

from __future__ import annotations

import pytest

from selfcorrect.errors import ConfigError
from selfcorrect.tasks import load_task
from selfcorrect.tasks.arithmetic import carries
from selfcorrect.tasks.strings import canonical


@pytest.mark.parametrize("operation, source, target, answer", [
    ("copy", "48213", "", "48213"), ("reverse", "48213", "", "31284"), ("sort", "48213", "", "12348"),
    ("count", "3747172", "7", "3")])
def test_answers_are_the_operation_of_the_source(operation, source, target, answer):
    task = load_task("strings", operation=operation, length=7, min_length=5, n=300)
    for p in task.problems:
        src, op = p.meta["source"], p.meta["operation"]
        assert op == operation and 5 <= len(src) <= 7 and src in p.question
        expected = {"copy": src, "reverse": src[::-1], "sort": "".join(sorted(src))}.get(op)
        if op == "count":
            expected = str(src.count(p.id.split(":")[1]))
        assert p.answer == expected
    from selfcorrect.tasks.strings import _answer

    assert _answer(operation, source, target) == answer


def test_splits_are_disjoint_and_fixed_by_the_problem_alone():
    ids = {s: {p.id for p in load_task("strings", split=s, operation="reverse", length=4).problems}
           for s in ("train", "validation", "test")}
    assert not (ids["train"] & ids["test"]) and not (ids["train"] & ids["validation"])
    assert not (ids["validation"] & ids["test"])
    other_seed = {p.id for p in load_task("strings", split="test", operation="reverse", length=4, seed=5).problems}
    from selfcorrect.tasks.arithmetic import split_of

    assert all(split_of(i) == "test" for i in other_seed | ids["test"])


def test_strict_and_lenient_readers():
    strict = load_task("strings", operation="reverse", split="test", n=5)
    lenient = load_task("strings", operation="reverse", split="test", n=5, answer_format="lenient")
    p = strict.problems[0]
    right, spaced = p.answer, " ".join(p.answer)
    assert strict.reward(f"The final answer is {right}.", p) == 1.0
    assert strict.reward(f"The final answer is {spaced}.", p) == 1.0          # separators are not the answer
    assert strict.reward(f"The final answer is \"{right}\"", p) == 1.0
    assert strict.reward(f"\\boxed{{{right}}}", p) == 1.0
    assert strict.reward(f"{right} is the final answer.", p) == 0.0          # not the instructed form
    assert strict.reward(f"The final answer is {right}1.", p) == 0.0
    assert strict.reward(f"The final answer is S. {right}", p) == 0.0        # the literal letter
    assert lenient.reward(f"Backwards it reads {spaced}", p) == 1.0
    assert strict.lenient_verify(f"Backwards it reads {right}", p) == 1.0     # the probe's lenient reading
    assert strict.lenient_answer(f"Backwards it reads {right}") == right
    assert not strict.follows_format(f"{right} is the final answer.")
    letters = load_task("strings", operation="copy", alphabet="letters", n=3)
    q = letters.problems[0]
    assert q.answer.isupper() and letters.reward(f"The final answer is {q.answer.lower()}.", q) == 1.0
    assert canonical("4, 8, 2.", "digits") == "482" and canonical("48a", "digits") is None


def test_count_reads_numbers_and_says_so():
    task = load_task("strings", operation="count", n=20)
    assert "where N is the number" in task.first_prompt(task.problems[0])
    assert "where N is the number" in task.correction_instruction
    p = task.problems[0]
    assert task.reward(f"The final answer is {p.answer}.", p) == 1.0
    assert task.lenient_verify(f"It appears {p.answer} times", p) == 1.0
    assert {int(p.answer) for p in task.problems} != {0}


def test_phrasing_shots_and_a_feedback_free_correction():
    spaced = load_task("strings", operation="copy", phrasing="spaced", shots=2, n=50)
    p = spaced.problems[0]
    prompt = spaced.first_prompt(p)
    assert " ".join(p.meta["source"]) in p.question
    assert prompt.count("The final answer is ") == 3                         # 2 solved examples + the instruction
    # the examples are training problems, never one of the problems asked, and never carry their answers
    shown = [line for line in prompt.splitlines() if line.startswith("Copy this string")][:-1]
    asked = {q.question for q in spaced.problems}
    assert len(shown) == 2 and not set(shown) & asked
    for task in (spaced, load_task("strings", operation="count", shots=3, n=200)):
        for q in task.problems:               # count's answers repeat often: the examples are chosen around them
            assert f"The final answer is {q.answer}." not in task.first_prompt(q)
            assert task.first_prompt(q).count("The final answer is ") == task.options["shots"] + 1
    correction = spaced.correction_instruction.lower()
    assert "might be an error" in correction and "wrong" not in correction and "correct answer" not in correction


@pytest.mark.parametrize("options, message", [
    ({"operation": "shuffle"}, "operation must be one of"), ({"length": 1}, "length must be"),
    ({"length": 5, "min_length": 6}, "min_length must be"), ({"alphabet": "emoji"}, "alphabet must be"),
    ({"shots": 9}, "shots must be"), ({"phrasing": "words"}, "phrasing must be"),
    ({"answer_format": "loose"}, "answer_format must be"), ({"split": "dev"}, "unknown split")])
def test_bad_options_are_one_clear_error(options, message):
    with pytest.raises(ConfigError, match=message):
        load_task("strings", **options)


def test_arithmetic_carry_and_shots():
    assert carries("58 + 67") and carries("5 + 5") and not carries("41 + 37") and not carries("0 + 9")
    none = load_task("arithmetic", carry="none", n=200)
    some = load_task("arithmetic", carry="some", n=200)
    assert all(not carries(p.question[8:-1]) for p in none.problems)
    assert all(carries(p.question[8:-1]) for p in some.problems)
    shot = load_task("arithmetic", shots=1, n=50)
    assert all(shot.first_prompt(p).count("The final answer is") == 2 for p in shot.problems)
    assert all(f"The final answer is {p.answer}." not in shot.first_prompt(p) for p in shot.problems)
    with pytest.raises(ConfigError, match="needs operations"):
        load_task("arithmetic", carry="none", operations="+-")
    # the default problems and options are what they were before these knobs
    default = load_task("arithmetic")
    assert "carry" not in default.options and "shots" not in default.options
    assert [p.id for p in default.problems[:3]] == ["74+1", "6+2", "1+50"]
