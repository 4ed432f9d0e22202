"""HumanEval and MBPP tasks: code extraction, loading, malformed data, rewards."""

from __future__ import annotations

import json
import time

import pytest

from selfcorrect.errors import ConfigError, DataError
from selfcorrect.tasks.code import extract_code, humaneval_program, make_humaneval, make_mbpp
from selfcorrect.tasks.prompts import CODE_CORRECTION, CODE_INSTRUCTION


# --------------------------------------------------------------------------- extract_code
@pytest.mark.parametrize(
    "completion, expected",
    [
        ("Here you go:\n```python\ndef f():\n    return 1\n```\nDone.", "def f():\n    return 1\n"),
        ("```\nx = 1\n```", "x = 1\n"),
        ("```Python\nx = 1\n```", "x = 1\n"),
        ("```py\nx = 1\n```", "x = 1\n"),
        ("```python\ndef f():\n    return 1", "def f():\n    return 1\n"),  # unterminated
        ("```text\nnot code\n```\n```python\nx = 2\n```", "x = 2\n"),  # python beats other tags
        ("```\nfirst = 1\n```\n```python\nsecond = 2\n```", "second = 2\n"),  # python beats untagged
        ("```python\na = 1\n```\n```python\nb = 2\n```", "a = 1\n"),  # the first python block
        ("    return x + 1\n", "    return x + 1\n"),  # no fence: the whole text, indentation kept
        ("```python\n    return x\n```", "    return x\n"),  # indentation kept inside fences too
        ("```bash\nls\n```", "```bash\nls\n```"),  # only a non-python block: the whole text
        ("", ""),
        ("   \n", ""),
        ("```python\n```", ""),
    ],
)
def test_extract_code(completion, expected):
    assert extract_code(completion) == expected


# --------------------------------------------------------------------------- HumanEval
@pytest.fixture(scope="module")
def humaneval():
    return make_humaneval()


def test_humaneval_problems(humaneval):
    assert len(humaneval) == 164 and humaneval.name == "humaneval"
    first = humaneval.problems[0]
    assert first.id == "HumanEval/0" and first.entry_point == "has_close_elements"
    assert first.question == first.meta["prompt"] and "def has_close_elements" in first.question
    assert "def check" in first.tests and "return False" in first.meta["canonical_solution"]
    prompt = humaneval.first_prompt(first)
    assert prompt.startswith(CODE_INSTRUCTION) and "```python\n" + first.question.rstrip() + "\n```" in prompt
    assert humaneval.correction_instruction == CODE_CORRECTION
    assert len(make_humaneval(limit=5)) == 5


def test_humaneval_options():
    task = make_humaneval(limit=1, instruction="Solve:", correction_instruction="Fix it.")
    assert task.first_prompt(task.problems[0]).startswith("Solve:\n\n```python")
    assert task.correction_instruction == "Fix it."
    with pytest.raises(ConfigError, match="split"):
        make_humaneval(split="train")


@pytest.mark.long
def test_all_canonical_solutions_pass(humaneval):
    """Every HumanEval reference solution scores 1.0 via the batch reward, in both completion forms."""
    start = time.monotonic()
    problems = humaneval.problems
    bodies = [p.meta["canonical_solution"] for p in problems]                       # body continuation
    fenced = ["```python\n" + p.meta["prompt"] + p.meta["canonical_solution"] + "```" for p in problems]
    rewards = humaneval.rewards(bodies + fenced, problems + problems)
    failed = [p.id for p, r in zip(problems + problems, rewards) if r != 1.0]
    assert not failed, failed
    assert time.monotonic() - start < 240


@pytest.mark.long
def test_plainly_wrong_solutions_fail(humaneval):
    """The stub's empty body (returns None) and a constant answer score 0 on every problem."""
    problems = humaneval.problems
    verdicts = humaneval.verdicts(["    pass\n"] * len(problems) + ["    return 0\n"] * len(problems),
                                  problems + problems)
    passed = [p.id for p, v in zip(problems + problems, verdicts) if v.reward != 0.0]
    assert not passed, passed
    assert all(v.reason for v in verdicts)  # every 0 says why


