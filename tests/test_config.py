"""Config dataclasses ↔ YAML ↔ flags: conversion, errors that name field and source, precedence, docs."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from selfcorrect.cli import build_parser
from selfcorrect.config import build_config, convert, field_docs, from_dict, load_yaml, to_dict
from selfcorrect.errors import ConfigError
from selfcorrect.evaluation import EvalConfig


def _eval_args(*flags: str):
    """``selfcorrect eval FLAGS`` parsed by the real parser."""
    return build_parser().parse_args(["eval", *flags])


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# ---------------------------------------------------------------- convert


@pytest.mark.parametrize(
    "value, tp, expected",
    [
        ("3", int, 3),
        ("-7", int, -7),
        (4, int, 4),
        (2.0, int, 2),  # a YAML float that is a whole number
        ("0.25", float, 0.25),
        ("1e-3", float, 0.001),
        (3, float, 3.0),
        ("true", bool, True),
        ("Yes", bool, True),
        ("on", bool, True),
        ("1", bool, True),
        ("false", bool, False),
        ("NO", bool, False),
        ("0", bool, False),
        (True, bool, True),
        (False, bool, False),
        ("hello", str, "hello"),
        (12, str, "12"),
        ("2,4, 8", list[int], [2, 4, 8]),
        ("2,,4,", list[int], [2, 4]),
        ([2, "4"], list[int], [2, 4]),
        ("", list[int], []),
        ("none", int | None, None),
        ("NULL", int | None, None),
        (None, int | None, None),
        ("5", int | None, 5),
        (None, str | None, None),
        ("text", str | None, "text"),
        ("a=1, b=x", dict[str, Any], {"a": "1", "b": "x"}),
        ({"a": 1}, dict[str, Any], {"a": 1}),
    ],
)
def test_convert_accepts(value, tp, expected):
    result = convert(value, tp)
    assert result == expected
    assert type(result) is type(expected)


@pytest.mark.parametrize(
    "value, tp",
    [
        ("abc", int),
        ("2.5", int),
        (2.5, int),  # a YAML float that is not whole
        (True, int),  # YAML `true` is not a count
        (None, int),
        ("abc", float),
        (False, float),
        (None, float),
        ("maybe", bool),
        (2, bool),
        (None, bool),
        ([1], str),
        ({"a": 1}, str),
        (None, str),  # YAML `null` must not become the string "None"
        ("2,x", list[int], ),
        (4, list[int]),
        (None, list[int]),
        ("abc", int | None),
        ("novalue", dict[str, Any]),
        ([1, 2], dict[str, Any]),
    ],
)
def test_convert_rejects(value, tp):
    with pytest.raises(ValueError):
        convert(value, tp)


def test_convert_error_message_shows_the_value():
    with pytest.raises(ValueError, match=r"expected an integer, got 'abc'"):
        convert("abc", int)
    with pytest.raises(ValueError, match=r"expected true/false, got 'maybe'"):
        convert("maybe", bool)


# ---------------------------------------------------------------- from_dict


def test_from_dict_converts_every_field_type():
    cfg = from_dict(EvalConfig, {"attempts": "3", "temperature": "0.5", "scaling": "yes", "budgets": "2,4",
                                 "limit": "none", "split": None, "task_options": {"digits": 3}})
    assert (cfg.attempts, cfg.temperature, cfg.scaling, cfg.budgets) == (3, 0.5, True, [2, 4])
    assert cfg.limit is None and cfg.split is None
    assert cfg.task_options == {"digits": 3}


def test_from_dict_unknown_field_lists_valid_fields():
    with pytest.raises(ConfigError) as info:
        from_dict(EvalConfig, {"atempts": 2}, source="run.yaml")
    msg = str(info.value)
    assert msg.startswith("run.yaml: unknown field 'atempts'")
    for f in dataclasses.fields(EvalConfig):
        assert f.name in msg.split("valid fields:", 1)[1]


def test_from_dict_several_unknown_fields_of_mixed_key_types():
    # YAML allows non-string keys; the message must still be one ConfigError
    with pytest.raises(ConfigError, match=r"unknown fields 1, 'zzz'"):
        from_dict(EvalConfig, {1: "x", "zzz": 2})


@pytest.mark.parametrize(
    "field, value, type_name, bad",
    [("attempts", "two", "int", "two"), ("temperature", "hot", "float", "hot"), ("scaling", "maybe", "bool", "maybe"),
     ("budgets", "2,x", "list", "x"), ("model", None, "str", None), ("limit", "lots", "int | None", "lots")],
)
def test_from_dict_wrong_type_names_field_and_source(field, value, type_name, bad):
    with pytest.raises(ConfigError) as info:
        from_dict(EvalConfig, {field: value}, source="my.yaml")
    msg = str(info.value)
    assert msg.startswith(f"my.yaml: field {field!r} ({type_name}): ")
    assert msg.endswith(f"got {bad!r}")


def test_from_dict_post_init_error_names_source():
    with pytest.raises(ConfigError, match=r"^my\.yaml: attempts must be an integer >= 1, got 0$"):
        from_dict(EvalConfig, {"attempts": 0}, source="my.yaml")


def test_to_dict_round_trips():
    cfg = from_dict(EvalConfig, {"attempts": 3, "budgets": [2, 6], "task_options": {"digits": "1"}})
    again = from_dict(EvalConfig, to_dict(cfg))
    assert again == cfg
    assert to_dict(cfg)["budgets"] == [2, 6]


# ---------------------------------------------------------------- load_yaml


def test_load_yaml_reads_a_mapping(tmp_path):
    path = _write(tmp_path / "c.yaml", "attempts: 3\ntask_options:\n  digits: 1\n")
    assert load_yaml(path) == {"attempts": 3, "task_options": {"digits": 1}}


def test_load_yaml_empty_file_is_empty_mapping(tmp_path):
    assert load_yaml(_write(tmp_path / "c.yaml", "# only a comment\n")) == {}


def test_load_yaml_missing_file(tmp_path):
    path = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match=r"config file not found: .*nope\.yaml"):
        load_yaml(path)


def test_load_yaml_directory_is_not_a_file(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_yaml(tmp_path)


def test_load_yaml_invalid_syntax_names_file_and_line(tmp_path):
    path = _write(tmp_path / "bad.yaml", "model: default\nattempts: 2\nbudgets: [2, 4\nseed: 1\n")
    with pytest.raises(ConfigError) as info:
        load_yaml(path)
    msg = str(info.value)
    assert msg.startswith(f"{path}:")
    line = int(msg[len(str(path)) + 1:].split(":", 1)[0])
    assert line in (3, 4, 5)  # the unclosed bracket opens on line 3; the parser notices it later
    assert "invalid YAML" in msg


def test_load_yaml_tab_indentation_names_line(tmp_path):
    path = _write(tmp_path / "tab.yaml", "model: default\ntask_options:\n\tdigits: 2\n")
    with pytest.raises(ConfigError, match=rf"^{path}:3: invalid YAML"):
        load_yaml(path)


@pytest.mark.parametrize("text", ["- attempts\n- 2\n", "just a string\n", "42\n"])
def test_load_yaml_rejects_non_mapping(tmp_path, text):
    path = _write(tmp_path / "list.yaml", text)
    with pytest.raises(ConfigError, match=rf"^{path}: expected a mapping"):
        load_yaml(path)


# ---------------------------------------------------------------- build_config


def test_build_config_defaults_without_file_or_flags():
    assert build_config(EvalConfig, _eval_args(), None) == EvalConfig()


def test_build_config_precedence_defaults_yaml_flags(tmp_path):
    path = _write(tmp_path / "c.yaml", "attempts: 3\ntemperature: 0.5\nseed: 7\n")
    args = _eval_args("--config", str(path), "--attempts", "4", "--top-p", "0.9")
    cfg = build_config(EvalConfig, args, args.config)
    assert cfg.attempts == 4  # flag beats file
    assert cfg.temperature == 0.5 and cfg.seed == 7  # file beats default
    assert cfg.top_p == 0.9  # flag beats default
    assert cfg.max_new_tokens == EvalConfig().max_new_tokens  # default stays


def test_build_config_from_a_mapping():
    cfg = build_config(EvalConfig, {"attempts": "3", "not_a_field": 1})
    assert cfg.attempts == 3  # keys that are not fields (e.g. argparse's own) are ignored


def test_build_config_bool_and_list_flags():
    cfg = build_config(EvalConfig, _eval_args("--scaling", "--budgets", "2,6"))
    assert cfg.scaling is True and cfg.budgets == [2, 6]
    cfg = build_config(EvalConfig, _eval_args("--scaling", "false"))
    assert cfg.scaling is False


def test_build_config_task_options_merge_with_yaml(tmp_path):
    path = _write(tmp_path / "c.yaml", "task_options:\n  digits: 3\n  operations: '+-'\n")
    args = _eval_args("--config", str(path), "-o", "digits=1", "--task-options", "steps=2")
    cfg = build_config(EvalConfig, args, args.config)
    assert cfg.task_options == {"digits": "1", "operations": "+-", "steps": "2"}


def test_build_config_task_options_without_yaml():
    cfg = build_config(EvalConfig, _eval_args("-o", "digits=2", "-o", "path=a=b.jsonl"))
    assert cfg.task_options == {"digits": "2", "path": "a=b.jsonl"}  # only the first '=' splits


def test_build_config_task_option_without_equals():
    with pytest.raises(ConfigError, match=r"--task-options: expected KEY=VALUE, got 'digits'"):
        build_config(EvalConfig, _eval_args("-o", "digits"))


def test_build_config_task_options_in_yaml_must_be_a_mapping(tmp_path):
    path = _write(tmp_path / "c.yaml", "task_options: [digits]\n")
    args = _eval_args("--config", str(path), "-o", "digits=1")
    with pytest.raises(ConfigError, match=rf"^{path}: field 'task_options' must be a mapping"):
        build_config(EvalConfig, args, args.config)


def test_build_config_bad_flag_is_blamed_on_the_command_line(tmp_path):
    path = _write(tmp_path / "c.yaml", "temperature: 0.5\n")
    args = _eval_args("--config", str(path), "--attempts", "many")
    with pytest.raises(ConfigError, match=r"^command line: field 'attempts' \(int\): expected an integer"):
        build_config(EvalConfig, args, args.config)


def test_build_config_bad_yaml_value_is_blamed_on_the_file(tmp_path):
    path = _write(tmp_path / "c.yaml", "attempts: many\n")
    args = _eval_args("--config", str(path), "--seed", "3")
    with pytest.raises(ConfigError, match=rf"^{path}: field 'attempts' \(int\)"):
        build_config(EvalConfig, args, args.config)


def test_build_config_yaml_null_for_a_string_field(tmp_path):
    path = _write(tmp_path / "c.yaml", "out: null\n")
    with pytest.raises(ConfigError, match=rf"^{path}: field 'out' \(str\): expected a string, got None"):
        build_config(EvalConfig, None, path)


def test_build_config_unknown_yaml_field(tmp_path):
    path = _write(tmp_path / "c.yaml", "max-new-tokens: 8\n")
    with pytest.raises(ConfigError, match=rf"^{path}: unknown field 'max-new-tokens'; valid fields: .*max_new_tokens"):
        build_config(EvalConfig, _eval_args(), path)


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--attempts", "0"], "attempts must be an integer >= 1"),
        (["--samples", "2"], "samples > 1 with greedy decoding"),
        (["--temperature", "-1"], "temperature must be a number in [0, 100]"),
        (["--top-p", "0"], "top_p must be in (0, 1]"),
        (["--top-k", "-1"], "top_k must be an integer >= 0"),
        (["--max-new-tokens", "0"], "max_new_tokens must be an integer >= 1"),
        (["--limit", "0"], "limit must be >= 1"),
        (["--generation-batch-size", "0"], "generation_batch_size must be >= 1"),
        (["--scaling", "--budgets", "2,3"], "budgets must be even numbers >= 2"),
        (["--scaling-temperature", "-0.5"], "temperature must be a number in [0, 100]"),
    ],
)
def test_build_config_checks_values(flags, message):
    with pytest.raises(ConfigError) as info:
        build_config(EvalConfig, _eval_args(*flags))
    assert str(info.value).startswith("command line: ")
    assert message in str(info.value)


def test_build_config_odd_budgets_are_fine_without_scaling():
    assert build_config(EvalConfig, _eval_args("--budgets", "3")).budgets == [3]


# ---------------------------------------------------------------- field docs and --help


def test_field_docs_returns_each_docstring():
    docs = field_docs(EvalConfig)
    assert docs["attempts"] == ("Attempts per episode, K >= 1 (attempt k > 1 follows the "
                                "self-correction instruction).")
    assert docs["top_p"] == "Nucleus sampling mass (1 = off; training refuses truncated sampling)."   # inherited
    assert docs["temperature"].endswith("the paper's evaluation protocol.")                        # overridden
    # multi-line docstrings collapse to one line
    assert all("\n" not in d and "  " not in d for d in docs.values())


def test_every_eval_field_has_a_doc():
    docs = field_docs(EvalConfig)
    names = [f.name for f in dataclasses.fields(EvalConfig)]
    assert sorted(docs) == sorted(names)
    assert all(docs[n].strip() for n in names)


def test_field_docs_of_a_local_dataclass():
    @dataclasses.dataclass
    class Local:
        a: int = 1
        """First."""
        b: str = "x"
        c: float = 0.0
        """Third, on
        two lines."""

    assert field_docs(Local) == {"a": "First.", "c": "Third, on two lines."}


def test_eval_help_text_is_each_field_doc():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices["eval"]
    by_dest = {a.dest: a for a in sub._actions}
    docs = field_docs(EvalConfig)
    for f in dataclasses.fields(EvalConfig):
        action = by_dest[f.name]
        assert f"--{f.name.replace('_', '-')}" in action.option_strings
        assert action.help.startswith(docs[f.name].replace("%", "%%"))
    assert "-o" in by_dest["task_options"].option_strings


def test_renamed_sampling_fields_still_work_for_one_release(tmp_path):
    """EvalConfig's old `backend` / `batch_size` (YAML and flags) map to the names TrainConfig uses."""
    import argparse

    from selfcorrect.config import add_arguments, build_config
    from selfcorrect.evaluation import EvalConfig
    from selfcorrect.trainer import TrainConfig

    path = tmp_path / "eval.yaml"
    path.write_text("backend: transformers\nbatch_size: 8\n")
    with pytest.warns(FutureWarning, match="'batch_size' is now called 'generation_batch_size'"):
        config = build_config(EvalConfig, None, path)
    assert (config.rollout_backend, config.generation_batch_size) == ("transformers", 8)
    parser = argparse.ArgumentParser()
    add_arguments(parser, EvalConfig)
    assert "--batch-size" not in parser.format_help()                 # hidden from --help
    with pytest.warns(FutureWarning, match="'backend' is now called 'rollout_backend'"):
        config = build_config(EvalConfig, parser.parse_args(["--backend", "transformers", "--batch-size", "3"]))
    assert config.generation_batch_size == 3
    # One set of names, declared once, for both configs.
    shared = ("temperature", "top_p", "top_k", "max_new_tokens", "generation_batch_size", "rollout_backend",
              "vllm_gpu_memory_utilization", "vllm_max_model_len")
    assert all(hasattr(TrainConfig(), n) and hasattr(EvalConfig(), n) for n in shared)
    assert (EvalConfig().temperature, TrainConfig().temperature) == (0.0, 1.0)    # only the defaults differ


def test_one_default_token_limit_for_training_its_evaluations_and_eval():
    """A run's own test numbers and a later `selfcorrect eval` of its checkpoint truncate alike unless told
    otherwise (they once defaulted to 64 and 256 tokens), and the greedy evaluations are greedy."""
    from selfcorrect.evaluation import EvalConfig
    from selfcorrect.rollout import SamplingParams
    from selfcorrect.trainer import TrainConfig

    limits = {TrainConfig().max_new_tokens, TrainConfig().eval_max_new_tokens, EvalConfig().max_new_tokens,
              SamplingParams().max_new_tokens}
    assert limits == {256}
    assert EvalConfig().temperature == SamplingParams().temperature == 0.0
