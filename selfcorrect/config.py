"""Config dataclasses ↔ YAML files ↔ command-line flags.

Every run is described by one flat dataclass (``EvalConfig``, ``TrainConfig``,
...) whose fields carry a docstring each.  A run's values come from, in
increasing priority: the dataclass defaults, a YAML file (``--config
file.yaml``), and command-line flags (``--field-name value``; underscores
become dashes).  :func:`build_config` merges them and converts and checks
every value, so a typo or a wrong type fails with one message that names the
field and where the value came from, before any work starts.

The field docstrings are read from the source (``ast``) and become the
``--help`` text, so documentation lives in exactly one place.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import textwrap
import types
import typing
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError

_MISSING = object()


def field_docs(cls: type) -> dict[str, str]:
    """``{field: docstring}`` for a dataclass whose fields are followed by string literals."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError):
            continue
        body = tree.body[0].body  # type: ignore[attr-defined]
        for stmt, nxt in zip(body, body[1:]):
            if (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)
                    and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant)
                    and isinstance(nxt.value.value, str)):
                docs[stmt.target.id] = " ".join(nxt.value.value.split())
    return docs


def ordered_fields(cls: type) -> list[dataclasses.Field]:
    """``cls``'s fields, its own first (in declaration order), then the inherited ones.

    (A dataclass lists a base class's fields first; a config reads better with its own -- ``model``,
    ``task`` -- before the shared sampling knobs.)
    """
    own = list(vars(cls).get("__annotations__", {}))
    fields = {f.name: f for f in dataclasses.fields(cls)}
    return [fields[n] for n in own if n in fields] + [f for n, f in fields.items() if n not in own]


def _describe(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _parse_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on"):
        return True
    if isinstance(value, str) and value.lower() in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected true/false, got {value!r}")


def convert(value: Any, tp: Any) -> Any:
    """Convert ``value`` (YAML value or CLI string) to the annotated type ``tp``; raise ValueError if it cannot."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            if type(None) in args:
                return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return convert(value, arg)
            except (ValueError, TypeError) as err:
                errors.append(str(err))
        raise ValueError("; ".join(errors))
    if tp is Any:
        return value
    if tp is bool:
        return _parse_bool(value)
    if tp is int:
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise ValueError(f"expected an integer, got {value!r}")
        try:
            return int(value)
        except (TypeError, ValueError):
            raise ValueError(f"expected an integer, got {value!r}") from None
    if tp is float:
        if isinstance(value, bool):
            raise ValueError(f"expected a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ValueError(f"expected a number, got {value!r}") from None
    if tp is str:
        if value is None or isinstance(value, (dict, list)):
            raise ValueError(f"expected a string, got {value!r}")
        return str(value)
    if origin in (list, tuple) or tp in (list, tuple):
        item = args[0] if args else Any
        if isinstance(value, str):
            value = [v for v in (p.strip() for p in value.split(",")) if v]
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"expected a list, got {value!r}")
        return [convert(v, item) for v in value]
    if origin in (dict, Mapping) or tp is dict:
        if isinstance(value, str):
            value = dict(_split_pair(p) for p in value.split(",") if p.strip())
        if not isinstance(value, Mapping):
            raise ValueError(f"expected a mapping, got {value!r}")
        return dict(value)
    if typing.get_origin(tp) is typing.Literal:
        if value not in args:
            raise ValueError(f"expected one of {', '.join(map(str, args))}, got {value!r}")
        return value
    return value


def _split_pair(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ValueError(f"expected KEY=VALUE, got {text!r}")
    return key.strip(), value.strip()


SHIPPED_CONFIGS = Path(__file__).resolve().parent / "configs"
"""The configs that come with the package (``demo``, ``eval``, ``math``, ``mbpp``, ``humaneval``)."""


def find_config(path: str | Path) -> Path:
    """The YAML file ``path`` names: a path from the working directory, else a shipped config by name
    (``demo``, ``math.yaml``) or by its path in the source tree (``selfcorrect/configs/math.yaml``),
    so the README's commands work from any directory."""
    given = Path(path)
    if given.is_file():
        return given
    if not given.is_absolute():
        for candidate in (SHIPPED_CONFIGS / given, SHIPPED_CONFIGS / f"{given}.yaml",
                          SHIPPED_CONFIGS.parent.parent / given):
            if candidate.is_file():
                return candidate
    names = ", ".join(sorted(p.stem for p in SHIPPED_CONFIGS.glob("*.yaml")))
    raise ConfigError(f"config file not found: {path} (shipped configs, by name: {names})")


def load_yaml(path: str | Path) -> dict[str, Any]:
    """A YAML mapping from ``path`` (see :func:`find_config`); a missing file, bad syntax or a
    non-mapping raise ConfigError."""
    path = find_config(path)
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f":{mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}{where}: invalid YAML: {getattr(err, 'problem', err)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of field: value at the top level")
    return data


