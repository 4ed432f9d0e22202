"""MATH- and GSM8K-style tasks: word problems with one final answer.

Problems come from a local file or a Hugging Face dataset:

* ``.jsonl`` — one JSON object per line (blank lines are skipped);
* ``.json`` — a list of objects, or an object whose ``"data"`` key holds one;
* ``.parquet`` — one row per problem;
* ``dataset="owner/name"`` — anything :func:`datasets.load_dataset` accepts
  (a hub name or a local dataset directory), with ``config_name`` and ``split``.

The oracle answer of a row is read once, at load, and is what scoring, samples
and reasons all use: its ``answer_field`` when that is present and non-empty,
otherwise the final answer read from its ``solution_field`` with
:func:`~selfcorrect.tasks.answers.extract_final_answer` (``\\boxed{...}``).
An answer field holding a whole MATH solution gives its last ``\\boxed{}``.
For GSM8K the answer field holds a worked solution ending in ``#### 72``, of
which only ``72`` is kept, or the answer alone; longer text without ``####``
is refused (its whole solution would otherwise stand as the answer).
docs/data.md lists every task's input format.

Problem ids are the ``id_field`` value when one is named, otherwise
``"{source}-{row}"``: ``source`` is the file's stem (``test.jsonl`` → ``test``)
or, for a dataset, the last part of its name plus the split
(``competition_math-test``); ``row`` is the 0-based position of the row in
the source, so ids survive ``limit`` and re-runs.

The attempt-1 prompt is the paper's MATH instruction followed by the problem::

    {instruction}

    Problem:
    {question}

(the chat template supplies the assistant turn, so no trailing "Solution:").

Every problem in the input is reported with a :class:`~selfcorrect.errors.DataError`
whose one-line message starts with where it is: ``file.jsonl:12`` (file and
line) for JSON files, ``file.parquet row 3`` for Parquet and datasets.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigError, DataError, first_line
from ..hub import load_hub_dataset
from .answers import (answers_equivalent, extract_boxed_answer, extract_final_answer, extract_gsm8k_answer,
                      extract_stated_answer, math_reward)
from .base import Problem, Task
from .prompts import MATH_CORRECTION, MATH_INSTRUCTION

__all__ = ["make_task", "make_gsm8k", "SUPPORTED_SUFFIXES"]

SUPPORTED_SUFFIXES = (".jsonl", ".json", ".parquet")
"""File types :func:`make_task` can read."""

AnswerParser = Callable[[str], "str | None"]


@dataclass(frozen=True)
class _Row:
    """One raw record and where it came from."""

    index: int
    """0-based position in the source (used in default ids)."""
    where: str
    """Location for messages: ``file.jsonl:12`` or ``file.parquet row 3``."""
    data: Any
    """The decoded record (a mapping when the input is well formed)."""


@dataclass(frozen=True)
class _Fields:
    """Which row fields hold what (the ``*_field`` arguments)."""

    question: str
    answer: str | None
    solution: str | None
    id: str | None


# --------------------------------------------------------------------------
# Public constructors
# --------------------------------------------------------------------------


def make_task(
    path: str | os.PathLike[str] | None = None,
    dataset: str | None = None,
    split: str = "test",
    config_name: str | None = None,
    question_field: str = "problem",
    answer_field: str | None = "answer",
    solution_field: str | None = "solution",
    id_field: str | None = None,
    limit: int | None = None,
    instruction: str | None = None,
    correction_instruction: str | None = None,
) -> Task:
    """A MATH-style task (name ``"math"``) from a local file or a dataset.

    Give exactly one of ``path`` (``.jsonl``/``.json``/``.parquet``) and
    ``dataset`` (a :func:`datasets.load_dataset` name; ``split`` and
    ``config_name`` apply to it only).  ``limit`` keeps the first N problems.
    ``instruction``/``correction_instruction`` default to the paper's MATH
    prompts.  See the module docstring for answers, ids and the prompt.

    Raises:
        ConfigError: both or neither of ``path``/``dataset``; no answer source;
            a bad ``limit``.
        DataError: the file or a row is unusable (the message says where).
    """
    return _build_task(
        name="math",
        answer_parser=_plain_answer,
        path=path,
        dataset=dataset,
        split=split,
        config_name=config_name,
        fields=_Fields(question_field, answer_field, solution_field, id_field),
        limit=limit,
        instruction=instruction,
        correction_instruction=correction_instruction,
    )


def make_gsm8k(
    path: str | os.PathLike[str] | None = None,
    dataset: str | None = None,
    split: str = "test",
    config_name: str | None = None,
    question_field: str = "question",
    answer_field: str | None = "answer",
    solution_field: str | None = None,
    id_field: str | None = None,
    limit: int | None = None,
    instruction: str | None = None,
    correction_instruction: str | None = None,
) -> Task:
    """A GSM8K-style task (name ``"gsm8k"``); arguments as :func:`make_task`.

    The answer field may hold the full GSM8K solution (``"... #### 72"``):
    the text after the last ``####`` is the answer.  A value without ``####``
    is used as it is when it is one line of at most :data:`GSM8K_PLAIN_WORDS`
    words, and refused otherwise.  For the hub copy use ``dataset="openai/gsm8k",
    config_name="main"``.
    """
    return _build_task(
        name="gsm8k",
        answer_parser=_gsm8k_answer,
        path=path,
        dataset=dataset,
        split=split,
        config_name=config_name,
        fields=_Fields(question_field, answer_field, solution_field, id_field),
        limit=limit,
        instruction=instruction,
        correction_instruction=correction_instruction,
    )


def _plain_answer(text: str) -> str | None:
    """A MATH answer field: the answer itself (``"\\frac{1}{2}"``), or a whole solution holding a
    ``\\boxed{}``, of which the last box is the answer (so reasons and samples show ``9``, not
    ``"$3^2 = \\boxed{9}$"``; math-verify already scored the two alike)."""
    return extract_boxed_answer(text) or text.strip() or None


GSM8K_PLAIN_WORDS = 3
"""A GSM8K answer field without ``####`` is taken as the answer itself only up to this many words, on one line;
longer text is a solution whose answer cannot be read, and the row is refused."""


def _gsm8k_answer(text: str) -> str | None:
    """A GSM8K answer field: a worked solution ending in ``#### 72`` (the text after the last marker), or the
    answer alone (``"72"``).  Raises ValueError for other text: its whole solution would be the gold answer."""
    if "####" in text:
        return extract_gsm8k_answer(text)
    plain = text.strip()
    if "\n" in plain or len(plain.split()) > GSM8K_PLAIN_WORDS:
        raise ValueError("holds text without a '#### <answer>' line (a GSM8K solution ends with '#### 72'): "
                         "give the final answer alone or the solution with its '####' line")
    return plain or None


# --------------------------------------------------------------------------
# Assembly
# --------------------------------------------------------------------------


def _build_task(
    *,
    name: str,
    answer_parser: AnswerParser,
    path: str | os.PathLike[str] | None,
    dataset: str | None,
    split: str,
    config_name: str | None,
    fields: _Fields,
    limit: int | None,
    instruction: str | None,
    correction_instruction: str | None,
) -> Task:
    _check_options(name, path, dataset, fields, limit)
    instruction = MATH_INSTRUCTION if instruction is None else instruction
    correction = MATH_CORRECTION if correction_instruction is None else correction_instruction

    if path is not None:
        rows = _read_file(Path(path), limit)
        source = Path(path).stem
    else:
        assert dataset is not None  # _check_options guarantees one of the two
        rows = _read_dataset(dataset, config_name, split, limit)
        source = f"{dataset.rstrip('/').split('/')[-1]}-{split}"

    problems = _problems_from_rows(rows, fields, source, answer_parser)

    def format_prompt(problem: Problem) -> str:
        return f"{instruction}\n\nProblem:\n{problem.question}"

    def verify(completion: str, problem: Problem) -> float:
        return math_reward(completion, problem.answer or "")

    options = {
        "path": None if path is None else str(path),
        "dataset": dataset,
        "split": split,
        "config_name": config_name,
        "question_field": fields.question,
        "answer_field": fields.answer,
        "solution_field": fields.solution,
        "id_field": fields.id,
        "limit": limit,
        "instruction": instruction,
        "correction_instruction": correction,
    }
    return Task(
        name=name,
        problems=problems,
        format_prompt=format_prompt,
        correction_instruction=correction,
        verify=verify,
        extract_answer=extract_final_answer,
        follows_format=lambda completion: extract_stated_answer(completion) is not None,
        same_answer=answers_equivalent,
        options=options,
    )


def _check_options(
    name: str,
    path: str | os.PathLike[str] | None,
    dataset: str | None,
    fields: _Fields,
    limit: int | None,
) -> None:
    """Reject argument combinations that cannot work, before touching any file."""
    if (path is None) == (dataset is None):
        given = "both" if path is not None else "neither"
        raise ConfigError(
            f"task {name!r}: give exactly one of path= (a .jsonl/.json/.parquet file) "
            f"or dataset= (a datasets.load_dataset name); {given} was given"
        )
    if fields.answer is None and fields.solution is None:
        raise ConfigError(
            f"task {name!r}: answer_field and solution_field are both None; "
            "at least one is needed to know each problem's answer"
        )
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ConfigError(f"task {name!r}: limit must be a positive integer or None, got {limit!r}")


def _problems_from_rows(
    rows: Iterable[_Row], fields: _Fields, source: str, answer_parser: AnswerParser
) -> list[Problem]:
    problems: list[Problem] = []
    first_seen: dict[str, str] = {}  # id -> location, to name both rows of a duplicate
    for row in rows:
        problem = _problem_from_row(row, fields, source, answer_parser)
        if problem.id in first_seen:
            raise DataError(
                f"{row.where}: duplicate problem id {problem.id!r} "
                f"(already used at {first_seen[problem.id]})"
            )
        first_seen[problem.id] = row.where
        problems.append(problem)
    return problems


def _problem_from_row(row: _Row, fields: _Fields, source: str, answer_parser: AnswerParser) -> Problem:
    if not isinstance(row.data, Mapping):
        raise DataError(f"{row.where}: expected an object per row, got {_type_name(row.data)}")
    question = _question(row, fields.question)
    answer = _answer(row, fields, answer_parser)
    problem_id = _problem_id(row, fields.id, source)
    used = {fields.question, fields.id}
    meta = {
        "source": row.where,
        "row": {key: value for key, value in row.data.items() if key not in used},
    }
    return Problem(id=problem_id, question=question, answer=answer, meta=meta)


def _question(row: _Row, field: str) -> str:
    value = row.data.get(field)
    if field not in row.data or value is None:
        raise DataError(f"{row.where}: missing question field {field!r} ({_fields_of(row)})")
    if not isinstance(value, str):
        raise DataError(
            f"{row.where}: question field {field!r} must be a string, got {_type_name(value)}"
        )
    if not value.strip():
        raise DataError(f"{row.where}: question field {field!r} is empty")
    return value


def _answer(row: _Row, fields: _Fields, answer_parser: AnswerParser) -> str:
    """The oracle answer: answer field first, then the solution's final answer."""
    if fields.answer is not None:
        value = row.data.get(fields.answer)
        if value is not None:
            text = _scalar_text(row, fields.answer, value, "answer")
            try:
                answer = answer_parser(text)
            except ValueError as exc:
                raise DataError(f"{row.where}: answer field {fields.answer!r} {exc}") from None
            if answer:
                return answer
    if fields.solution is not None:
        value = row.data.get(fields.solution)
        if value is not None:
            if not isinstance(value, str):
                raise DataError(
                    f"{row.where}: solution field {fields.solution!r} must be a string, "
                    f"got {_type_name(value)}"
                )
            answer = extract_final_answer(value)
            if answer:
                return answer
    raise DataError(f"{row.where}: no answer: {_answer_sources(fields)} ({_fields_of(row)})")


