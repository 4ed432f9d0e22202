"""Loading MATH/GSM8K-style tasks from local files, and every bad-input message."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from selfcorrect.errors import ConfigError, DataError
from selfcorrect.tasks.base import Task
from selfcorrect.tasks.math import make_gsm8k, make_task
from selfcorrect.tasks.prompts import MATH_CORRECTION, MATH_INSTRUCTION

ROWS = [
    {"problem": "What is 1/2 + 1/2?", "answer": "1", "solution": r"It is \boxed{1}.", "level": "Level 1"},
    # no answer field: the oracle comes from the solution's last box
    {"problem": "Halve 1.", "solution": r"Half of $1$ is $\boxed{\frac{1}{2}}$."},
    # empty answer field also falls back to the solution
    {"problem": "What is 10*100?", "answer": "", "solution": r"$\boxed{1,000}$"},
]


def write_jsonl(path: Path, rows: list, blank_line_after: int | None = None) -> Path:
    lines = [json.dumps(row) for row in rows]
    if blank_line_after is not None:
        lines.insert(blank_line_after, "")
    path.write_text("\n".join(lines) + "\n")
    return path


def write_parquet(path: Path, rows: list[dict]) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def check_math_rows(task: Task, stem: str) -> None:
    assert task.name == "math"
    assert [p.id for p in task.problems] == [f"{stem}-0", f"{stem}-1", f"{stem}-2"]
    assert [p.answer for p in task.problems] == ["1", r"\frac{1}{2}", "1,000"]
    assert task.problems[0].question == "What is 1/2 + 1/2?"


# ---------------------------------------------------------------- formats


def test_jsonl(tmp_path: Path) -> None:
    task = make_task(write_jsonl(tmp_path / "math_test.jsonl", ROWS, blank_line_after=1))
    check_math_rows(task, "math_test")
    assert task.problems[0].meta["row"]["level"] == "Level 1"
    assert task.problems[1].meta["source"].endswith("math_test.jsonl:3")  # blank line 2 skipped


def test_json_list(tmp_path: Path) -> None:
    path = tmp_path / "probs.json"
    path.write_text(json.dumps(ROWS, indent=2))
    check_math_rows(make_task(str(path)), "probs")


def test_json_data_object(tmp_path: Path) -> None:
    path = tmp_path / "wrapped.json"
    path.write_text(json.dumps({"version": 1, "data": ROWS}))
    check_math_rows(make_task(path), "wrapped")


def test_parquet(tmp_path: Path) -> None:
    path = write_parquet(tmp_path / "m.parquet", [{"problem": "1+1?", "answer": "2"}, {"problem": "2+2?", "answer": "4"}])
    task = make_task(path)
    assert [(p.id, p.answer) for p in task.problems] == [("m-0", "2"), ("m-1", "4")]


def test_local_dataset_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    datasets = pytest.importorskip("datasets")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "cache")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    data_dir = tmp_path / "mymath"
    data_dir.mkdir()
    write_jsonl(data_dir / "test.jsonl", ROWS[:2])
    task = make_task(dataset=str(data_dir), split="test")
    assert [(p.id, p.answer) for p in task.problems] == [("mymath-test-0", "1"), ("mymath-test-1", r"\frac{1}{2}")]
    with pytest.raises(DataError, match=r"mymath\[train\]: could not load dataset"):
        make_task(dataset=str(data_dir), split="train")


def test_an_uncached_dataset_with_the_hub_unreachable_fails_at_once(tmp_path: Path, unreachable_hub) -> None:
    """No retries: the load runs in the libraries' offline mode and says why, in one line."""
    datasets = pytest.importorskip("datasets")
    from selfcorrect.hub import CACHE_ONLY

    unreachable_hub(tmp_path / "hub")
    switch = datasets.config.HF_HUB_OFFLINE
    with pytest.raises(DataError) as exc:
        make_gsm8k(dataset="selfcorrect-tests/no-such-dataset", config_name="main")
    assert one_line(exc).startswith(f"selfcorrect-tests/no-such-dataset/main[test]: could not load dataset "
                                    f"({CACHE_ONLY}: ")
    assert datasets.config.HF_HUB_OFFLINE is switch                    # the switch is put back


