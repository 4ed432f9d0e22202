"""The task registry: built-ins, option conversion, custom tasks, and every bad-input message."""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

import pytest

import selfcorrect.tasks as tasks_module
from selfcorrect.errors import ConfigError, DataError
from selfcorrect.tasks import BUILTIN_TASKS, Problem, Task, load_task, parse_task_options

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "selfcorrect" / "examples" / "custom_task.py"

USER_TASK = '''
from __future__ import annotations

from selfcorrect.tasks import Problem, Task


def make_task(word: str = "abc", repeat: int = 1, shout: bool = False, scale: float | None = None) -> Task:
    text = (word.upper() if shout else word) * repeat
    problems = [Problem(id=f"rev-{text}", question=f"Reverse {text!r}.", answer=text[::-1])]
    return Task(
        name="reverse",
        problems=problems,
        format_prompt=lambda p: p.question,
        correction_instruction="Check again.",
        verify=lambda completion, p: float(completion.strip() == p.answer),
        extract_answer=lambda completion: completion.strip() or None,
        options={"word": word, "repeat": repeat, "shout": shout, "scale": scale},
    )


def not_a_task():
    return 42


def no_problems() -> Task:
    return Task(name="empty", problems=[], format_prompt=str, correction_instruction="",
                verify=lambda c, p: 0.0, extract_answer=lambda c: None)


NOT_CALLABLE = 3
'''


@pytest.fixture
def user_task_file(tmp_path: Path) -> Path:
    path = tmp_path / "my_tasks.py"
    path.write_text(USER_TASK)
    return path


# ---------------------------------------------------------------- built-ins


def test_arithmetic_builtin() -> None:
    task = load_task("arithmetic", n=5)
    assert isinstance(task, Task) and task.name == "arithmetic" and len(task) == 5


def test_cli_strings_are_converted() -> None:
    task = load_task("arithmetic", digits="3", n="4", seed="2", min_digits="none", operations="+-")
    assert task.options == dict(split="train", n=4, digits=3, min_digits=None, operations="+-", steps=1, seed=2,
                                answer_format="strict", phrasing="symbols")
    assert all(len(x) == 3 for p in task.problems for x in p.question[8:-1].split(" ")[0::2])
    # the converted values are the same as typed ones
    typed = load_task("arithmetic", digits=3, n=4, seed=2, operations="+-", min_digits=None)
    assert [p.id for p in task.problems] == [p.id for p in typed.problems]


def test_bad_value_type() -> None:
    with pytest.raises(ConfigError, match=r"task 'arithmetic' option 'digits': expected int, got 'three'"):
        load_task("arithmetic", digits="three")
    with pytest.raises(ConfigError, match="option 'min_digits': expected int or NoneType, got 'x'"):
        load_task("arithmetic", min_digits="x")


def test_option_values_are_still_checked_by_the_task() -> None:
    with pytest.raises(ConfigError, match="digits must be an integer in 1..12, got 0"):
        load_task("arithmetic", digits="0")


def test_humaneval_builtin() -> None:
    task = load_task("humaneval", limit="2", timeout_s="5")
    assert task.name == "humaneval"
    assert [p.id for p in task.problems] == ["HumanEval/0", "HumanEval/1"]
    assert task.options["timeout_s"] == 5.0 and isinstance(task.options["timeout_s"], float)
    p = task.problems[0]
    assert p.entry_point and p.tests and "def " in task.first_prompt(p)


def test_unknown_option_lists_valid_options() -> None:
    with pytest.raises(ConfigError, match="task 'arithmetic' has no option 'digit'") as info:
        load_task("arithmetic", digit="3")
    for option in ("split", "n", "digits", "min_digits", "operations", "steps", "seed"):
        assert option in str(info.value)


def test_unknown_task_lists_builtins() -> None:
    with pytest.raises(ConfigError, match="unknown task 'arithmatic'") as info:
        load_task("arithmatic")
    message = str(info.value)
    for name in BUILTIN_TASKS:
        assert name in message
    assert "module:function" in message


@pytest.mark.parametrize("name", ["", None])
def test_empty_task_name(name) -> None:
    with pytest.raises(ConfigError, match="non-empty"):
        load_task(name)


def test_math_task_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "no_such_problems.jsonl"
    with pytest.raises(DataError, match="no_such_problems.jsonl"):
        load_task("math", path=str(missing))
    with pytest.raises(DataError, match="no_such_problems.jsonl"):
        load_task("gsm8k", path=str(missing))


# ---------------------------------------------------------------- parse_task_options


def test_parse_task_options() -> None:
    assert parse_task_options(["digits=3", "operations=+-", "min-digits=1", "instruction=a=b", "tag="]) == {
        "digits": "3", "operations": "+-", "min_digits": "1", "instruction": "a=b", "tag": "",
    }
    assert parse_task_options(None) == {} == parse_task_options([])
    # the last of a repeated key wins
    assert parse_task_options(["n=1", "n=2"]) == {"n": "2"}


@pytest.mark.parametrize("bad", ["bad", "=3", " =3"])
def test_parse_task_options_rejects_non_pairs(bad: str) -> None:
    with pytest.raises(ConfigError, match=f"task option {bad!r} must look like key=value"):
        parse_task_options(["digits=3", bad])


def test_parsed_options_feed_load_task() -> None:
    task = load_task("arithmetic", **parse_task_options(["digits=1", "min-digits=1", "n=3"]))
    assert task.options["digits"] == 1 and task.options["min_digits"] == 1 and len(task) == 3


# ---------------------------------------------------------------- custom tasks