def test_humaneval_completion_forms(humaneval):
    problem = humaneval.problems[0]
    body = problem.meta["canonical_solution"]
    full = problem.question + body
    assert humaneval.reward(body, problem) == 1.0  # body continuation
    assert humaneval.reward("```python\n" + full + "```", problem) == 1.0  # whole function, fenced
    # A whole function without the stub's imports still works (the stub is prepended).
    no_imports = full.replace("from typing import List\n", "")
    assert humaneval.reward("Sure!\n```python\n" + no_imports + "```\nHope it helps.", problem) == 1.0
    assert humaneval.reward("```python\ndef has_close_elements(numbers, threshold):\n    return True\n```",
                            problem) == 0.0
    assert humaneval.reward("I don't know.", problem) == 0.0
    assert humaneval.reward("", problem) == 0.0
    assert humaneval.extract_answer("```python\nx = 1\n```") == "x = 1\n"
    assert humaneval.extract_answer("  ") is None


def test_humaneval_program_rules(humaneval):
    problem = humaneval.problems[0]
    stub = problem.meta["prompt"]
    assert humaneval_program("    return 1\n", problem) == stub + "    return 1\n"
    assert humaneval_program("```python\ndef has_close_elements(a, b):\n    return 1\n```", problem) == (
        stub + "\n\ndef has_close_elements(a, b):\n    return 1\n")


def test_humaneval_helpers_come_from_the_stub(humaneval):
    """Redefining the stub's helper (encode_cyclic) as the identity must not pass HumanEval/38."""
    problem = next(p for p in humaneval.problems if p.id == "HumanEval/38")
    hack = "```python\ndef encode_cyclic(s):\n    return s\n\ndef decode_cyclic(s):\n    return s\n```"
    assert humaneval.reward(hack, problem) == 0.0
    assert humaneval.reward(problem.meta["canonical_solution"], problem) == 1.0


def test_humaneval_reward_hacks_fail(humaneval):
    problem = humaneval.problems[0]
    hacks = [
        "```python\nimport sys\nsys.exit(0)\n```",
        "```python\nimport os\nos._exit(0)\n```",
        "```python\ndef check(candidate):\n    pass\ndef has_close_elements(n, t):\n    return None\n```",
        "```python\nclass A:\n    def __eq__(self, o):\n        return True\n"
        "def has_close_elements(n, t):\n    return A()\n```",
        "```python\nfor _ in range(100):\n    print('0123456789abcdef' * 2)\n```",
    ]
    assert humaneval.rewards(hacks, [problem] * len(hacks)) == [0.0] * len(hacks)


# --------------------------------------------------------------------------- MBPP
def _row(task_id=11, **overrides):
    row = {
        "task_id": task_id,
        "text": "Write a function to add two numbers.",
        "code": "def add(a, b):\n    return a + b\n",
        "test_list": ["assert add(1, 2) == 3", "assert add(-1, 1) == 0"],
        "test_setup_code": "",
    }
    row.update(overrides)
    return row


def _write_jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return str(path)