def test_field_mapping_ids_and_limit(tmp_path: Path) -> None:
    rows = [
        {"q": "A?", "final": 3, "uid": "p-a"},
        {"q": "B?", "final": "x=4", "uid": 17},
        {"q": "C?", "final": "5", "uid": "p-c"},
    ]
    task = make_task(
        write_jsonl(tmp_path / "custom.jsonl", rows),
        question_field="q",
        answer_field="final",
        solution_field=None,
        id_field="uid",
        limit=2,
    )
    assert [(p.id, p.question, p.answer) for p in task.problems] == [("p-a", "A?", "3"), ("17", "B?", "x=4")]
    assert task.options["limit"] == 2 and task.options["question_field"] == "q"


def test_limit_stops_before_bad_lines(tmp_path: Path) -> None:
    path = tmp_path / "partial.jsonl"
    path.write_text(json.dumps(ROWS[0]) + "\n{not json\n")
    assert len(make_task(path, limit=1)) == 1


def test_prompts_verifier_and_voting(tmp_path: Path) -> None:
    task = make_task(write_jsonl(tmp_path / "t.jsonl", ROWS))
    halve = task.problems[1]
    assert task.first_prompt(halve) == f"{MATH_INSTRUCTION}\n\nProblem:\nHalve 1."
    assert task.correction_instruction == MATH_CORRECTION
    assert task.reward("Final Answer: The final answer is $0.5$. I hope it is correct.", halve) == 1.0
    assert task.reward(r"\boxed{2}", halve) == 0.0
    assert task.reward("#### 1000", task.problems[2]) == 1.0
    assert task.extract_answer(r"so \boxed{\frac{1}{2}}") == r"\frac{1}{2}"
    assert task.answers_match("1/2", "0.5")
    custom = make_task(write_jsonl(tmp_path / "c.jsonl", ROWS), instruction="Solve.", correction_instruction="Retry.")
    assert custom.first_prompt(custom.problems[0]) == "Solve.\n\nProblem:\nWhat is 1/2 + 1/2?"
    assert custom.correction_instruction == "Retry."


def test_gsm8k(tmp_path: Path) -> None:
    rows = [
        {"question": "Natalia sold 48 clips in April and half as many in May. Total?",
         "answer": "In May she sold 48/2 = <<48/2=24>>24 clips.\nAltogether 48+24 = <<48+24=72>>72.\n#### 72"},
        {"question": "Plain?", "answer": "1,250"},
    ]
    task = make_gsm8k(write_jsonl(tmp_path / "gsm8k_test.jsonl", rows))
    assert task.name == "gsm8k"
    assert [(p.id, p.answer) for p in task.problems] == [("gsm8k_test-0", "72"), ("gsm8k_test-1", "1,250")]
    assert task.reward("She sold 72 clips.\nFinal Answer: The final answer is $72$. I hope it is correct.", task.problems[0]) == 1.0
    assert task.reward(r"\boxed{1250}", task.problems[1]) == 1.0
    assert task.reward(r"\boxed{71}", task.problems[0]) == 0.0


def test_an_answer_field_holding_a_math_solution_gives_its_boxed_answer(tmp_path: Path) -> None:
    """``answer_field=solution`` (a whole MATH solution as the answer): the gold is the last box, read once at
    load, so reasons and samples show it; scoring is what math-verify gave the whole solution before."""
    from selfcorrect.tasks.answers import math_reward

    solutions = [r"$3^2 = \boxed{9}$", r"First $x=2$, so $\boxed{\frac{1}{2}}$.", r"We get \boxed{1,000}.",
                 r"Sets: $\boxed{\{1, 2\}}$"]
    rows = [{"problem": f"Q{i}", "solution": text} for i, text in enumerate(solutions)]
    task = make_task(write_jsonl(tmp_path / "m.jsonl", rows), answer_field="solution", solution_field=None)
    assert [p.answer for p in task.problems] == ["9", r"\frac{1}{2}", "1,000", r"\{1, 2\}"]
    completions = [r"\boxed{9}", "The final answer is 9.", r"\boxed{0.5}", r"\boxed{1000}", r"\boxed{2}",
                   r"\boxed{\{2, 1\}}", "no answer", r"\boxed{3^2}"]
    for problem, whole in zip(task.problems, solutions):
        assert [task.reward(c, problem) for c in completions] == [math_reward(c, whole) for c in completions]
    assert sum(task.reward(c, p) for p in task.problems for c in completions) >= 5   # not all zero
    plain = make_task(write_jsonl(tmp_path / "p.jsonl", [{"problem": "Q", "answer": r"x^2 + 1"}]))
    assert plain.problems[0].answer == "x^2 + 1"                       # a plain answer stays as it is


