"""Tasks: problems, prompts and verifiers.

``load_task(name, **options)`` builds a :class:`Task` from

* a built-in name: ``arithmetic``, ``strings``, ``math``, ``gsm8k``, ``humaneval``, ``mbpp``;
* ``package.module:function`` or ``path/to/file.py:function`` — the user's own
  factory returning a :class:`Task`;
* the name of an entry point in the ``selfcorrect.tasks`` group (so a pip
  package can register tasks).

Options are the factory's keyword arguments.  Strings coming from the command
line (``--task-option digits=3``) are converted to the annotated type; an
unknown option or a value of the wrong type raises :class:`ConfigError` that
lists what is valid.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import inspect
import sys
import types
import typing
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .base import Problem, Task, Verdict

__all__ = ["Problem", "Task", "Verdict", "load_task", "accepts_option", "BUILTIN_TASKS", "parse_task_options"]

BUILTIN_TASKS: dict[str, str] = {
    "arithmetic": "selfcorrect.tasks.arithmetic:make_task",
    "strings": "selfcorrect.tasks.strings:make_task",
    "math": "selfcorrect.tasks.math:make_task",
    "gsm8k": "selfcorrect.tasks.math:make_gsm8k",
    "humaneval": "selfcorrect.tasks.code:make_humaneval",
    "mbpp": "selfcorrect.tasks.code:make_mbpp",
}
ENTRY_POINT_GROUP = "selfcorrect.tasks"


def _find_task_file(spec: str) -> Path | None:
    """``spec`` from the working directory, else inside the package (the shipped example:
    ``examples/custom_task.py``), so the documented commands work from any directory."""
    path = Path(spec)
    if path.is_file():
        return path
    package = Path(__file__).resolve().parents[1]                  # .../selfcorrect
    if not path.is_absolute():
        for candidate in (package / path, package.parent / path):
            if candidate.is_file():
                return candidate
    return None


def _import_target(target: str, name: str) -> Callable[..., Task]:
    module_name, _, attr = target.rpartition(":")
    if not module_name or not attr:
        raise ConfigError(f"task {name!r}: expected 'module:function' or 'path/to/file.py:function'")
    try:
        if module_name.endswith(".py"):
            path = _find_task_file(module_name)
            if path is None:
                raise ConfigError(f"task {name!r}: file not found: {module_name}")
            spec = importlib.util.spec_from_file_location(f"selfcorrect_user_task_{path.stem}", path)
            module = importlib.util.module_from_spec(spec)
            sys.modules[spec.name] = module
            spec.loader.exec_module(module)
        else:
            module = importlib.import_module(module_name)
    except ImportError as err:
        raise ConfigError(f"task {name!r}: cannot import module {module_name!r}: {err}") from err
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise ConfigError(f"task {name!r}: module {module_name!r} has no callable {attr!r}")
    return factory


def _entry_points() -> dict[str, importlib.metadata.EntryPoint]:
    return {ep.name: ep for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)}


def _find_factory(name: str) -> Callable[..., Task]:
    if name in BUILTIN_TASKS:
        return _import_target(BUILTIN_TASKS[name], name)
    if ":" in name:
        return _import_target(name, name)
    eps = _entry_points()
    if name in eps:
        return eps[name].load()
    valid = sorted(BUILTIN_TASKS) + sorted(eps)
    raise ConfigError(
        f"unknown task {name!r}; choose one of: {', '.join(valid)}, or give your own as 'module:function'"
    )


def _convert(value: Any, annotation: Any, where: str) -> Any:
    """Convert a CLI string to ``annotation`` (int, float, bool, str, optional of those)."""
    if not isinstance(value, str) or annotation is inspect.Parameter.empty:
        return value
    if isinstance(annotation, str):  # postponed annotations ("int | None")
        annotation = {"int": int, "float": float, "bool": bool, "str": str}.get(annotation.split("|")[0].strip(), str)
    options = typing.get_args(annotation) if typing.get_origin(annotation) in (typing.Union, types.UnionType) else (annotation,)
    if type(None) in options and value.lower() in ("none", "null"):
        return None
    for kind in options:
        if kind is bool:
            if value.lower() in ("1", "true", "yes", "on"):
                return True
            if value.lower() in ("0", "false", "no", "off"):
                return False
        elif kind in (int, float):
            try:
                return kind(value)
            except ValueError:
                continue
        elif kind is str:
            return value
    names = " or ".join(getattr(k, "__name__", str(k)) for k in options)
    raise ConfigError(f"{where}: expected {names}, got {value!r}")


def _bind_options(factory: Callable[..., Task], name: str, options: Mapping[str, Any]) -> dict[str, Any]:
    sig = inspect.signature(factory)
    params = sig.parameters
    takes_kwargs = any(p.kind is p.VAR_KEYWORD for p in params.values())
    try:
        hints = typing.get_type_hints(factory)
    except Exception:  # unresolvable annotations: fall back to the raw ones
        hints = {}
    bound = {}
    for key, value in options.items():
        key = key.replace("-", "_")  # `-o min-digits=1` works like `-o min_digits=1`
        if key not in params and not takes_kwargs:
            valid = ", ".join(p for p in params if params[p].kind is not inspect.Parameter.VAR_POSITIONAL)
            raise ConfigError(f"task {name!r} has no option {key!r}; valid options: {valid}")
        annotation = hints.get(key, params[key].annotation if key in params else inspect.Parameter.empty)
        bound[key] = _convert(value, annotation, f"task {name!r} option {key!r}")
    return bound


def accepts_option(name: str, option: str) -> bool:
    """Whether task ``name``'s factory takes ``option`` (e.g. ``split``) as a keyword."""
    params = inspect.signature(_find_factory(name)).parameters
    return option in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


def load_task(name: str, **options: Any) -> Task:
    """Build a task by name (see the module docstring); ``options`` go to its factory."""
    if not isinstance(name, str) or not name:
        raise ConfigError("task name must be a non-empty string")
    factory = _find_factory(name)
    task = factory(**_bind_options(factory, name, options))
    if not isinstance(task, Task):
        raise ConfigError(f"task {name!r}: factory returned {type(task).__name__}, expected selfcorrect.tasks.Task")
    if not task.problems:
        raise ConfigError(f"task {name!r} has no problems with options {dict(options)}")
    return task


def parse_task_options(pairs: list[str] | None) -> dict[str, str]:
    """``["digits=3", "operations=+-"]`` → ``{"digits": "3", "operations": "+-"}``."""
    out: dict[str, str] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"task option {pair!r} must look like key=value")
        out[key.strip().replace("-", "_")] = value
    return out