def _answer_sources(fields: _Fields) -> str:
    """Describe where an answer was looked for, for the "no answer" message."""
    parts = []
    if fields.answer is not None:
        parts.append(f"answer field {fields.answer!r} is missing or empty")
    if fields.solution is not None:
        parts.append(
            f"solution field {fields.solution!r} is missing or has no final answer "
            "(\\boxed{...}, 'The final answer is ...' or '#### ...')"
        )
    return " and ".join(parts)


def _problem_id(row: _Row, field: str | None, source: str) -> str:
    if field is None:
        return f"{source}-{row.index}"
    if field not in row.data or row.data[field] is None:
        raise DataError(f"{row.where}: missing id field {field!r} ({_fields_of(row)})")
    problem_id = _scalar_text(row, field, row.data[field], "id")
    if not problem_id:
        raise DataError(f"{row.where}: id field {field!r} is empty")
    return problem_id


def _scalar_text(row: _Row, field: str, value: Any, role: str) -> str:
    """A string or number field as text (answers and ids may be numeric)."""
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    raise DataError(
        f"{row.where}: {role} field {field!r} must be a string or number, got {_type_name(value)}"
    )


def _fields_of(row: _Row) -> str:
    names = ", ".join(repr(str(key)) for key in row.data) or "none"
    return f"row has fields: {names}"


