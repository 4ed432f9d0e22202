"""Runs that survive preemption, crashes and mistakes (tiny model).

Faults injected at exact points inside steps (``SELFCORRECT_FAULT``, see selfcorrect/faults.py) --
SIGKILL, SIGTERM, SIGINT during generation, scoring, backward, the optimizer step and checkpoint
writing -- then ``--resume``: the final weights, Adam state and ``metrics.jsonl`` equal an
uninterrupted run's.  Plus the run-directory lock, ``--overwrite``, damaged checkpoints, changed
settings on resume and in ``compare``, and output paths that cannot be used.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from selfcorrect.errors import ConfigError
from selfcorrect.trainer import TrainConfig, Trainer

TIMING = ("tokens_per_s",)
"""Wall-clock keys of a metrics row (with every ``time_*``): they differ between runs by nature."""


def _args(model_dir, task, out) -> list[str]:
    return ["train", "--model", str(model_dir), "--task", task, "--iterations", "1", "--stage1-steps", "2",
            "--stage2-steps", "2", "--problems-per-step", "2", "--samples", "2", "--micro-batch-problems", "1",
            "--max-new-tokens", "4", "--eval-limit", "2", "--eval-max-new-tokens", "2", "--report-to", "none",
            "--autocast", "none", "--lr", "1e-3", "--temperature", "1.0", "--save-every", "1", "--keep-last", "2",
            "--out", str(out)]


def _cli(args, fault: str | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("SELFCORRECT_FAULT", None)
    if fault:
        env["SELFCORRECT_FAULT"] = fault
    return subprocess.run([sys.executable, "-m", "selfcorrect.cli", *args], capture_output=True, text=True, env=env,
                          timeout=timeout)


def _final(run: Path) -> tuple[dict, dict, list[dict]]:
    weights = load_file(str(run / "checkpoint-4" / "model.safetensors"))
    optimizer = torch.load(run / "checkpoint-4" / "trainer_state.pt", weights_only=False)["optimizer"]
    rows = [{k: v for k, v in json.loads(line).items() if k not in TIMING and not k.startswith("time_")}
            for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return weights, optimizer, rows


def _same_optimizer(a: dict, b: dict) -> bool:
    if a["param_groups"] != b["param_groups"] or a["state"].keys() != b["state"].keys():
        return False
    return all(torch.equal(a["state"][k][name], b["state"][k][name]) for k in a["state"] for name in a["state"][k])


@pytest.fixture(scope="module")
def straight_run(tiny_model_dir, tmp_path_factory):
    from conftest import PARITY_TASK

    root = tmp_path_factory.mktemp("runs")
    (root / "task.py").write_text(PARITY_TASK)
    task = f"{root / 'task.py'}:make_task"
    done = _cli(_args(tiny_model_dir, task, root / "straight"))
    assert done.returncode == 0, done.stderr[-3000:]
    return task, _final(root / "straight")


FAULTS = [("rollout", 2, "KILL"), ("score", 3, "KILL"), ("backward", 5, "KILL"), ("optimizer", 2, "KILL"),
          ("save", 2, "KILL"), ("rollout", 3, "TERM"), ("backward", 2, "TERM"), ("optimizer", 3, "TERM"),
          ("save", 1, "TERM"), ("score", 2, "INT"), ("rollout", 1, "INT"), ("backward", 6, "INT")]


@pytest.mark.parametrize("point, count, signame", FAULTS)
@pytest.mark.long
def test_a_run_interrupted_inside_a_step_resumes_to_the_same_result(point, count, signame, straight_run,
                                                                    tiny_model_dir, tmp_path):
    task, (weights, optimizer, rows) = straight_run
    run = tmp_path / "run"
    hit = _cli(_args(tiny_model_dir, task, run), fault=f"{point}:{count}:{signame}")
    expected = {"KILL": -signal.SIGKILL, "TERM": 128 + signal.SIGTERM, "INT": 128 + signal.SIGINT}[signame]
    assert hit.returncode == expected, hit.stderr[-3000:]
    if signame != "KILL":          # a graceful stop: the step finished and was checkpointed, and it says where
        assert "continue with: selfcorrect train --resume" in hit.stderr and "Traceback" not in hit.stderr
    resumed = _cli(["train", "--resume", str(run)])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    got_weights, got_optimizer, got_rows = _final(run)
    assert got_weights.keys() == weights.keys() and all(torch.equal(got_weights[k], weights[k]) for k in weights)
    assert _same_optimizer(got_optimizer, optimizer)
    assert got_rows == rows


# --------------------------------------------------------------------------- the run directory's lock
def _config(model_dir, out, task, **overrides) -> TrainConfig:
    base = dict(model=str(model_dir), task=task, out=str(out), iterations=1, stage1_steps=1, stage2_steps=1,
                problems_per_step=2, samples=2, max_new_tokens=3, eval_limit=1, eval_max_new_tokens=2,
                micro_batch_problems=1, autocast="none", report_to=["none"], log_samples_every=0, lr=1e-3,
                save_every=1)
    base.update(overrides)
    return TrainConfig(**base)


@pytest.mark.long
def test_one_writer_per_run_directory(tiny_model_dir, tmp_path, parity_task):
    run = tmp_path / "run"
    first = Trainer.create(_config(tiny_model_dir, run, parity_task))
    with pytest.raises(ConfigError, match=rf"run directory {run} is in use by PID {os.getpid()} on "):
        Trainer.create(_config(tiny_model_dir, run, parity_task, overwrite=True))
    first.train()                                             # the lock goes with the run
    resumed = Trainer.resume(run)
    with pytest.raises(ConfigError, match="is in use by PID"):
        Trainer.resume(run)                                   # two resumes of one run
    resumed.train()
    # A stale lock (its process died: the kernel dropped the flock) is taken over.
    (run / ".lock").write_text("999999 a-dead-host\n")
    Trainer.resume(run).train()
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]                # no row of a second writer


def test_another_process_holding_the_lock_is_named(tiny_model_dir, tmp_path, parity_task):
    run = tmp_path / "run"
    run.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom selfcorrect.run_dir import RunLock\n"
                               f"lock = RunLock({str(run)!r}).acquire(); print('held', flush=True); time.sleep(60)"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(ConfigError, match=rf"in use by PID {holder.pid} on "):
            Trainer.create(_config(tiny_model_dir, run, parity_task, overwrite=True))
    finally:
        holder.kill()
        holder.wait()
    Trainer.create(_config(tiny_model_dir, run, parity_task, overwrite=True))   # its process is gone


@pytest.mark.long
def test_overwrite_is_a_fresh_run(tiny_model_dir, tmp_path, parity_task):
    run = tmp_path / "run"
    Trainer.create(_config(tiny_model_dir, run, parity_task, stage1_steps=2, eval_every=1)).train()
    assert (run / "checkpoint-3").is_dir() and (run / "best.json").is_file()
    fresh = Trainer.create(_config(tiny_model_dir, run, parity_task, seed=5, overwrite=True))
    assert sorted(p.name for p in run.iterdir()) == [".lock", "config.yaml"]   # nothing of the old run
    fresh.train()
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    assert not (run / "checkpoint-3").exists()
    assert not (run / "best.json").exists()       # the old run's best is gone; the new one validates nothing
    Trainer.resume(run).train()                               # and it resumes like any run


# --------------------------------------------------------------------------- damaged checkpoints and logs
@pytest.mark.long
def test_resume_falls_back_to_the_newest_intact_checkpoint(tiny_model_dir, tmp_path, parity_task, capsys):
    run = tmp_path / "run"
    Trainer.create(_config(tiny_model_dir, run, parity_task, stage2_steps=2, keep_last=3)).train()
    newest = run / "checkpoint-3" / "model.safetensors"
    newest.write_bytes(newest.read_bytes()[:-100])            # truncated
    with open(run / "metrics.jsonl", "a") as fh:
        fh.write('{"step": 4, "lo')                           # torn last line
    trainer = Trainer.resume(run)
    err = capsys.readouterr().err
    assert trainer.step == 2
    assert "checkpoint-3 is damaged (model.safetensors is" in err and "resuming from checkpoint-2" in err
    assert "dropped a torn last line" in err
    assert [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2]
    trainer.train()
    for name in ("checkpoint-1", "checkpoint-2", "checkpoint-3"):
        state = run / name / "trainer_state.pt"
        state.write_bytes(b"garbage")
    with pytest.raises(ConfigError, match="no intact checkpoint .*trainer_state.pt"):
        Trainer.resume(run)


# --------------------------------------------------------------------------- changed settings
@pytest.mark.long
def test_resume_refuses_changed_settings_except_the_documented_ones(tiny_model_dir, tmp_path, parity_task):
    run = tmp_path / "run"
    Trainer.create(_config(tiny_model_dir, run, parity_task)).train()
    with pytest.raises(ConfigError, match=r"cannot change on resume: stage2_steps: 1 → 3; lr: 0\.001 → 0\.5"):
        Trainer.resume(run, overrides={"lr": "0.5", "stage2_steps": "3"})
    more = Trainer.resume(run, overrides={"iterations": "2", "save_every": "2"})  # more of the same schedule
    assert more.config.total_steps == 4 and "iterations: 2" in (run / "config.yaml").read_text()
    more.train()
    star = tmp_path / "star"
    Trainer.create(_config(tiny_model_dir, star, parity_task, method="star", star_rounds=2, sft_steps=1)).train()
    with pytest.raises(ConfigError, match="would change the schedule"):    # STaR's rounds are a share of the budget
        Trainer.resume(star, overrides={"iterations": "2"})


@pytest.mark.long
def test_cli_resume_with_a_changed_flag_is_one_line(tiny_model_dir, tmp_path, parity_task):
    run = tmp_path / "run"
    Trainer.create(_config(tiny_model_dir, run, parity_task)).train()
    done = _cli(["train", "--resume", str(run), "--lr", "0.5"])
    assert done.returncode == 2 and "lr: 0.001 → 0.5" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.long
def test_compare_never_reuses_runs_made_with_other_settings(tiny_model_dir, tmp_path, parity_task):
    from selfcorrect.compare import run_compare

    out = tmp_path / "cmp"
    run_compare(_config(tiny_model_dir, tmp_path / "x", parity_task), ["score"], [0], out)
    with pytest.raises(ConfigError, match=r"holds a run made with other settings \(lr: 0\.001 → 0\.002\)"):
        run_compare(_config(tiny_model_dir, tmp_path / "x", parity_task, lr=2e-3), ["score"], [0], out)
    run_compare(_config(tiny_model_dir, tmp_path / "x", parity_task, save_every=0), ["score"], [0], out)  # same run


# --------------------------------------------------------------------------- output paths
@pytest.mark.parametrize("command", ["train", "eval", "demo", "compare"])
@pytest.mark.long
def test_unusable_output_paths_are_one_line_before_any_work(command, tiny_model_dir, tmp_path):
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    cases = [(a_file, "exists and is not a directory"), (a_file / "sub", "is not a directory"),
             ("", "is empty")]                                     # an unset shell variable
    if command != "demo" and os.path.isdir("/proc"):
        cases.append(("/proc/selfcorrect-x", "cannot write in /proc"))   # access() says yes to root there
    for out, message in cases:
        args = {"train": ["train", "--model", str(tiny_model_dir), "--out", str(out)],
                "eval": ["eval", "--model", str(tiny_model_dir), "--out", str(out)],
                "demo": ["demo", "--out", str(out)],
                "compare": ["compare", "--model", str(tiny_model_dir), "--methods", "score", "--out", str(out)]}
        done = _cli(args[command], timeout=120)
        assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr, done.stderr
        assert "Loading weights" not in done.stderr               # refused before the model loaded


def test_a_start_that_failed_after_writing_its_config_can_be_started_again(tiny_model_dir, tmp_path, parity_task):
    """What a start that died before its first step leaves (config.yaml and the lock) is not a run to
    protect: the same command starts it again, no --overwrite needed; a real run's files still refuse."""
    from selfcorrect.errors import ConfigError
    from selfcorrect.run_dir import LOCK_FILE
    from selfcorrect.trainer import Trainer

    out = tmp_path / "run"
    out.mkdir()
    (out / "config.yaml").write_text("model: default\n")
    (out / LOCK_FILE).write_text("")
    trainer = Trainer.create(_config(tiny_model_dir, out, parity_task))
    assert (out / "config.yaml").read_text() != "model: default\n"     # the new run's settings
    trainer.lock.release()
    (out / "metrics.jsonl").write_text("{}\n")
    with pytest.raises(ConfigError, match="not empty"):
        Trainer.create(_config(tiny_model_dir, out, parity_task))


@pytest.mark.long
def test_wandb_without_wandb_is_refused_before_anything(tmp_path):
    import importlib.util

    if importlib.util.find_spec("wandb") is not None:
        pytest.skip("wandb is installed here")
    out = tmp_path / "run"
    done = _cli(["train", "--report-to", "wandb", "--out", str(out)], timeout=120)
    assert done.returncode == 2 and "wandb is not installed" in done.stderr and "Traceback" not in done.stderr
    assert not out.exists()


@pytest.mark.long
def test_a_failed_start_leaves_nothing(tmp_path):
    out = tmp_path / "new-run"
    done = _cli(["train", "--model", str(tmp_path / "no-such-model"), "--out", str(out)], timeout=120)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert not out.exists()