def test_custom_task_from_file(user_task_file: Path) -> None:
    task = load_task(f"{user_task_file}:make_task", word="ab", repeat="2", shout="yes", scale="0.5")
    assert task.name == "reverse"
    assert task.options == {"word": "ab", "repeat": 2, "shout": True, "scale": 0.5}
    p = task.problems[0]
    assert p.answer == "BABA"
    assert task.reward("BABA", p) == 1.0 and task.reward("ABAB", p) == 0.0


def test_custom_task_relative_path(user_task_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(user_task_file.parent)
    task = load_task("my_tasks.py:make_task", shout="false", scale="none")
    assert task.options["shout"] is False and task.options["scale"] is None


def test_custom_task_from_module(user_task_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    package = user_task_file.parent / "selfcorrect_test_pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "reverse.py").write_text(USER_TASK)
    monkeypatch.syspath_prepend(str(user_task_file.parent))
    task = load_task("selfcorrect_test_pkg.reverse:make_task", word="xyz")
    assert task.problems[0].answer == "zyx"
    assert task.reward("zyx", task.problems[0]) == 1.0


def test_custom_task_bad_options(user_task_file: Path) -> None:
    with pytest.raises(ConfigError, match="has no option 'wrd'; valid options: word, repeat, shout, scale"):
        load_task(f"{user_task_file}:make_task", wrd="x")
    with pytest.raises(ConfigError, match="option 'shout': expected bool, got 'maybe'"):
        load_task(f"{user_task_file}:make_task", shout="maybe")


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="file not found: .*nowhere.py"):
        load_task(f"{tmp_path / 'nowhere.py'}:make_task")


def test_missing_function(user_task_file: Path) -> None:
    with pytest.raises(ConfigError, match="has no callable 'make_tsk'"):
        load_task(f"{user_task_file}:make_tsk")
    with pytest.raises(ConfigError, match="has no callable 'NOT_CALLABLE'"):
        load_task(f"{user_task_file}:NOT_CALLABLE")


def test_missing_module() -> None:
    with pytest.raises(ConfigError, match="cannot import module 'selfcorrect_no_such_module'"):
        load_task("selfcorrect_no_such_module:make_task")
    with pytest.raises(ConfigError, match="module 'selfcorrect.tasks.arithmetic' has no callable 'nope'"):
        load_task("selfcorrect.tasks.arithmetic:nope")


@pytest.mark.parametrize("name", [":make_task", "my_tasks.py:", "pkg.mod:"])
def test_malformed_target(name: str) -> None:
    with pytest.raises(ConfigError, match="expected 'module:function' or 'path/to/file.py:function'"):
        load_task(name)


def test_factory_must_return_a_task(user_task_file: Path) -> None:
    with pytest.raises(ConfigError, match="factory returned int, expected selfcorrect.tasks.Task"):
        load_task(f"{user_task_file}:not_a_task")


def test_task_without_problems(user_task_file: Path) -> None:
    with pytest.raises(ConfigError, match="has no problems"):
        load_task(f"{user_task_file}:no_problems")


def test_entry_point(user_task_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(user_task_file.parent))
    ep = importlib.metadata.EntryPoint(name="reverse", value="my_tasks:make_task", group="selfcorrect.tasks")
    monkeypatch.setattr(tasks_module, "_entry_points", lambda: {"reverse": ep})
    task = load_task("reverse", word="hello")
    assert task.problems[0].answer == "olleh"
    with pytest.raises(ConfigError) as info:
        load_task("revers")
    assert "reverse" in str(info.value) and "arithmetic" in str(info.value)


def test_builtins_win_over_entry_points(user_task_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(user_task_file.parent))
    ep = importlib.metadata.EntryPoint(name="arithmetic", value="my_tasks:make_task", group="selfcorrect.tasks")
    monkeypatch.setattr(tasks_module, "_entry_points", lambda: {"arithmetic": ep})
    assert load_task("arithmetic", n=1).name == "arithmetic"


# ---------------------------------------------------------------- examples/custom_task.py


def test_example_custom_task() -> None:
    task = load_task(f"{EXAMPLE}:make_task", n="50", max_value="30", seed="1")
    assert task.name == "unit-conversion" and len(task) == 50
    assert task.options == {"n": 50, "seed": 1, "split": "train", "max_value": 30}
    p = task.problems[0]
    value, src, _, dst = p.question.removeprefix("Convert ").removesuffix(".").split(" ")
    assert int(value) <= 30
    assert task.first_prompt(p).endswith(p.question)

    right = f"1 {src} is {p.meta['factor']} {dst}, so the final answer is {p.answer}."
    wrong = f"The final answer is {int(p.answer) + 1}."
    assert task.reward(right, p) == 1.0
    assert task.reward(wrong, p) == 0.0
    assert task.rewards([right, wrong, "I am not sure."], [p, p, p]) == [1.0, 0.0, 0.0]


def test_example_custom_task_splits() -> None:
    train = load_task(f"{EXAMPLE}:make_task", n="100000", split="train")
    test = load_task(f"{EXAMPLE}:make_task", n="100000", split="test")
    assert train.problems and test.problems
    assert not {p.id for p in train.problems} & {p.id for p in test.problems}
    assert len(train) + len(test) == 100 * 6  # every (value, conversion) lands in exactly one split
    for p in train.problems + test.problems:
        assert isinstance(p, Problem)
        value, src, _, dst = p.question.removeprefix("Convert ").removesuffix(".").split(" ")
        assert int(p.answer) == int(value) * p.meta["factor"]
    with pytest.raises(ConfigError, match="unknown split 'dev'"):
        load_task(f"{EXAMPLE}:make_task", split="dev")