@pytest.mark.parametrize("answer", ["She sold 48 clips in April and 24 in May.", "24 in May\n72 in all"])
def test_a_gsm8k_answer_without_its_marker_is_refused(tmp_path: Path, answer: str) -> None:
    rows = [{"question": "Q0", "answer": "#### 5"}, {"question": "Q1", "answer": answer}]
    with pytest.raises(DataError) as exc:
        make_gsm8k(write_jsonl(tmp_path / "g.jsonl", rows))
    assert one_line(exc).startswith(f"{tmp_path / 'g.jsonl'}:2: answer field 'answer' holds text without a '#### <answer>' line")


# ---------------------------------------------------------------- bad input


def one_line(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert "\n" not in message, "errors must be one line"
    return message


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError) as exc:
        make_task(tmp_path / "nope.jsonl")
    assert "nope.jsonl" in one_line(exc) and "not found" in one_line(exc)


@pytest.mark.parametrize("name", ["empty.jsonl", "empty.json", "empty.parquet"])
def test_empty_file(tmp_path: Path, name: str) -> None:
    (tmp_path / name).write_text("")
    with pytest.raises(DataError) as exc:
        make_task(tmp_path / name)
    assert name in one_line(exc) and "empty" in one_line(exc)


def test_whitespace_only_file(tmp_path: Path) -> None:
    (tmp_path / "blank.jsonl").write_text("\n  \n")
    with pytest.raises(DataError, match=r"blank\.jsonl: file is empty"):
        make_task(tmp_path / "blank.jsonl")


@pytest.mark.parametrize("content", ["[]", '{"data": []}'])
def test_no_rows(tmp_path: Path, content: str) -> None:
    (tmp_path / "none.json").write_text(content)
    with pytest.raises(DataError, match=r"none\.json: contains no problems"):
        make_task(tmp_path / "none.json")


def test_empty_parquet_table(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"problem": pa.array([], pa.string())}), tmp_path / "zero.parquet")
    with pytest.raises(DataError, match=r"zero\.parquet: contains no problems"):
        make_task(tmp_path / "zero.parquet")


def test_bad_json_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.jsonl"
    path.write_text(json.dumps(ROWS[0]) + "\n" + '{"problem": "x", "answer": }\n')
    with pytest.raises(DataError) as exc:
        make_task(path)
    assert "broken.jsonl:2: invalid JSON" in one_line(exc)


def test_bad_json_document(tmp_path: Path) -> None:
    path = tmp_path / "broken.json"
    path.write_text('[\n  {"problem": "x",\n   "answer": "1",,}\n]')
    with pytest.raises(DataError) as exc:
        make_task(path)
    assert "broken.json:3: invalid JSON" in one_line(exc)


def test_json_wrong_shape(tmp_path: Path) -> None:
    path = tmp_path / "shape.json"
    path.write_text('{"rows": []}')
    with pytest.raises(DataError) as exc:
        make_task(path)
    assert "shape.json" in one_line(exc) and '"data"' in one_line(exc) and "'rows'" in one_line(exc)


def test_missing_question_field(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "noq.jsonl", [ROWS[0], {"question": "Q?", "answer": "1"}])
    with pytest.raises(DataError) as exc:
        make_task(path)
    message = one_line(exc)
    assert "noq.jsonl:2" in message
    assert "'problem'" in message  # the field that is missing
    assert "row has fields: 'question', 'answer'" in message


def test_missing_answer(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "noa.jsonl", [ROWS[0], ROWS[1], {"problem": "P?", "solution": "no box here"}])
    with pytest.raises(DataError) as exc:
        make_task(path)
    message = one_line(exc)
    assert "noa.jsonl:3: no answer" in message
    assert "'answer'" in message and "'solution'" in message
    assert "row has fields: 'problem', 'solution'" in message