def test_mbpp_from_jsonl(tmp_path):
    rows = [_row(11), _row(12, text=None, prompt="Add numbers.", test_setup_code="import math"),
            _row(700)]  # 700 is in the train split
    del rows[1]["text"]
    task = make_mbpp(path=_write_jsonl(tmp_path / "mbpp.jsonl", rows))
    assert task.name == "mbpp" and [p.id for p in task.problems] == ["mbpp/11", "mbpp/12"]
    first, second = task.problems
    assert first.entry_point == "add" and second.question == "Add numbers."
    # Set-up code is the judge's trusted context; the asserts are the tests.
    assert second.meta["context"] == "import math\n" and second.tests == (
        "assert add(1, 2) == 3\nassert add(-1, 1) == 0\n")
    assert second.meta["hidden_tests"] == {"first": "assert add(-1, 1) == 0\n", "all": "\n"}
    zero_shot = make_mbpp(path=str(tmp_path / "mbpp.jsonl"), prompt_style="zero-shot")
    prompt = zero_shot.first_prompt(zero_shot.problems[0])
    assert prompt.startswith(CODE_INSTRUCTION) and "assert add(1, 2) == 3" in prompt
    assert "assert add(-1, 1) == 0" not in prompt  # only the first test is shown
    assert [p.id for p in make_mbpp(path=str(tmp_path / "mbpp.jsonl"), split="all").problems] == [
        "mbpp/11", "mbpp/12", "mbpp/700"]
    assert [p.id for p in make_mbpp(path=str(tmp_path / "mbpp.jsonl"), split="train").problems] == ["mbpp/700"]
    assert len(make_mbpp(path=str(tmp_path / "mbpp.jsonl"), limit=1)) == 1


def test_mbpp_from_json_array(tmp_path):
    path = tmp_path / "mbpp.json"
    path.write_text(json.dumps([_row(11), _row(12)]))
    assert len(make_mbpp(path=str(path))) == 2


def test_mbpp_rewards(tmp_path):
    task = make_mbpp(path=_write_jsonl(tmp_path / "mbpp.jsonl", [_row(11)]))
    problem = task.problems[0]
    good = "```python\ndef add(a, b):\n    return a + b\n```"
    wrong = "```python\ndef add(a, b):\n    return a - b\n```"
    renamed = "```python\ndef plus(a, b):\n    return a + b\n```"
    always_equal = "```python\nclass A:\n    __eq__ = lambda s, o: True\ndef add(a, b):\n    return A()\n```"
    assert task.reward(good, problem) == 1.0
    assert task.rewards([good, wrong, renamed, always_equal, "sys.exit(0)"], [problem] * 5) == [
        1.0, 0.0, 0.0, 0.0, 0.0]
    assert task.extract_answer(good) == "def add(a, b):\n    return a + b\n"


def test_mbpp_needs_exactly_one_source(tmp_path):
    with pytest.raises(ConfigError):
        make_mbpp()
    with pytest.raises(ConfigError):
        make_mbpp(path="x.jsonl", dataset="mbpp")
    with pytest.raises(ConfigError, match="split"):
        make_mbpp(path=_write_jsonl(tmp_path / "m.jsonl", [_row()]), split="dev")


@pytest.mark.parametrize(
    "lines, line_no, needle",
    [
        ([_row(11), '{"task_id": 12, "text": "x",'], 2, "not valid JSON"),
        ([_row(11), _row(12, test_list=None)], 2, "'test_list'"),
        ([{k: v for k, v in _row().items() if k != "test_list"}], 1, "missing field 'test_list'"),
        ([{k: v for k, v in _row().items() if k != "code"}], 1, "missing field 'code'"),
        ([{k: v for k, v in _row().items() if k != "task_id"}], 1, "missing field 'task_id'"),
        ([{k: v for k, v in _row().items() if k != "text"}], 1, "missing field 'text'"),
        ([_row(11, test_list="assert add(1, 2) == 3")], 1, "field 'test_list' must be a list of strings"),
        ([_row(11, test_list=[1, 2])], 1, "field 'test_list' must be a list of strings"),
        ([_row(11, test_list=[])], 1, "field 'test_list' is empty"),
        ([_row(11, text=5)], 1, "field 'text' must be str"),
        ([_row(11, code=["x"])], 1, "field 'code' must be str"),
        ([_row([11])], 1, "field 'task_id' must be int or str"),
        ([_row(True)], 1, "field 'task_id' must be int or str"),
        ([_row(11, test_setup_code=3)], 1, "field 'test_setup_code' must be str"),
        ([_row(11), "[1, 2]"], 2, "expected a JSON object"),
        ([_row(11), _row(11)], 2, "duplicate task_id 11"),
    ],
)
def test_mbpp_malformed_rows(tmp_path, lines, line_no, needle):
    path = _write_jsonl(tmp_path / "bad.jsonl", lines)
    with pytest.raises(DataError) as info:
        make_mbpp(path=path, split="all")
    message = str(info.value)
    assert f"{path}:{line_no}:" in message and needle in message, message