def _type_name(value: Any) -> str:
    """JSON-flavoured type names: users write JSON, not Python."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return f"number {value!r}"
    if isinstance(value, str):
        return "string"
    if isinstance(value, Mapping):
        return "object"
    if isinstance(value, (list, tuple)):
        return "list"
    return type(value).__name__


# --------------------------------------------------------------------------
# Reading files
# --------------------------------------------------------------------------


def _read_file(path: Path, limit: int | None) -> list[_Row]:
    suffix = path.suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        raise DataError(
            f"{path}: unsupported file type {suffix or '(no extension)'!r}; "
            f"use one of {', '.join(SUPPORTED_SUFFIXES)}"
        )
    if not path.exists():
        raise DataError(f"{path}: file not found")
    if path.is_dir():
        raise DataError(f"{path}: is a directory, expected a {suffix} file")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: file is empty")
    if suffix == ".parquet":
        rows = _read_parquet(path)
    else:
        text = _read_text(path)
        rows = _read_jsonl(path, text, limit) if suffix == ".jsonl" else _read_json(path, text)
    if not rows:
        raise DataError(f"{path}: contains no problems")
    return rows[:limit]


def _read_text(path: Path) -> str:
    try:
        text = path.read_text(encoding="utf-8-sig")  # -sig: tolerate a BOM
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text (byte {exc.start})") from exc
    if not text.strip():
        raise DataError(f"{path}: file is empty")
    return text


def _read_jsonl(path: Path, text: str, limit: int | None) -> list[_Row]:
    rows: list[_Row] = []
    for line_number, line in enumerate(text.splitlines(), start=1):
        if limit is not None and len(rows) >= limit:
            break  # no need to read (or validate) lines past the limit
        if not line.strip():
            continue
        try:
            data = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(
                f"{path}:{line_number}: invalid JSON ({exc.msg} at column {exc.colno})"
            ) from exc
        rows.append(_Row(len(rows), f"{path}:{line_number}", data))
    return rows


def _read_json(path: Path, text: str) -> list[_Row]:
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}:{exc.lineno}: invalid JSON ({exc.msg} at column {exc.colno})") from exc
    wrapped = isinstance(document, dict)
    records = document.get("data") if wrapped else document
    if not isinstance(records, list):
        found = f"an object with keys {sorted(document)}" if wrapped else _type_name(document)
        raise DataError(
            f"{path}: expected a list of objects or an object with a \"data\" list, got {found}"
        )
    lines = _json_element_lines(text, wrapped)
    if lines is None or len(lines) != len(records):
        lines = None  # could not locate rows; fall back to row numbers
    return [
        _Row(i, f"{path}:{lines[i]}" if lines else f"{path} row {i}", record)
        for i, record in enumerate(records)
    ]


_WHITESPACE = re.compile(r"[ \t\n\r]*")


def _json_element_lines(text: str, wrapped: bool) -> list[int] | None:
    """1-based line on which each element of the JSON array starts.

    ``json`` does not report positions of decoded values, so we walk the
    already-validated document with ``raw_decode``: for ``{"data": [...]}``
    to the (last) ``"data"`` value, then element by element.  Returns
    ``None`` if the walk goes wrong, so callers can fall back to row numbers.
    """
    decoder = json.JSONDecoder()

    def skip(pos: int, expected: str = "") -> int:
        pos = _WHITESPACE.match(text, pos).end()
        if expected:
            if text[pos] != expected:
                raise ValueError(f"expected {expected!r} at {pos}")
            pos = _WHITESPACE.match(text, pos + 1).end()
        return pos

    try:
        pos = skip(0)
        if wrapped:
            pos = skip(pos, "{")
            array_pos = None
            while text[pos] != "}":
                key, pos = decoder.raw_decode(text, pos)
                pos = skip(pos, ":")
                if key == "data":
                    array_pos = pos
                _, pos = decoder.raw_decode(text, pos)
                pos = skip(pos)
                if text[pos] == ",":
                    pos = skip(pos + 1)
            if array_pos is None:
                return None
            pos = array_pos
        pos = skip(pos, "[")
        starts: list[int] = []
        while text[pos] != "]":
            starts.append(pos)
            _, pos = decoder.raw_decode(text, pos)
            pos = skip(pos)
            if text[pos] == ",":
                pos = skip(pos + 1)
    except (ValueError, IndexError):
        return None
    # starts are increasing, so count newlines between neighbours: O(len(text)).
    lines, line, previous = [], 1, 0
    for start in starts:
        line += text.count("\n", previous, start)
        lines.append(line)
        previous = start
    return lines


def _read_parquet(path: Path) -> list[_Row]:
    import pyarrow.parquet as pq  # lazy: only Parquet users pay for pyarrow

    try:
        records = pq.read_table(path).to_pylist()
    except Exception as exc:  # pyarrow raises several types for a damaged file
        raise DataError(f"{path}: not a readable Parquet file ({first_line(exc)})") from exc
    return [_Row(i, f"{path} row {i}", record) for i, record in enumerate(records)]


def _read_dataset(dataset: str, config_name: str | None, split: str, limit: int | None) -> list[_Row]:
    where = f"{dataset}[{split}]" if config_name is None else f"{dataset}/{config_name}[{split}]"
    data = load_hub_dataset(dataset, config_name, split, where)
    if limit is not None:
        data = data.select(range(min(limit, len(data))))
    rows = [_Row(i, f"{where} row {i}", record) for i, record in enumerate(data)]
    if not rows:
        raise DataError(f"{where}: contains no problems")
    return rows