@pytest.mark.parametrize(
    ("row", "field", "type_name"),
    [
        ({"problem": 12, "answer": "1"}, "'problem'", "number"),
        ({"problem": ["a", "b"], "answer": "1"}, "'problem'", "list"),
        ({"problem": "Q?", "answer": ["1"]}, "'answer'", "list"),
        ({"problem": "Q?", "answer": True}, "'answer'", "boolean"),
        ({"problem": "Q?", "solution": {"text": "x"}}, "'solution'", "object"),
    ],
)
def test_wrong_field_type(tmp_path: Path, row: dict, field: str, type_name: str) -> None:
    path = write_jsonl(tmp_path / "types.jsonl", [ROWS[0], ROWS[1], row])
    with pytest.raises(DataError) as exc:
        make_task(path)
    message = one_line(exc)
    assert "types.jsonl:3" in message and field in message and type_name in message


def test_row_not_an_object(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "scalar.jsonl", [ROWS[0], "just a string"])
    with pytest.raises(DataError, match=r"scalar\.jsonl:2: expected an object per row, got string"):
        make_task(path)


def test_json_rows_are_located_by_line(tmp_path: Path) -> None:
    path = tmp_path / "lines.json"
    path.write_text(
        '{"note": "keys before data are skipped",\n'
        ' "data": [\n'
        '  {"problem": "A?", "answer": "1"},\n'
        '  {"problem": "B?",\n'
        '   "answer": "2"}, {"problem": 5,\n'
        '   "answer": "3"}\n'
        ']}\n'
    )
    with pytest.raises(DataError) as exc:
        make_task(path)
    # the offending object starts on line 5, where its opening brace is
    assert "lines.json:5: question field 'problem' must be a string, got number 5" in one_line(exc)


def test_parquet_rows_are_located_by_row(tmp_path: Path) -> None:
    path = write_parquet(tmp_path / "p.parquet", [{"problem": "A?", "answer": "1"}, {"problem": "B?", "answer": None}])
    with pytest.raises(DataError) as exc:
        make_task(path, solution_field=None)
    assert "p.parquet row 1: no answer: answer field 'answer' is missing or empty" in one_line(exc)


def test_corrupt_parquet(tmp_path: Path) -> None:
    (tmp_path / "bad.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(DataError, match=r"bad\.parquet: not a readable Parquet file"):
        make_task(tmp_path / "bad.parquet")


def test_missing_and_duplicate_ids(tmp_path: Path) -> None:
    rows = [{"problem": "A?", "answer": "1", "id": "x"}, {"problem": "B?", "answer": "2", "id": "x"}]
    with pytest.raises(DataError) as exc:
        make_task(write_jsonl(tmp_path / "dup.jsonl", rows), id_field="id")
    assert "dup.jsonl:2: duplicate problem id 'x'" in one_line(exc) and "dup.jsonl:1" in one_line(exc)
    with pytest.raises(DataError) as exc:
        make_task(write_jsonl(tmp_path / "noid.jsonl", rows), id_field="uid")
    assert "noid.jsonl:1: missing id field 'uid'" in one_line(exc)


def test_unsupported_extension(tmp_path: Path) -> None:
    (tmp_path / "data.csv").write_text("problem,answer\n")
    with pytest.raises(DataError) as exc:
        make_task(tmp_path / "data.csv")
    assert "data.csv" in one_line(exc) and ".jsonl, .json, .parquet" in one_line(exc)


def test_path_and_dataset_both_or_neither(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="exactly one of path= .* or dataset=.*neither"):
        make_task()
    with pytest.raises(ConfigError, match="both was given"):
        make_gsm8k(path=tmp_path / "a.jsonl", dataset="openai/gsm8k")


def test_bad_options(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "ok.jsonl", ROWS)
    with pytest.raises(ConfigError, match="answer_field and solution_field are both None"):
        make_task(path, answer_field=None, solution_field=None)
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ConfigError, match="limit must be a positive integer"):
            make_task(path, limit=bad)