def test_mbpp_malformed_files(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    with pytest.raises(DataError, match="empty.jsonl: the file is empty"):
        make_mbpp(path=str(empty))
    with pytest.raises(DataError, match="missing.jsonl: MBPP file not found"):
        make_mbpp(path=str(tmp_path / "missing.jsonl"))
    array = tmp_path / "bad.json"
    array.write_text(json.dumps([_row(11), "oops"]))
    with pytest.raises(DataError, match=r"bad.json: item 1: expected a JSON object"):
        make_mbpp(path=str(array))
    broken = tmp_path / "broken.json"
    broken.write_text('[\n  {"task_id": 11,\n  oops\n]')
    with pytest.raises(DataError, match=r"broken.json:3: not valid JSON"):
        make_mbpp(path=str(broken))
    not_list = tmp_path / "obj.json"
    not_list.write_text('{"task_id": 11}')
    with pytest.raises(DataError, match="expected a JSON array"):
        make_mbpp(path=str(not_list))
    small_ids = _write_jsonl(tmp_path / "small.jsonl", [_row(1), _row(2)])
    with pytest.raises(DataError, match="split='all'"):
        make_mbpp(path=small_ids)  # ids 1-2 are MBPP's prompt split, not test


def test_mbpp_from_a_dataset_name(monkeypatch):
    """The Hub path (offline here: ``datasets.load_dataset`` is replaced)."""
    datasets = pytest.importorskip("datasets")
    calls = []

    def fake_load_dataset(name, config=None, split=None):
        calls.append((name, config, split))
        if name == "missing":
            raise FileNotFoundError("no such dataset")
        return [_row(2, text=None, prompt="Add.", test_imports=["import math"])] + [
            _row(3, test_list="oops")] * (name == "broken")

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    task = make_mbpp(dataset="google-research-datasets/mbpp", config="sanitized", split="prompt")
    assert calls == [("google-research-datasets/mbpp", "sanitized", "prompt")]
    problem = task.problems[0]  # no task-id filtering: the dataset's split is the split
    assert problem.id == "mbpp/2" and problem.meta["context"] == "import math\n"
    assert task.reward("```python\ndef add(a, b):\n    return a + b\n```", problem) == 1.0
    with pytest.raises(DataError, match="dataset 'missing'.*could not load dataset"):
        make_mbpp(dataset="missing")
    with pytest.raises(DataError, match="dataset 'broken' split 'test' row 1: field 'test_list'"):
        make_mbpp(dataset="broken")


def test_mbpp_hidden_tests_score_only_what_the_prompt_does_not_show(tmp_path):
    rows = [_row(11, test_list=["assert add(1, 2) == 3", "assert add(5, 5) == 10"],
                 challenge_test_list=["assert add(-3, -4) == -7"]),
            _row(12, test_list=["assert add(1, 2) == 3"])]
    path = _write_jsonl(tmp_path / "mbpp.jsonl", rows)
    hidden = make_mbpp(path=path, reward_tests="hidden", prompt_style="zero-shot")
    everything = make_mbpp(path=path, prompt_style="zero-shot")
    first, only_one = hidden.problems
    assert "assert add(1, 2) == 3" in hidden.first_prompt(first)          # shown in the prompt ...
    assert "add(1, 2)" not in first.meta["hidden_tests"]["first"]          # ... so not a hidden test
    hard_coded = "```python\ndef add(a, b):\n    return 3 if (a, b) == (1, 2) else 0\n```"
    right = "```python\ndef add(a, b):\n    return a + b\n```"
    assert [everything.reward(hard_coded, p) for p in everything.problems] == [0.0, 1.0]
    assert hidden.reward(hard_coded, first) == 0.0 and hidden.reward(right, first) == 1.0
    # Nothing hidden to check: fails closed, and says so.
    verdict, = hidden.verdicts([right], [only_one])
    assert verdict.reward == 0.0 and "no hidden tests" in verdict.reason
    with pytest.raises(ConfigError, match="reward_tests"):
        make_mbpp(path=path, reward_tests="some")
    # The 3-shot prompt shows every assert: only challenge_test_list stays hidden.
    three_shot = make_mbpp(path=path, reward_tests="hidden")
    assert "assert add(5, 5) == 10" in three_shot.first_prompt(three_shot.problems[0])
    assert three_shot.reward(hard_coded, first) == 0.0 and three_shot.reward(right, first) == 1.0
    assert three_shot.verdicts([right], [only_one])[0].reward == 0.0


def test_mbpp_default_prompt_is_austin_et_al_three_shot(tmp_path):
    """The SCoRe paper's MBPP prompt: Austin et al.'s task ids 2, 3, 4 as solved examples, then the task."""
    from selfcorrect.tasks.code import extract_code
    from selfcorrect.tasks.prompts import MBPP_SHOTS

    task = make_mbpp(path=_write_jsonl(tmp_path / "mbpp.jsonl", [_row(11)]))
    prompt = task.first_prompt(task.problems[0])
    head = ("You are an expert Python programmer, and here is your task: Write a function to find the similar "
            "elements from the given two tuple lists. Your code should pass these tests:\n\n"
            "assert similar_elements((3, 4, 5, 6),(5, 7, 4, 10)) == (4, 5)\n")
    assert prompt.startswith(head)
    assert prompt.count("[BEGIN]\n") == prompt.count("\n[DONE]\n") == 3
    assert ([p.split(" Your code")[0] for p in prompt.split("here is your task: ")[1:]] ==
        [text for text, _, _ in MBPP_SHOTS] + [task.problems[0].question])
    assert prompt.endswith("Your code should pass these tests:\n\nassert add(1, 2) == 3\nassert add(-1, 1) == 0\n")
    # Each example's reference code passes its own asserts (the shots are a correct transcription).
    for _, tests, code in MBPP_SHOTS:
        namespace: dict = {}
        exec(code + "\n" + "\n".join(tests), namespace)       # trusted: our own constants
    # Answers in the shots' form are read back.
    assert extract_code("[BEGIN]\ndef add(a, b):\n    return a + b\n[DONE]") == "def add(a, b):\n    return a + b\n"
    assert task.reward("[BEGIN]\ndef add(a, b):\n    return a + b\n[DONE]", task.problems[0]) == 1.0
    assert extract_code("[BEGIN]\n```python\nx = 1\n```\n[DONE]") == "x = 1\n"
    with pytest.raises(ConfigError, match="prompt_style"):
        make_mbpp(path=str(tmp_path / "mbpp.jsonl"), prompt_style="5-shot")


def test_a_weaker_sandbox_level_warns_loudly(monkeypatch, capsys):
    from selfcorrect.tasks import code

    monkeypatch.setattr(code, "sandbox_isolation", lambda limits: "basic")
    with pytest.warns(code.SandboxIsolationWarning, match="isolation 'basic'.*canonical solutions"):
        task = make_humaneval(limit=1, isolation="basic")
    assert task.options["sandbox_isolation"] == "basic"
    assert "WARNING: code rewards run under sandbox isolation 'basic'" in capsys.readouterr().err


def test_sample_rows_record_why_a_code_attempt_failed(humaneval):
    problem = humaneval.problems[0]
    wrong, right = humaneval.verdicts(["    return True\n", problem.meta["canonical_solution"]], [problem] * 2)
    assert wrong.reward == 0.0 and wrong.reason.startswith("failed: AssertionError at tests line")
    assert right.reward == 1.0 and right.reason == ""
