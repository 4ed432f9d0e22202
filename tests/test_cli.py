"""The ``selfcorrect`` command: eval outputs, sampling, scaling, configs, and one-line user errors.

Every run uses the tiny random model from ``conftest.py`` (its answers are
junk, which is fine: these tests check the files and the plumbing, not the
accuracy).  Runs are in-process through :func:`selfcorrect.cli.main`, except
one subprocess test that proves a user error reaches the terminal as one line
without a traceback.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from selfcorrect.cli import main
from selfcorrect.evaluation import EvalConfig
from selfcorrect.tasks import load_task

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
FAST = ["--max-new-tokens", "4", "--generation-batch-size", "8"]


@pytest.fixture(autouse=True)
def _no_debug(monkeypatch):
    """SELFCORRECT_DEBUG would turn user errors into tracebacks."""
    monkeypatch.delenv("SELFCORRECT_DEBUG", raising=False)


def _eval(model_dir: Path, out: Path, *flags: str) -> int:
    return main(["eval", "--model", str(model_dir), "--out", str(out), *FAST, *flags])


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _is_png(path: Path) -> bool:
    return path.is_file() and path.read_bytes()[:8] == PNG_MAGIC


def _is_pair(value) -> bool:
    return (isinstance(value, list) and len(value) == 2 and all(isinstance(v, (int, float)) for v in value)
            and 0.0 - 1e-9 <= value[0] <= value[1] + 1e-12)


# ---------------------------------------------------------------- a K = 2 run and its files


@pytest.fixture(scope="module")
def k2_run(tiny_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval-k2")
    code = main(["eval", "--model", str(tiny_model_dir), "--task", "arithmetic", "--limit", "6",
                 "--attempts", "2", "--max-new-tokens", "6", "--batch-size", "4", "--out", str(out)])
    return code, out


@pytest.mark.long
def test_eval_exits_zero_and_writes_every_file(k2_run):
    code, out = k2_run
    assert code == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "accuracy.png", "edit_ratio.png", "metrics.json", "report.html", "report.md", "samples.jsonl"]


def test_eval_metrics_json(k2_run):
    _, out = k2_run
    m = json.loads((out / "metrics.json").read_text())
    for key in ("n", "attempts", "accuracy", "delta", "delta_i2c", "delta_c2i", "edit_distance_ratio",
                "copy_rate", "ci95"):
        assert key in m, key
    assert m["n"] == 6 and m["attempts"] == 2 and m["n_groups"] == 6
    assert len(m["accuracy"]) == 2 and all(0.0 <= a <= 1.0 for a in m["accuracy"])
    assert m["delta"] == m["delta_i2c"] - m["delta_c2i"]
    assert 0.0 <= m["edit_distance_ratio"] <= 1.0 and 0.0 <= m["copy_rate"] <= 1.0
    ci = m["ci95"]
    assert len(ci["accuracy"]) == 2 and all(_is_pair(p) for p in ci["accuracy"])
    for key in ("delta_i2c", "delta_c2i", "edit_distance_ratio", "copy_rate"):
        assert _is_pair(ci[key]), key
    assert len(ci["delta"]) == 2 and ci["delta"][0] <= m["delta"] <= ci["delta"][1]
    assert m["task"] == "arithmetic"
    assert m["config"]["attempts"] == 2 and m["config"]["limit"] == 6 and m["config"]["max_new_tokens"] == 6


def test_eval_samples_jsonl(k2_run):
    _, out = k2_run
    rows = _read_jsonl(out / "samples.jsonl")
    expected_ids = [p.id for p in load_task("arithmetic", split="test").problems[:6]]
    assert [r["id"] for r in rows] == expected_ids
    m = json.loads((out / "metrics.json").read_text())
    for row in rows:
        assert row["sample"] == 0
        assert len(row["attempts"]) == 2
        for a in row["attempts"]:
            assert isinstance(a["text"], str)
            assert a["answer"] is None or isinstance(a["answer"], str)
            assert a["reward"] in (0.0, 1.0)
            assert 1 <= a["tokens"] <= 6
            if a["tokens"] < 6:  # stopped early: it emitted an end-of-turn token
                assert a["truncated"] is False
    # the metrics are those of the samples
    for t in range(2):
        assert m["accuracy"][t] == sum(r["attempts"][t]["reward"] for r in rows) / 6


def test_eval_report_and_plots(k2_run):
    _, out = k2_run
    report = (out / "report.md").read_text()
    lines = report.splitlines()
    assert lines[0].startswith("# ") and "arithmetic" in lines[0]
    header = next(i for i, line in enumerate(lines) if line.startswith("| Acc@t1"))
    assert set(lines[header + 1].replace("|", "").replace(":", "")) == {"-"}
    assert lines[header + 2].startswith("| ") and lines[header + 2].count("|") == lines[header].count("|")
    assert _is_png(out / "accuracy.png")
    assert _is_png(out / "edit_ratio.png")


def test_eval_console_summary(tiny_model_dir, tmp_path, capsys):
    assert _eval(tiny_model_dir, tmp_path / "o", "--limit", "2") == 0
    err = capsys.readouterr().err
    assert "Acc@t1" in err and f"wrote {(tmp_path / 'o').resolve()}" in err


# ---------------------------------------------------------------- K = 3 and K = 1


def test_eval_three_attempts(tiny_model_dir, tmp_path):
    out = tmp_path / "k3"
    assert _eval(tiny_model_dir, out, "--limit", "3", "--attempts", "3") == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["attempts"] == 3 and len(m["accuracy"]) == 3 and len(m["ci95"]["accuracy"]) == 3
    assert [(p["from"], p["to"]) for p in m["pairs"]] == [(1, 2), (2, 3), (1, 3)]
    assert m["delta"] == m["delta_i2c"] - m["delta_c2i"]
    rows = _read_jsonl(out / "samples.jsonl")
    assert len(rows) == 3 and all(len(r["attempts"]) == 3 for r in rows)
    assert _is_png(out / "edit_ratio.png")


def test_eval_one_attempt(tiny_model_dir, tmp_path):
    out = tmp_path / "k1"
    assert _eval(tiny_model_dir, out, "--limit", "3", "--attempts", "1") == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["attempts"] == 1 and len(m["accuracy"]) == 1
    assert m["delta"] is None and m["delta_i2c"] is None and m["delta_c2i"] is None
    assert m["edit_distance_ratio"] is None and m["copy_rate"] is None and m["pairs"] == []
    assert all(len(r["attempts"]) == 1 for r in _read_jsonl(out / "samples.jsonl"))
    assert _is_png(out / "accuracy.png")
    assert not (out / "edit_ratio.png").exists()


# ---------------------------------------------------------------- sampling


@pytest.mark.long
def test_eval_samples_with_temperature_are_reproducible(tiny_model_dir, tmp_path):
    flags = ["--limit", "6", "--samples", "2", "--temperature", "1.0", "--seed", "1"]
    assert _eval(tiny_model_dir, tmp_path / "a", *flags) == 0
    assert _eval(tiny_model_dir, tmp_path / "b", *flags) == 0
    rows = _read_jsonl(tmp_path / "a" / "samples.jsonl")
    assert len(rows) == 12
    ids = [p.id for p in load_task("arithmetic", split="test").problems[:6]]
    assert sorted((r["id"], r["sample"]) for r in rows) == sorted((i, s) for i in ids for s in (0, 1))
    m = json.loads((tmp_path / "a" / "metrics.json").read_text())
    assert m["n"] == 12 and m["n_groups"] == 6
    assert (tmp_path / "a" / "samples.jsonl").read_bytes() == (tmp_path / "b" / "samples.jsonl").read_bytes()
    # sampling does sample: the two samples of a problem are not all identical copies
    texts = {(r["id"], r["sample"]): [a["text"] for a in r["attempts"]] for r in rows}
    assert any(texts[(i, 0)] != texts[(i, 1)] for i in ids)


def test_eval_several_greedy_samples_is_an_error(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "o"
    assert _eval(tiny_model_dir, out, "--limit", "2", "--samples", "2") == 2
    err = capsys.readouterr().err
    assert err.splitlines() == [err.strip()] and err.startswith("selfcorrect: error: ")
    assert "samples > 1 with greedy decoding" in err
    assert not out.exists()


# ---------------------------------------------------------------- scaling


@pytest.mark.long
def test_eval_scaling(tiny_model_dir, tmp_path):
    out = tmp_path / "scaling"
    assert _eval(tiny_model_dir, out, "--scaling", "--budgets", "4,2", "--limit", "3", "--temperature", "0") == 0
    rows = json.loads((out / "scaling.json").read_text())
    assert [r["budget"] for r in rows] == [2, 4]
    for r in rows:
        assert r["problems"] == 3
        for key in ("parallel", "sequential"):
            assert r[key] in (0.0, 1 / 3, 2 / 3, 1.0)
            assert _is_pair(r[f"{key}_ci"]) and r[f"{key}_ci"][0] <= r[key] <= r[f"{key}_ci"][1]
    m = json.loads((out / "metrics.json").read_text())
    assert m["scaling"] == rows and m["n"] == 3  # the main (greedy) run is still 3 episodes
    md = (out / "scaling.md").read_text()
    assert "| budget |" in md and "\n| 2 |" in md and "\n| 4 |" in md
    assert _is_png(out / "scaling.png")


# ---------------------------------------------------------------- --config


def test_eval_config_file_with_flag_override(tiny_model_dir, tmp_path):
    out = tmp_path / "cfg-out"
    cfg = tmp_path / "run.yaml"
    cfg.write_text(
        f"model: {tiny_model_dir}\n"
        "task: arithmetic\n"
        "task_options:\n  digits: 1\n"
        "limit: 4\n"
        "attempts: 3\n"
        "max_new_tokens: 4\n"
        "batch_size: 8\n"
        f"out: {out}\n"
    )
    assert main(["eval", "--config", str(cfg), "--attempts", "2"]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["attempts"] == 2  # the flag wins
    assert m["n"] == 4  # the file's limit
    assert m["config"]["task_options"] == {"digits": 1} and m["config"]["max_new_tokens"] == 4
    rows = _read_jsonl(out / "samples.jsonl")
    expected = [p.id for p in load_task("arithmetic", split="test", digits=1).problems[:4]]
    assert [r["id"] for r in rows] == expected
    assert all(len(r["attempts"]) == 2 for r in rows)


# ---------------------------------------------------------------- user errors


def _jsonl_with_bad_line(tmp: Path) -> tuple[list[str], str]:
    path = tmp / "bad.jsonl"
    path.write_text('{"problem": "1+1", "answer": "2"}\n{"problem": "2+2", "answer": \n')
    return ["--task", "math", "-o", f"path={path}"], f"{path}:2: invalid JSON"


def _empty_jsonl(tmp: Path) -> tuple[list[str], str]:
    path = tmp / "empty.jsonl"
    path.write_text("")
    return ["--task", "math", "-o", f"path={path}"], f"{path}: file is empty"


def _yaml(name: str, text: str, message: str):
    def make(tmp: Path) -> tuple[list[str], str]:
        path = tmp / name
        path.write_text(text)
        return ["--config", str(path)], message.format(path=path)
    return make


def _yaml_task_options_list_plus_flag(tmp: Path) -> tuple[list[str], str]:
    flags, message = _yaml("to.yaml", "task_options: [digits]\n", "{path}: field 'task_options' must be a mapping")(tmp)
    return [*flags, "-o", "digits=1"], message


def _model_dir_without_config(tmp: Path) -> tuple[list[str], str]:
    path = tmp / "not-a-model"
    path.mkdir()
    (path / "weights.bin").write_bytes(b"\0")
    return ["--model", str(path)], f"model directory {path} has no config.json"


BAD_INPUTS = {
    "unknown-task": (["--task", "nope"], "unknown task 'nope'; choose one of: arithmetic, gsm8k, humaneval, math, mbpp"),
    "unknown-task-option": (["-o", "nope=1"], "task 'arithmetic' has no option 'nope'; valid options: split, n, digits"),
    "bad-task-option-value": (["-o", "digits=abc"], "task 'arithmetic' option 'digits': expected int, got 'abc'"),
    "task-option-without-value": (["-o", "digits"], "expected KEY=VALUE, got 'digits'"),
    "zero-attempts": (["--attempts", "0"], "attempts must be an integer >= 1, got 0"),
    "negative-temperature": (["--temperature", "-1"], "temperature must be a number in [0, 100]"),
    "text-temperature": (["--temperature", "abc"], "field 'temperature' (float): expected a number, got 'abc'"),
    "zero-top-p": (["--top-p", "0"], "top_p must be in (0, 1], got 0.0"),
    "missing-model": (["--model", "./does-not-exist"], "model path not found: ./does-not-exist"),
    "model-dir-without-config": (_model_dir_without_config, None),
    "missing-config": (["--config", "missing.yaml"], "config file not found: missing.yaml"),
    "invalid-yaml": (_yaml("inv.yaml", "limit: 2\nbudgets: [2, 4\n", "{path}:3: invalid YAML"), None),
    "unknown-yaml-field": (_yaml("unk.yaml", "atempts: 2\n", "{path}: unknown field 'atempts'; valid fields: model"),
                           None),
    "yaml-null-string-field": (_yaml("null.yaml", "dtype: null\n",
                                     "{path}: field 'dtype' (str): expected a string, got None"), None),
    "yaml-task-options-not-a-mapping": (_yaml_task_options_list_plus_flag, None),
    "malformed-jsonl-line": (_jsonl_with_bad_line, None),
    "empty-jsonl": (_empty_jsonl, None),
    "cuda-unavailable": (["--device", "cuda"], "device 'cuda' requested but CUDA is not available"),
    "unknown-backend": (["--rollout-backend", "sglang"], "rollout_backend must be one of transformers, vllm, got 'sglang'"),
    "vllm-not-installed": (["--rollout-backend", "vllm"], "the vllm rollout backend needs vLLM: pip install 'selfcorrect[vllm]'"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_eval_user_error_is_one_line_and_writes_nothing(case, tiny_model_dir, tmp_path, monkeypatch, capsys):
    flags, message = BAD_INPUTS[case]
    if case == "cuda-unavailable":
        import torch

        if torch.cuda.is_available():
            pytest.skip("CUDA is available here")
    if case == "vllm-not-installed" and importlib.util.find_spec("vllm") is not None:
        pytest.skip("vLLM is installed here")
    monkeypatch.chdir(tmp_path)
    if callable(flags):
        flags, message = flags(tmp_path)
    if "--model" not in flags:
        flags = ["--model", str(tiny_model_dir), *flags]
    out = tmp_path / "out"
    code = main(["eval", "--limit", "2", *FAST, "--out", str(out), *flags])
    captured = capsys.readouterr()
    assert code == 2
    lines = captured.err.splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("selfcorrect: error: ")
    assert message in lines[0]
    assert "Traceback" not in captured.err + captured.out
    assert not (out / "metrics.json").exists()
    assert not out.exists() or not any(out.iterdir())


@pytest.mark.long
def test_user_error_in_a_subprocess_has_no_traceback(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "SELFCORRECT_DEBUG"}
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"problem": "1+1", "answer": "2"}\nnot json\n')
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "selfcorrect.cli", "eval", "--task", "math", "-o", f"path={bad}",
         "--model", "./does-not-exist", "--out", str(out)],
        capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr + proc.stdout
    assert proc.stderr.splitlines() == [f"selfcorrect: error: {bad}:2: invalid JSON (Expecting value at column 1)"]
    assert not out.exists()


def test_debug_env_reraises(tmp_path, monkeypatch):
    from selfcorrect.errors import ConfigError

    monkeypatch.setenv("SELFCORRECT_DEBUG", "1")
    with pytest.raises(ConfigError, match="unknown task"):
        main(["eval", "--task", "nope", "--out", str(tmp_path / "o")])


# ---------------------------------------------------------------- tasks and --help


def test_tasks_lists_builtin_tasks(capsys):
    assert main(["tasks"]) == 0
    out = capsys.readouterr().out
    names = [line.split()[0] for line in out.splitlines() if line and not line[0].isspace()]
    assert names == ["arithmetic", "strings", "math", "gsm8k", "humaneval", "mbpp"]
    assert "options: split, n, digits" in out  # arithmetic's options
    assert "options: path, dataset" in out  # math's options
    assert "options: split, n, operation, length" in out  # the string tasks' options


def test_eval_help_mentions_every_field(capsys):
    with pytest.raises(SystemExit) as info:
        main(["eval", "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for f in dataclasses.fields(EvalConfig):
        assert f"--{f.name.replace('_', '-')}" in out, f.name
    assert "--config" in out and "-o KEY=VALUE" in out
    assert "Attempts per episode" in " ".join(out.split())


# --------------------------------------------------------------------------- configs and examples from anywhere
def test_shipped_configs_and_the_example_task_are_found_from_any_directory(tmp_path, monkeypatch):
    """`--config demo`, `--config selfcorrect/configs/math.yaml` and `--task examples/custom_task.py:...`
    work outside the repository (the README's commands); a missing one names the shipped configs."""
    from selfcorrect.config import SHIPPED_CONFIGS, build_config, find_config
    from selfcorrect.errors import ConfigError
    from selfcorrect.tasks import load_task
    from selfcorrect.trainer import TrainConfig

    monkeypatch.chdir(tmp_path)
    assert find_config("demo") == SHIPPED_CONFIGS / "demo.yaml"
    assert find_config("arithmetic") == SHIPPED_CONFIGS / "arithmetic.yaml"
    assert find_config("math.yaml") == SHIPPED_CONFIGS / "math.yaml"
    assert find_config("selfcorrect/configs/mbpp.yaml") == SHIPPED_CONFIGS / "mbpp.yaml"
    (tmp_path / "demo.yaml").write_text("stage1_steps: 3\n")     # a local file wins over a shipped one
    assert find_config("demo.yaml").resolve() == (tmp_path / "demo.yaml").resolve()
    with pytest.raises(ConfigError, match=r"config file not found: nope \(shipped configs, by name: .*demo"):
        find_config("nope")
    assert build_config(TrainConfig, {}, "demo").stage1_steps == build_config(
        TrainConfig, {}, SHIPPED_CONFIGS / "demo.yaml").stage1_steps
    assert load_task("examples/custom_task.py:make_task", n=5).name == "unit-conversion"


def test_train_without_config_uses_the_defaults_that_help_shows(capsys):
    """No hidden demo config: `selfcorrect train` with no --config means TrainConfig's defaults."""
    from selfcorrect.cli import build_parser
    from selfcorrect.config import build_config
    from selfcorrect.trainer import TrainConfig

    parser = build_parser()
    args = parser.parse_args(["train"])
    assert args.config is None
    config = build_config(TrainConfig, args, args.config)
    assert config == TrainConfig()
    with pytest.raises(SystemExit):
        parser.parse_args(["train", "--help"])
    shown = capsys.readouterr().out
    assert f"default: {TrainConfig().out}" in shown or str(TrainConfig().out) in shown
    assert "demo config" not in shown


def test_step_line_for_rl_and_sft_rows():
    """The plain (off-terminal) step line: an RL row shows rewards, Δ, format and KL per attempt; an SFT row
    (STaR / Pair-SFT log no KL, no Δ) must still print, and a NaN KL (no episodes of that attempt) is left out."""
    from selfcorrect.cli import step_line

    rl = {"iteration": 1, "phase": "stage2", "loss": -1.5, "reward_t1": 0.25, "reward_t2": 0.5, "delta": 0.25,
          "copy_rate": 0.5, "format_t1": 1.0, "format_t2": 0.75, "kl_t1": 0.01, "kl_t2": float("nan"),
          "logp_gap_mean_t1": 2e-6}
    line = step_line(rl, 3, 10, 2.0, warn_gap=1e-2)
    assert line == ("step 3/10  it1 stage2  r1=0.25 r2=0.50  Δ=+0.25 copy=0.50  fmt=1.00/0.75  kl1=0.010  "
                    "gap=2.0e-06  loss=-1.500  2.0 s/step, ETA 0:00:14")
    sft = {"iteration": 1, "phase": "pair", "loss": 0.914, "reward_t1": 0.04375, "sft_dataset": 30}
    assert step_line(sft, 1, 5, 1.0, warn_gap=1e-2) == "step 1/5  it1 pair  r1=0.04  loss=0.914  1.0 s/step, ETA 0:00:04"