def from_dict(cls: type, data: Mapping[str, Any], source: str = "config",
              sources: Mapping[str, str] | None = None):
    """Build ``cls`` from ``data``, converting types; unknown keys and bad values raise ConfigError.

    ``sources`` optionally names, per field, where its value came from (default: ``source``).
    """
    fields = {f.name: f for f in ordered_fields(cls)}
    hints = typing.get_type_hints(cls)
    data = renamed_fields(cls, data, source)
    unknown = sorted(set(data) - set(fields), key=str)
    if unknown:
        raise ConfigError(
            f"{source}: unknown field{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}; "
            f"valid fields: {', '.join(fields)}"
        )
    kwargs = {}
    for name, value in data.items():
        try:
            kwargs[name] = convert(value, hints[name])
        except (ValueError, TypeError) as err:
            where = (sources or {}).get(name, source)
            raise ConfigError(f"{where}: field {name!r} ({_describe(hints[name])}): {err}") from None
    try:
        return cls(**kwargs)
    except ConfigError as err:
        # a check across fields: name every place the values came from (the file first)
        origins = {(sources or {}).get(name, source) for name in data} or {source}
        raise ConfigError(f"{' + '.join(sorted(origins, key=lambda o: (o == 'command line', o)))}: {err}") from None


def renamed_fields(cls: type, data: Mapping[str, Any], source: str) -> dict[str, Any]:
    """``data`` with the deprecated field names of ``cls`` (its ``RENAMED``) replaced by the new ones."""
    renamed = getattr(cls, "RENAMED", {})
    out = dict(data)
    for old, new in renamed.items():
        if old in out:
            warnings.warn(f"{source}: {old!r} is now called {new!r}; the old name works for one more release",
                          FutureWarning, stacklevel=3)
            value = out.pop(old)
            out.setdefault(new, value)
    return out


def to_dict(config: Any) -> dict[str, Any]:
    """A plain dict of a config (for YAML/JSON dumps next to results), its own fields first."""
    values = dataclasses.asdict(config)
    return {f.name: values[f.name] for f in ordered_fields(type(config))}


def add_arguments(parser: argparse.ArgumentParser, cls: type, skip: tuple[str, ...] = ()) -> None:
    """One ``--flag`` per field of ``cls`` (help = field docstring). Values stay strings until :func:`build_config`."""
    docs = field_docs(cls)
    hints = typing.get_type_hints(cls)
    for f in ordered_fields(cls):
        if f.name in skip:
            continue
        flags = [f"--{f.name.replace('_', '-')}", *f.metadata.get("aliases", ())]
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)  # type: ignore[misc]
        help_text = f"{docs.get(f.name, '')} (default: {default!r})".replace("%", "%%")
        kwargs: dict[str, Any] = dict(dest=f.name, default=argparse.SUPPRESS, help=help_text)
        if hints[f.name] is bool:
            kwargs.update(nargs="?", const="true", metavar="BOOL")
        elif f.metadata.get("append"):
            kwargs.update(action="append", metavar="KEY=VALUE")
        else:
            kwargs.update(metavar=_describe(hints[f.name]).upper().split("[")[0].split(" ")[0])
        parser.add_argument(*flags, **kwargs)
    for old in getattr(cls, "RENAMED", {}):              # deprecated flags keep working (hidden from --help)
        parser.add_argument(f"--{old.replace('_', '-')}", dest=old, default=argparse.SUPPRESS, help=argparse.SUPPRESS)


def flag_values(cls: type, args: argparse.Namespace) -> dict[str, Any]:
    """The fields of ``cls`` given as flags (not their defaults), KEY=VALUE lists as mappings."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    out: dict[str, Any] = {}
    for name, value in renamed_fields(cls, vars(args), "command line").items():
        if name in fields:
            try:
                out[name] = dict(_split_pair(v) for v in value) if fields[name].metadata.get("append") else value
            except ValueError as err:
                raise ConfigError(f"--{name.replace('_', '-')}: {err}") from None
    return out


def build_config(cls: type, args: argparse.Namespace | Mapping[str, Any] | None = None,
                 config_file: str | Path | None = None):
    """Defaults < YAML file < flags, converted and checked (see module docstring)."""
    data: dict[str, Any] = dict(load_yaml(config_file)) if config_file else {}
    source = str(config_file) if config_file else "config"
    overrides = vars(args) if isinstance(args, argparse.Namespace) else dict(args or {})
    overrides = renamed_fields(cls, overrides, "command line")
    data = renamed_fields(cls, data, source)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    sources: dict[str, str] = {}  # fields whose value comes (at least partly) from the command line
    for name, value in overrides.items():
        if name not in fields:
            continue
        if fields[name].metadata.get("append") and isinstance(value, list):
            # KEY=VALUE flags extend (and override) the mapping from the file
            try:
                pairs = dict(_split_pair(v) for v in value)
            except ValueError as err:
                raise ConfigError(f"--{name.replace('_', '-')}: {err}") from None
            base = data.get(name) or {}
            if not isinstance(base, Mapping):
                raise ConfigError(f"{source}: field {name!r} must be a mapping of key: value, got {base!r}")
            data[name] = {**base, **pairs}
        else:
            data[name] = value
        sources[name] = "command line"
    return from_dict(cls, data, source if config_file else "command line", sources)
